"""``capsgen eval`` follows a run's image size, and every check that can fail runs before any
evaluator network is trained (training one takes minutes the first time)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from capsgen.cli import main
from tests.test_reliability_runs import one_line_error
from capsgen.eval import attribute_evaluator, evaluator

SIZE = 16   # shapes-attributes' own size is 64
VCAPS_SHAPES = ["train", "vcaps", "--data", "shapes-attributes", "--seed", "0", "--batch-size", "16", "--steps", "3",
                "--no-progress", "--set", "threads=1", "--set", f"train.image_size={SIZE}", "--set", "caps_dim=4",
                "--set", "eval_n=32", "--set", "n_fixed=8", "--set", "enc_channels=8,8,8", "--set", "dec_hidden=32"]


@pytest.fixture
def quick_evaluators(monkeypatch, tmp_path):
    """Evaluators of a few steps in a private cache: what is tested is which images they see."""
    monkeypatch.setenv("CAPSGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(evaluator.RECIPES, "shapes-attributes", evaluator.Recipe(epochs=None, steps=3, batch_size=32))
    monkeypatch.setitem(attribute_evaluator.RECIPES, "shapes-attributes",
                        attribute_evaluator.AttributeRecipe(steps=3, batch_size=16, limit=64, test_limit=64))


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an evaluator was asked for before the input was checked")

    monkeypatch.setattr(evaluator, "get_evaluator", refuse)
    monkeypatch.setattr(attribute_evaluator, "get_attribute_evaluator", refuse)



def test_eval_of_a_resized_run_uses_evaluators_of_its_size(tmp_path, capsys, quick_evaluators):
    run = tmp_path / "run"
    assert main([*VCAPS_SHAPES, "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--n", "20"]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[0])
    assert res["generate"]["counts"]["samples"] == 20
    ev_path = Path(res["generate"]["evaluator"]["path"])
    assert json.loads((ev_path / "config.json").read_text())["train"]["image_size"] == SIZE
    if "attribute-conditional" in res["capabilities"]:
        aev = next((tmp_path / "cache" / "evaluators").glob("attributes-shapes-attributes-*/evaluator.json"))
        assert json.loads(aev.read_text())["shape"] == [3, SIZE, SIZE]


def test_eval_of_a_run_checks_the_sample_count_before_any_evaluator(tmp_path, capsys, no_training):
    run = tmp_path / "run"
    assert main([*VCAPS_SHAPES, "--out", str(run)]) == 0
    capsys.readouterr()
    assert "--n must be at least" in one_line_error(capsys, ["eval", str(run), "--n", "5"])


@pytest.mark.parametrize("images, extra, expected", [
    (np.zeros((20, 28, 28, 1), np.float32), [], "must be uint8"),
    (np.zeros((20, 28, 28), np.uint8), [], "must be 4-D"),
    (np.zeros((20, 32, 32, 1), np.uint8), [], "images are [N, 28, 28, 1]"),
    (np.zeros((5, 28, 28, 1), np.uint8), [], "too few"),
    (np.zeros((20, 28, 28, 1), np.uint8), ["--n", "5"], "--n must be at least"),
])
def test_eval_of_a_sample_file_checks_it_before_any_evaluator(tmp_path, capsys, no_training, images, extra,
                                                              expected):
    path = tmp_path / "samples.npz"
    np.savez(path, images=images)
    assert expected in one_line_error(capsys, ["eval", str(path), "--data", "mnist-5k", *extra])


def test_eval_of_a_sample_file_of_a_resized_run_takes_its_size(tmp_path, capsys, quick_evaluators):
    path = tmp_path / "samples.npz"
    np.savez(path, images=np.random.default_rng(0).integers(0, 256, (20, SIZE, SIZE, 3), dtype=np.uint8))
    err = one_line_error(capsys, ["eval", str(path), "--data", "shapes-attributes"])
    assert f"add --image-size {SIZE}" in err
    assert main(["eval", str(path), "--data", "shapes-attributes", "--image-size", str(SIZE)]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[0])
    assert res["counts"]["samples"] == 20
