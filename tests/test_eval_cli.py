"""``capsgen eval FILE.npz|RUN_DIR --data NAME``: JSON + table with the real-vs-real floor; one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from capsgen.cli import main
from capsgen.data import load_split

METRICS = {"fid", "kid", "kid_std", "is", "is_std", "precision", "recall", "density", "coverage",
           "class_coverage"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One digits evaluator (default recipe, ~5 s) shared by this module's tests."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAPSGEN_CACHE", str(root))
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        yield root
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    return np.array(load_split("digits", "test").images)


def save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def run_eval(capsys, argv) -> tuple[dict, list[str]]:
    assert main(["eval", *argv]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[0]), lines[1:]


def test_real_images_score_like_the_floor_and_noise_does_not(cache, tmp_path, capsys, test_images):
    real = save(tmp_path / "real.npz", images=test_images[:200])
    res, table = run_eval(capsys, [str(real), "--data", "digits", "--n", "150"])
    assert res["counts"] == {"samples": 150, "real_train": 150, "real_test": 150}
    assert METRICS <= set(res["samples"]) and METRICS <= set(res["real_vs_real"])
    assert res["data"] == "digits" and res["kind"] == "file"
    assert 0.9 <= res["evaluator"]["accuracy"] <= 1.0 and res["evaluator"]["feature_dim"] == 64
    s, floor = res["samples"], res["real_vs_real"]
    assert s["fid"] < 2 * floor["fid"] + 1 and s["precision"] > 0.7 and s["recall"] > 0.7
    assert s["class_coverage"]["classes_hit"] == 10 and s["class_coverage"]["n"] == 150
    assert table[0].split("|")[2].strip() == "real-vs-real floor" and table[2].startswith("FID")
    assert any(line.startswith("counts: 150 samples") for line in table)
    assert any("not Inception" in line for line in table)

    noise = np.random.default_rng(0).integers(0, 256, (150, 8, 8, 1), dtype=np.uint8)
    res_noise, _ = run_eval(capsys, [str(save(tmp_path / "noise.npz", images=noise)), "--data", "digits"])
    assert res_noise["counts"]["samples"] == 150
    assert res_noise["real_vs_real"] == floor                 # the floor depends on counts and seed only
    n = res_noise["samples"]
    assert n["fid"] > 10 * floor["fid"] and n["fid"] > 5 * s["fid"]
    assert n["kid"] > 10 * max(floor["kid"], 1e-3) and n["recall"] < 0.3 and n["coverage"] < 0.3


def test_generative_run_is_sampled(cache, tmp_path, capsys):
    run = tmp_path / "gan"
    assert main(["train", "dcgan", "--data", "digits", "--steps", "2", "--batch-size", "16", "--no-progress",
                 "--out", str(run), "--set", "threads=1", "--set", "g_width=8", "--set", "d_width=8",
                 "--set", "n_fixed=16", "--set", "eval_n=32", "--set", "eval_limit=32"]) == 0
    capsys.readouterr()
    res, table = run_eval(capsys, [str(run), "--n", "40"])
    assert res["capabilities"] == ["generate", "discriminate"] and res["data"] == "digits"
    assert {"d_acc", "d_real", "d_fake"} <= set(res["figures"])     # the family's own figures too
    gen = res["generate"]
    assert gen["counts"] == {"samples": 40, "real_train": 40, "real_test": 40}
    assert gen["samples"]["fid"] > gen["real_vs_real"]["fid"]        # 2 steps of training
    assert main(["eval", str(run), "--data", "mnist", "--n", "40"]) == 2
    assert "trained on digits, not mnist" in capsys.readouterr().err


def test_evaluator_command(cache, capsys):
    assert main(["evaluator", "--data", "digits", "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[0])
    assert res["data"] == "digits" and res["n_test"] == 359 and Path(res["path"]).parent.parent == cache


def test_help_says_inception_is_not_used(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "NOT from Inception-v3" in out and "real-vs-real floor" in out


@pytest.mark.parametrize("arrays, argv, expected", [
    ({"x": np.zeros((20, 8, 8, 1), np.uint8)}, [], "no array named 'images' (found: x)"),
    ({"images": np.zeros((20, 8, 8, 1), np.float32)}, [], "must be uint8 (0..255), got float32"),
    ({"images": np.zeros((20, 28, 28, 1), np.uint8)}, [], "but digits images are [N, 8, 8, 1]"),
    ({"images": np.zeros((20, 8, 8), np.uint8)}, [], "add a channel axis"),
    ({"images": np.zeros((3, 8, 8, 1), np.uint8)}, [], "too few"),
    ({"images": np.zeros((20, 8, 8, 1), np.uint8)}, ["--n", "0"], "--n must be"),
    (b"not a zip", [], "not an .npz archive"),
    (None, [], "file not found"),
])
def test_bad_sample_file_is_one_line(tmp_path, capsys, monkeypatch, arrays, argv, expected):
    monkeypatch.setenv("CAPSGEN_CACHE", str(tmp_path / "cache"))   # must never train an evaluator
    path = tmp_path / "s.npz"
    if isinstance(arrays, bytes):
        path.write_bytes(arrays)
    elif arrays is not None:
        save(path, **arrays)
    assert main(["eval", str(path), "--data", "digits", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("capsgen: error:") and "\n" not in err and expected in err
    assert not (tmp_path / "cache").exists()


def test_sample_file_needs_data(tmp_path, capsys):
    path = save(tmp_path / "s.npz", images=np.zeros((20, 8, 8, 1), np.uint8))
    assert main(["eval", str(path)]) == 2
    assert "--data NAME is required" in capsys.readouterr().err


def test_sample_verdict_of_a_generative_run(cache, tmp_path, capsys):
    from capsgen.eval.run_eval import format_verdict, sample_verdict

    run = tmp_path / "gan"
    assert main(["train", "dcgan", "--data", "digits", "--steps", "2", "--batch-size", "16", "--no-progress",
                 "--out", str(run), "--set", "threads=1", "--set", "g_width=8", "--set", "d_width=8",
                 "--set", "n_fixed=16", "--set", "eval_n=32", "--set", "eval_limit=32"]) == 0
    v = sample_verdict(str(run), n=50)
    assert v["n"] == 50 and v["fid"] > v["fid_floor"] >= 0 and 1 <= v["classes_hit"] <= v["classes"] == 10
    assert 0.0 <= v["confident_share"] <= 1.0 and v["evaluator_accuracy"] > 0.9
    line = format_verdict(v)
    assert "FID" in line and "floor" in line and "classes drawn" in line and "\n" not in line
