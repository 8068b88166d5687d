"""The classifier family and the cached evaluator network: trains once, reloads, survives damage."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from capsgen.cli import main
from capsgen.data import load_split
from capsgen.errors import CapsgenError
from capsgen.eval import evaluator as E
from capsgen.models.classifier.config import ClassifierConfig
from capsgen.models.classifier.nets import Classifier

# A few seconds on one busy thread; accuracy is well above chance on the 8x8 digits.
TINY = E.Recipe(steps=40, batch_size=64, model=("model.channels=8,16", "model.hidden=32"))
TINY_CLS = ["--set", "channels=8,16", "--set", "hidden=16", "--set", "threads=1"]


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A cache holding one trained TINY digits evaluator; tests copy it, never change it."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAPSGEN_CACHE", str(root))
        torch.set_num_threads(1)
        E.get_evaluator("digits", recipe=TINY, progress=False)
    return root


@pytest.fixture
def cache(template, tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    shutil.copytree(template, root)
    monkeypatch.setenv("CAPSGEN_CACHE", str(root))
    return root


def entry(root: Path) -> Path:
    (folder,) = [p for p in (root / "evaluators").iterdir() if p.is_dir()]
    return folder


def no_training(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("the evaluator was trained again")
    monkeypatch.setattr(E, "_train", fail)


def test_classifier_model_shapes():
    torch.manual_seed(0)
    m = Classifier(ClassifierConfig(), (1, 28, 28), 10).eval()
    x = torch.rand(3, 1, 28, 28)
    f, p = m.features_and_probs(x)
    assert f.shape == (3, 256) and p.shape == (3, 10) and (f >= 0).all()
    assert torch.allclose(p.sum(1), torch.ones(3)) and torch.allclose(m.probs(x), p)
    assert torch.equal(m.features(x), f)
    with pytest.raises(ValueError, match="outside"):
        Classifier(ClassifierConfig(channels=(8,)), (1, 8, 8), 10)


def test_classifier_trains_through_generic_loop(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "classifier", "--data", "digits", "--steps", "4", "--batch-size", "32",
                 "--no-progress", "--out", str(out), *TINY_CLS]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["family"] == "classifier" and cfg["model"]["hidden"] == 16
    assert (out / "checkpoints" / "last.safetensors").is_file()
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0              # classifier runs keep reporting their test error
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[0])["classify"]["n"] == 359 and lines[2].startswith("test error:")
    assert main(["eval", str(out), "--data", "mnist"]) == 2
    assert "trained on digits, not mnist" in capsys.readouterr().err


def test_trains_once_then_reloads_identically(template, cache, monkeypatch, capsys):
    folder = entry(cache)
    meta = json.loads((folder / "evaluator.json").read_text())
    assert folder.name == f"digits-{meta['key']}" and folder.parent == E.cache_root()
    assert (folder / "config.json").is_file() and meta["n_test"] == 359
    assert 0.5 < meta["accuracy"] <= 1.0               # well above the 10 % of chance
    no_training(monkeypatch)
    ev = E.get_evaluator("digits", recipe=TINY, progress=False)
    assert ev.path == folder and ev.accuracy == meta["accuracy"] and ev.feature_dim == 32
    images = load_split("digits", "test").images[:50]
    f, p = ev.features_and_probs(images)
    assert f.shape == (50, 32) and p.shape == (50, 10)
    assert torch.allclose(p.sum(1), torch.ones(50), atol=1e-5)
    again = E.get_evaluator("digits", recipe=TINY, progress=False)
    assert torch.equal(again.features(images), f) and torch.equal(again.probs(images), p)
    # the same images as float tensors [N, C, H, W] in [0, 1] give the same features
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    assert torch.allclose(ev.features(x), f, atol=1e-6)
    with pytest.raises(CapsgenError, match=r"uint8 \[N, 8, 8, 1\]"):
        ev.features(np.zeros((2, 28, 28, 1), np.uint8))


def test_prints_accuracy_when_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CAPSGEN_CACHE", str(tmp_path))
    recipe = E.Recipe(steps=3, batch_size=64, model=TINY.model)
    ev = E.get_evaluator("digits", recipe=recipe, progress=False)
    err = capsys.readouterr().err
    assert "training the digits evaluator" in err and f"test accuracy {100 * ev.accuracy:.2f}%" in err


def test_missing_without_training_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSGEN_CACHE", str(tmp_path))
    with pytest.raises(CapsgenError, match="capsgen evaluator --data digits") as exc:
        E.get_evaluator("digits", recipe=TINY, train_if_missing=False)
    assert "\n" not in str(exc.value) and not (tmp_path / "evaluators" / "digits").exists()


def _truncate(folder: Path):
    ckpt = folder / "checkpoints" / "last.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])


def _flip_byte(folder: Path):
    ckpt = folder / "checkpoints" / "last.safetensors"
    raw = bytearray(ckpt.read_bytes())
    raw[-10] ^= 0xFF
    ckpt.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage, reason", [
    (lambda f: (f / "evaluator.json").unlink(), "never finished"),         # killed while training
    (lambda f: (f / "evaluator.json").write_text('{"data": "dig'), "unreadable"),
    (_truncate, "SHA-256"),
    (_flip_byte, "SHA-256"),
    (lambda f: (f / "config.json").write_text("{}"), "cannot rebuild"),
])
def test_damaged_cache_is_reported(cache, damage, reason):
    damage(entry(cache))
    with pytest.raises(E.CorruptCache, match=reason) as exc:
        E.get_evaluator("digits", recipe=TINY, train_if_missing=False)
    assert "\n" not in str(exc.value) and "--retrain" in str(exc.value)


def test_damaged_cache_is_retrained_to_the_same_network(template, cache, capsys):
    images = load_split("digits", "test").images[:20]
    before = E.load_evaluator(entry(template)).features(images)
    _truncate(entry(cache))
    ev = E.get_evaluator("digits", recipe=TINY, progress=False)
    assert "damaged evaluator cache, retraining" in capsys.readouterr().err
    assert ev.path == entry(cache)
    assert torch.allclose(ev.features(images), before, atol=1e-5)   # fixed seed: same weights


def test_recipe_change_gets_its_own_entry(template):
    t1, m1 = E.make_configs("digits", TINY)
    t2, m2 = E.make_configs("digits", E.Recipe(steps=41, batch_size=64, model=TINY.model))
    assert E.cache_key(t1, m1) != E.cache_key(t2, m2)
    assert E.cache_key(t1, m1) == E.cache_key(*E.make_configs("digits", TINY))
    assert entry(template).name == f"digits-{E.cache_key(t1, m1)}"
