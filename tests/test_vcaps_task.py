"""The ``vcaps`` family through the loop and the commands: resume equality under a real Ctrl-C,
capabilities by mode, sampling by class / attributes and its one-line errors, ``capsgen eval``,
and the Task's maths (least-KL scores, masks, noise per global batch)."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from capsgen.cli import main
from capsgen.data import registry
from capsgen.data.batch import Batch
from capsgen.data.shapes import load_shapes_attributes
from capsgen.eval import attribute_evaluator, evaluator
from capsgen.models.vcaps.config import VCapsConfig
from capsgen.models.vcaps.task import VCapsTask
from capsgen.nn.variational import capsule_kl
from capsgen.train.checkpoint import read_checkpoint
from capsgen.train.task import DataInfo, StepContext

# Every part of the networks, at widths that train in seconds on 8x8 digits / 16x16 shapes.
TINY = ["--no-progress", "--set", "threads=1", "--set", "caps_dim=4", "--set", "eval_n=64",
        "--set", "n_fixed=8", "--set", "lr=2e-3"]
TINY_CONV = ["--set", "enc_channels=8,8,8", "--set", "dec_hidden=32"]
TINY_RES = ["--set", "res_base=4", "--set", "res_max_channels=8", "--set", "res_group_width=4"]


def train(out: Path, *args: str, data: str = "digits") -> int:
    return main(["train", "vcaps", "--data", data, "--seed", "0", "--out", str(out), "--batch-size", "16", *TINY,
                 *args])


def train_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time"} for r in rows if r["split"] == "train"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSGEN_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def shapes16(monkeypatch):
    """shapes-attributes drawn at 16x16, 2,000 training and 400 test images, registered for this
    test (the run config has no image size), with small evaluator recipes for it."""
    def load(directory, split, image_size, limit):
        return load_shapes_attributes(directory, split, image_size or 16,
                                      min(limit or 10**9, 2000 if split == "train" else 400))

    monkeypatch.setitem(registry.DATASETS, "shapes16",
                        registry.DatasetSpec("shapes16", "shapes-attributes at 16x16 (test)", load, None, (3, 16, 16)))
    monkeypatch.setitem(evaluator.RECIPES, "shapes16",
                        evaluator.Recipe(steps=40, batch_size=64, model=("model.channels=8,16", "model.hidden=32")))
    monkeypatch.setitem(attribute_evaluator.RECIPES, "shapes16",
                        attribute_evaluator.AttributeRecipe(steps=150, input_pool=1, channels=(8, 16), hidden=32))
    return "shapes16"


# ----------------------------------------------------------------------------- loop
def test_resume_after_interrupt_equals_uninterrupted(tmp_path, monkeypatch):
    # The LSGAN discriminator (second optimizer, batch norm) and progress grids: all state that must survive.
    args = ["--steps", "12", *TINY_CONV, "--set", "beta=1", "--set", "d_width=4", "--set", "sample_every=4",
            "--set", "checkpoint_every=5", "--set", "log_every=1"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert train(ref, *args) == 0
    original = VCapsTask.after_step

    def stop_at_7(self, step, r, writer=None):
        original(self, step, r, writer)
        if step == 7:   # a real Ctrl-C, landing while step 7's grid is written
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(VCapsTask, "after_step", stop_at_7)
    assert train(run, *args) == 130
    monkeypatch.setattr(VCapsTask, "after_step", original)
    assert read_checkpoint(run / "checkpoints" / "last.safetensors")[1]["state"]["step"] == 7
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    a, _ = read_checkpoint(ref / "checkpoints" / "last.safetensors")
    b, _ = read_checkpoint(run / "checkpoints" / "last.safetensors")
    keys = [k for k in a if k.startswith(("module.", "optim."))]
    assert any(k.startswith("module.discriminator.") for k in keys)
    assert any(k.startswith("optim.discriminator") for k in keys)
    assert set(keys) == {k for k in b if k.startswith(("module.", "optim."))}
    for k in keys:
        assert torch.equal(a[k], b[k]), k
    assert (ref / "figures" / "samples" / "step_000012.png").read_bytes() == \
        (run / "figures" / "samples" / "step_000012.png").read_bytes()
    rows = train_rows(run)
    assert rows == train_rows(ref) and {"d_loss", "g_adv", "kl_margin", "recon"} <= set(rows[-1])


def test_class_mode_learns_and_draws(tmp_path, capsys, cache):
    run = tmp_path / "run"
    assert train(run, "--steps", "150", *TINY_CONV, "--set", "kl_margin=4", "--set", "log_every=50",
                 "--set", "sample_every=0") == 0
    final = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert final["test_error"] < 0.3 and final["recon_error"] > 0   # 90 % wrong at the start
    rows = train_rows(run)
    assert rows[-1]["kl_margin"] < rows[0]["kl_margin"] and rows[-1]["kl_inactive"] > rows[-1]["kl_active"]
    for png in ("reconstructions.png", "samples.png", "class_grid.png", "interpolation.png", "vcaps_curves.png"):
        assert (run / "figures" / png).stat().st_size > 0
    out = tmp_path / "three.npz"
    assert main(["sample", str(run), "--n", "6", "--class", "3", "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["class"] == 3 and np.load(out)["images"].shape == (6, 8, 8, 1)
    # attributes asked of a class-mode run: one line naming what it can do, nothing written
    assert main(["sample", str(run), "--n", "2", "--attributes", "blue=1", "--out", str(tmp_path / "a.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("cannot generate images with chosen attributes; it can: generate, class-conditional, "
                        "classify, encode") and len(err.splitlines()) == 1 and not (tmp_path / "a.npz").exists()
    assert main(["interpolate", str(run), "--out", str(tmp_path / "i.png"), "--rows", "2", "--cols", "3"]) == 0
    assert (tmp_path / "i.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["eval", str(run), "--n", "60"]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[0])
    assert res["capabilities"] == ["generate", "class-conditional", "classify", "encode"]
    assert res["classify"]["test_error"] == pytest.approx(res["figures"]["test_error"], abs=1e-6) or \
        res["classify"]["n"] != res["figures"]["n"]
    assert res["classify"]["test_error"] < 0.3
    f = res["class-conditional"]
    assert len(f["per_class"]) == 10 and f["samples_per_class"] == 6 and 0 <= f["mean"] <= 1
    assert res["generate"]["counts"]["samples"] == 60


def test_attribute_mode_on_shapes(tmp_path, capsys, cache, shapes16):
    run = tmp_path / "run"
    assert train(run, "--steps", "60", *TINY_RES, "--set", "log_every=20", "--set", "sample_every=0",
                 data=shapes16) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["mode"] == "auto" and cfg["data"]["shape"] == [3, 16, 16]
    final = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert 0.5 < final["attribute_accuracy"] <= 1 and final["attribute_error"] == pytest.approx(
        1 - final["attribute_accuracy"])
    for png in ("attribute_grid.png", "attribute_swap.png", "interpolation.png", "reconstructions.png"):
        assert (run / "figures" / png).stat().st_size > 0
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "--n", "3", "--attributes", "square=1, blue=0,frame=1", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["attributes"] == "square=1, blue=0,frame=1"
    assert np.load(out)["images"].shape == (3, 16, 16, 3)
    assert main(["sample", str(run), "--n", "3", "--attributes", "square=1,glasses=1", "--out", str(out),
                 "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown attribute 'glasses'; this run has: square, blue, large, right, bottom, striped" in err
    assert len(err.splitlines()) == 1
    assert main(["sample", str(run), "--n", "3", "--class", "1", "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("cannot generate images of a chosen class; it can: generate, attribute-conditional, "
                        "attributes, encode") and len(err.splitlines()) == 1
    assert main(["eval", str(run), "--n", "40"]) == 0
    lines = capsys.readouterr().out.splitlines()
    res = json.loads(lines[0])
    assert res["capabilities"] == ["generate", "attribute-conditional", "attributes", "encode"]
    assert "classify" not in res and len(res["attributes"]["per_attribute"]) == 9
    f = res["attribute-conditional"]
    assert f["samples"] == 40 and set(f["per_attribute"]) == set(res["attributes"]["per_attribute"])
    assert 0 <= f["all_equal"] <= min(f["per_attribute"].values()) <= f["mean"] <= 1
    assert f["evaluator_mean_accuracy"] > 0.8    # 150 steps read colour, position, frame ... at 16x16
    assert any(line.startswith("attribute-conditioned fidelity:") for line in lines)


def test_bad_settings_are_one_line_errors(tmp_path, capsys):
    cases = [(["--set", "mode=faces"], "model.mode = 'faces'; choose one of: auto, class, attributes"),
             (["--set", "d_width=8"], "--set model.d_width cannot take effect: model.beta is 0"),
             (["--set", "network=conv", "--set", "res_base=4"], "cannot take effect: the conv networks"),
             (["--set", "enc_strides=1,2"], "must be non-empty and of equal length"),
             (["--set", "mode=attributes"], "model.mode=attributes needs binary attributes")]
    for args, message in cases:
        out = tmp_path / "run"
        assert train(out, "--steps", "1", *args) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not (out / "config.json").exists()


# ----------------------------------------------------------------------------- the Task's maths
def tiny_task(mode: str = "class", **kw) -> VCapsTask:
    torch.manual_seed(0)
    if mode == "class":
        cfg = VCapsConfig(caps_dim=3, enc_channels=(4, 4, 4), dec_hidden=(8,), **kw)
        info = DataInfo("t", (1, 8, 8), 5, [str(k) for k in range(5)], 40)
    else:
        cfg = VCapsConfig(caps_dim=3, res_base=2, res_max_channels=4, res_group_width=2, **kw)
        info = DataInfo("t", (3, 8, 8), 4, list("abcd"), 40, ["p", "q", "r"])
    return VCapsTask(cfg, info, torch.device("cpu"))


def test_scores_are_minus_kl_and_probs_follow_the_least_kl_capsule():
    task = tiny_task()
    task.train_mode(False)
    x = torch.rand(6, 1, 8, 8)
    mu, logvar = task.ae.encoder(x)
    scores = task.class_scores(x)
    assert torch.allclose(scores, -capsule_kl(mu, logvar)) and scores.requires_grad
    assert torch.equal(scores.argmax(1), capsule_kl(mu, logvar).argmin(1))
    att = tiny_task("attributes")
    att.train_mode(False)
    x = torch.rand(5, 3, 8, 8)
    kl = capsule_kl(*att.ae.encoder(x))
    p = att.attribute_probs(x)
    assert p.shape == (5, 3) and torch.equal(p > 0.5, kl[..., 1] < kl[..., 0])
    with pytest.raises(ValueError, match="class-mode"):
        att.class_scores(x)


def test_conditional_samples_use_the_requested_capsule_only():
    task = tiny_task()
    labels = torch.tensor([0, 4, 2])
    mask = task.sample_masks(labels)
    assert torch.equal(mask.argmax(1), labels) and mask.sum().item() == 3
    a = task.sample_classes(labels, torch.Generator().manual_seed(1))
    b = task.sample_classes(labels, torch.Generator().manual_seed(1))
    assert a.shape == (3, 1, 8, 8) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    with pytest.raises(ValueError, match="classes in"):
        task.sample_classes(torch.tensor([5]), torch.Generator())
    att = tiny_task("attributes")
    want = torch.tensor([[1, 0, 1], [0, 0, 0]])
    m = att.sample_masks(want)
    assert torch.equal(m.argmax(-1), want) and m.shape == (2, 3, 2)
    assert att.sample_attributes(want.float(), torch.Generator()).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"\[n, 3\] in \{0, 1\}"):
        att.sample_attributes(torch.tensor([[2, 0, 0]]), torch.Generator())


def test_attribute_bank_keeps_real_vectors_and_draws_from_them():
    att = tiny_task("attributes")
    g = torch.Generator().manual_seed(0)
    assert set(att.bank.draw(50, g).unique().tolist()) == {0.0, 1.0}     # fair coins before training
    att.bank.add(torch.tensor([[1, 0, 1], [1, 1, 0]]))
    drawn = att.bank.draw(40, g)
    assert int(att.bank.count) == 2 and {tuple(r) for r in drawn.long().tolist()} == {(1, 0, 1), (1, 1, 0)}
    assert "attribute_bank" in att.modules and "bank" in dict(att.bank.named_buffers())


def test_noise_is_drawn_for_the_global_batch_and_sliced():
    task = tiny_task()
    like = torch.zeros(1)
    full = task._noise(StepContext(0, 0.0, 1, torch.Generator().manual_seed(3), 8, slice(0, 8)), 8, like)
    half = task._noise(StepContext(0, 0.0, 1, torch.Generator().manual_seed(3), 8, slice(4, 8)), 4, like)
    assert full.shape == (8, 5, 3) and torch.equal(full[4:], half)


def test_step_updates_both_optimizers_and_reports_its_parts():
    task = tiny_task("attributes", beta=1.0, d_width=4)
    batch = Batch(torch.rand(6, 3, 8, 8), torch.randint(0, 4, (6,)), torch.randint(0, 2, (6, 3)).float())
    before = {k: [p.clone() for p in m.parameters()] for k, m in task.modules.items()}
    out = task.train_step(batch, StepContext(0, 0.0, 1, torch.Generator().manual_seed(0), 6, slice(0, 6)))
    for name in ("autoencoder", "discriminator"):
        assert any(not torch.equal(a, b) for a, b in zip(before[name], task.modules[name].parameters())), name
    assert {"loss", "kl_margin", "recon", "d_loss", "g_adv", "accuracy"} <= set(out)
    assert int(task.bank.count) == 6
    assert task.disabled_capabilities() == ("class-conditional", "classify")
    assert tiny_task().disabled_capabilities() == ("attribute-conditional", "attributes")


def test_interpolation_ends_are_the_two_encodings():
    task = tiny_task()
    task.train_mode(False)
    a, b = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    path = task.interpolate_images(a, b, 4).view(2, 4, 1, 8, 8)
    assert torch.allclose(path[:, 0], task.reconstruct(a), atol=1e-6)
    assert torch.allclose(path[:, -1], task.reconstruct(b), atol=1e-6)
    assert task.interpolate(3, 5, torch.Generator().manual_seed(0)).shape == (15, 1, 8, 8)


def test_alpha_pixels_scales_the_reconstruction_term_to_the_image_size():
    batch = Batch(torch.rand(4, 3, 8, 8), None, torch.randint(0, 2, (4, 3)).float())
    ctx = lambda: StepContext(0, 0.0, 1, torch.Generator().manual_seed(0), 4, slice(0, 4))  # noqa: E731
    plain, scaled = tiny_task("attributes", alpha=0.5), tiny_task("attributes", alpha=0.5, alpha_pixels=3 * 16 * 16)
    assert plain.recon_scale == 1.0 and scaled.recon_scale == 4.0          # 16x16x3 = 4 x 8x8x3
    a, b = plain.train_step(batch, ctx()), scaled.train_step(batch, ctx())
    assert a["recon"] == pytest.approx(b["recon"]) and a["kl_margin"] == pytest.approx(b["kl_margin"])
    # loss = L_c + alpha * scale * L_rec (no discriminator here)
    assert a["loss"] == pytest.approx(a["kl_margin"] + 0.5 * a["recon"], rel=1e-5)
    assert b["loss"] == pytest.approx(b["kl_margin"] + 0.5 * 4.0 * b["recon"], rel=1e-5)
    assert "model.alpha_pixels=196608" in VCapsConfig.PRESETS["huang-celeba"]


def test_presence_vectors_shift_only_the_active_capsules_and_learn():
    off, on = tiny_task("attributes"), tiny_task("attributes", presence_vectors=True)
    assert off.ae.presence is None and on.ae.presence.shape == (3, 2, 3)
    assert 0.5 < on.ae.presence.std() < 2                    # the prior's scale, so it shows from step 0
    with torch.no_grad():
        on.ae.presence.copy_(torch.arange(18.0).view(3, 2, 3) + 1)
    c = torch.randn(2, 3, 2, 3)
    mask = on.sample_masks(torch.tensor([[1, 0, 1], [0, 1, 1]]))
    got = on.ae.masked(c, mask)
    for b in range(2):                                      # loop reference: mask * (c + e)
        for a in range(3):
            for s in range(2):
                want = (c[b, a, s] + on.ae.presence[a, s]) if mask[b, a, s] else torch.zeros(3)
                assert torch.allclose(got[b, a, s], want)
    batch = Batch(torch.rand(4, 3, 8, 8), None, torch.randint(0, 2, (4, 3)).float())
    before = on.ae.presence.detach().clone()
    on.train_step(batch, StepContext(0, 0.0, 1, torch.Generator().manual_seed(0), 4, slice(0, 4)))
    assert not torch.equal(before, on.ae.presence)         # it is a trained parameter of the autoencoder
    assert "presence" in dict(on.modules["autoencoder"].named_parameters())
