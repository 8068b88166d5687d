"""The acgan family (Odena et al.; Chen et al. (G-CapsNets)): its step, randomness, capabilities,
and a tiny run through train, resume, sample --class, eval and attack on the 8x8 digits."""
from __future__ import annotations

import copy
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from capsgen.cli import main
from capsgen.data.batch import Batch
from capsgen.models.acgan.config import ACGANConfig
from capsgen.models.acgan.task import ACGANTask
from capsgen.report.figures import to_uint8_hwc
from capsgen.runs import open_run
from capsgen.train.capabilities import capabilities_of
from capsgen.train.checkpoint import read_checkpoint
from capsgen.train.task import DataInfo, StepContext

# Small widths for the 8x8 digits (G: 1x1 -> 2x2 -> 4x4 -> 8x8; D: 8 -> 4 -> 4 -> 2 -> 2); every
# layer of the real networks is there. lr 2e-3: the paper's 2e-4 barely moves them in 40 steps.
TINY = ["--no-progress", "--set", "threads=1", "--set", "g_channels=32,16,8", "--set", "d_channels=16,32,32,64",
        "--set", "lr=2e-3", "--set", "n_fixed=4", "--set", "eval_n=100", "--set", "eval_limit=100"]
CAPS = ["generate", "class-conditional", "classify", "discriminate"]


def train(out: Path, *args: str) -> int:
    return main(["train", "acgan", "--data", "digits", "--seed", "0", "--out", str(out), *TINY, *args])


def rows(run: Path, split: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in r.items() if k != "time"} for r in map(json.loads, lines) if r["split"] == split]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("acgan") / "run"
    assert train(out, "--steps", "40", "--batch-size", "32", "--set", "sample_every=20", "--set", "eval_every=20",
                 "--set", "log_every=10") == 0
    return out


def tiny_task(**kw) -> ACGANTask:
    torch.manual_seed(0)
    cfg = ACGANConfig(latent_dim=6, g_channels=(8, 8, 4), d_channels=(4, 8), d_strides=(2, 2), n_fixed=3, **kw)
    return ACGANTask(cfg, DataInfo("t", (1, 8, 8), 5, None, 32), torch.device("cpu"))


def state(task: ACGANTask) -> dict[str, torch.Tensor]:
    return {k: v.clone() for name, m in task.modules.items() for k, v in m.state_dict(prefix=name + ".").items()}


def real_batch(n: int = 8, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g))


# ------------------------------------------------------------------------------ the Task itself
def test_capabilities_and_class_scores_are_the_class_head():
    task = tiny_task()
    assert capabilities_of(task) == CAPS
    task.train_mode(False)
    x = torch.rand(3, 1, 8, 8, requires_grad=True)
    scores = task.class_scores(x)
    assert torch.equal(scores, task.D(x * 2 - 1)[1]) and scores.shape == (3, 5)
    (grad,) = torch.autograd.grad(scores[:, 1].sum(), x)       # attacks need d scores / d images
    assert grad.abs().sum() > 0
    p = task.discriminate(x.detach())
    assert torch.allclose(p, torch.sigmoid(task.D(x.detach() * 2 - 1)[0][:, 0])) and p.shape == (3,)


def test_fakes_are_drawn_for_the_global_batch_and_sliced():
    # Under torchrun each process keeps its rows of the draws a one-process run makes.
    task = tiny_task()
    whole = task.fakes_spec(8, StepContext(0, 0.0, 1, torch.Generator().manual_seed(3), 8, slice(0, 8)))
    half = task.fakes_spec(4, StepContext(0, 0.0, 1, torch.Generator().manual_seed(3), 8, slice(4, 8)))
    assert torch.equal(half[0], whole[0][4:]) and torch.equal(half[1], whole[1][4:])
    assert whole[1].min() >= 0 and whole[1].max() < 5 and len(set(whole[1].tolist())) > 1


def test_a_step_draws_everything_from_the_step_generator():
    # Dropout (0.3 in every D layer) included: the global RNG neither feeds nor is changed by a step.
    a = tiny_task()
    b = copy.deepcopy(a)
    c = copy.deepcopy(a)
    batch = real_batch()
    torch.manual_seed(1)
    rng = torch.get_rng_state()
    fa = a.train_step(batch, StepContext(0, 0.0, 4, torch.Generator().manual_seed(7)))
    assert torch.equal(torch.get_rng_state(), rng)
    torch.manual_seed(2)
    fb = b.train_step(batch, StepContext(0, 0.0, 4, torch.Generator().manual_seed(7)))
    c.train_step(batch, StepContext(0, 0.0, 4, torch.Generator().manual_seed(8)))
    sa, sb, sc = state(a), state(b), state(c)
    assert fa == fb and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)      # another step seed: other draws
    assert {"d_loss", "d_source", "d_class", "g_loss", "g_source", "g_class", "d_acc", "class_acc",
            "fake_class_acc"} <= set(fa)
    # Odena et al.'s alternation: both networks moved
    fresh = state(tiny_task())
    for net in ("generator.", "discriminator."):
        assert any(not torch.equal(sa[k], fresh[k]) for k in sa if k.startswith(net) and k.endswith("weight"))


def test_sampling_interpolation_and_evaluation_change_no_state():
    task = tiny_task()
    task.train_step(real_batch(), StepContext(0, 0.0, 4, torch.Generator().manual_seed(0)))
    task.train_mode(False)
    before, rng = state(task), torch.get_rng_state()
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2, 3, 6, generator=g)
    rows = task.interpolate(3, 4, torch.Generator().manual_seed(5))
    assert rows.shape == (12, 1, 8, 8) and rows.min() >= 0 and rows.max() <= 1
    # row r walks from z0[r] to z1[r], all in class r: its ends are those latents' images of class r
    ends = task.generate(torch.cat([z[0], z[1]]), torch.arange(3).repeat(2))
    assert torch.allclose(rows.reshape(3, 4, 1, 8, 8)[:, 0], ends[:3], atol=1e-6)
    assert torch.allclose(rows.reshape(3, 4, 1, 8, 8)[:, -1], ends[3:], atol=1e-6)
    labels = torch.tensor([4, 0, 4])
    same = task.sample_classes(labels, torch.Generator().manual_seed(1))
    assert torch.equal(same, task.sample_classes(labels, torch.Generator().manual_seed(1)))
    assert not torch.equal(same, task.sample_classes(torch.tensor([3, 0, 4]), torch.Generator().manual_seed(1)))
    assert task.sample(7, g).shape == (7, 1, 8, 8) and task.class_grid().shape == (15, 1, 8, 8)
    res = task.evaluate(real_batch(20, seed=1))
    assert set(res) == {"d_acc", "d_acc_real", "d_acc_fake", "d_real", "d_fake", "fake_class_acc", "class_acc", "n"}
    assert res["n"] == 20 and all(0 <= v <= 1 for k, v in res.items() if k != "n")
    after = state(task)
    assert all(torch.equal(before[k], after[k]) for k in before) and torch.equal(torch.get_rng_state(), rng)


def test_datasets_without_labels_are_refused():
    with pytest.raises(ValueError, match="acgan needs class labels"):
        ACGANTask(ACGANConfig(), DataInfo("faces", (3, 8, 8), None, None, 10), torch.device("cpu"))


# ------------------------------------------------------------------------------ through the CLI
def test_training_learns_classes_and_draws_one_row_per_class(run):
    test = rows(run, "test")
    assert [r["step"] for r in test] == [20, 40] and test[-1]["n"] == 100
    # D's class head after 40 steps: well above the 10 % of chance (measured 0.6-0.7)
    assert test[-1]["class_acc"] > 0.3
    d = [r["d_loss"] for r in rows(run, "train")]
    assert d[-1] < d[0], d
    figs = run / "figures"
    assert sorted(p.name for p in (figs / "samples").iterdir()) == ["step_000020.png", "step_000040.png"]
    for png in ("class_grid.png", "samples.png", "real.png", "interpolation.png", "gan_curves.png"):
        assert (figs / png).stat().st_size > 0
    # 10 class rows x 4 fixed latents of 8x8 (2-pixel gaps, scale 2)
    assert Image.open(figs / "class_grid.png").size == ((4 * 10 + 2) * 2, (10 * 10 + 2) * 2)
    assert Image.open(figs / "samples" / "step_000040.png").size == Image.open(figs / "class_grid.png").size


def test_sample_class_draws_that_class(run, tmp_path, capsys):
    out = tmp_path / "three.npz"
    assert main(["sample", str(run), "--n", "6", "--class", "3", "--seed", "5", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["class"] == 3
    images = np.load(out)["images"]
    task = open_run(run).task
    expect = to_uint8_hwc(task.sample_classes(torch.full((6,), 3), torch.Generator().manual_seed(5)))
    assert images.shape == (6, 8, 8, 1) and np.array_equal(images, expect)
    other = to_uint8_hwc(task.sample_classes(torch.full((6,), 4), torch.Generator().manual_seed(5)))
    assert not np.array_equal(images, other)     # same latents, other class: other images


@pytest.mark.parametrize("label", ["10", "-1"])
def test_a_class_out_of_range_is_one_line(run, tmp_path, capsys, label):
    out = tmp_path / "x.npz"
    assert main(["sample", str(run), "--n", "2", f"--class={label}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--class {label} is out of range" in err and "classes 0..9" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_an_acgan_run_is_attacked_through_its_class_head(run, tmp_path, capsys):
    out = tmp_path / "attack"
    assert main(["attack", str(run), "--method", "fgsm", "--white-box", "--eps", "0.1", "--n", "100",
                 "--out", str(out), "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[0])
    # the same first 100 test images and final weights as the run's last evaluation
    assert res["clean_accuracy"] == pytest.approx(rows(run, "test")[-1]["class_acc"], abs=1e-6)
    assert res["attacked_accuracy"] < res["clean_accuracy"] and res["family"] == "acgan"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private evaluator cache: the digits evaluator is trained once here (~5 s)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAPSGEN_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def test_eval_reports_classify_generate_and_class_fidelity(run, cache, capsys):
    assert main(["eval", str(run), "--n", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    res = json.loads(lines[0])
    assert res["capabilities"] == CAPS and res["family"] == "acgan"
    assert 0 <= res["classify"]["test_error"] <= 1 and res["classify"]["n"] == 50
    assert res["generate"]["counts"]["samples"] == 50 and "fid" in res["generate"]["samples"]
    fid = res["class-conditional"]
    assert len(fid["per_class"]) == 10 and fid["samples_per_class"] == 5 and 0 <= fid["mean"] <= 1
    assert {"d_acc", "class_acc", "fake_class_acc"} <= set(res["figures"])
    text = "\n".join(lines[1:])
    assert "test error:" in text and "conditional fidelity:" in text and "FID" in text


# ------------------------------------------------------------------------------ resume
def test_resume_after_interrupt_equals_uninterrupted(tmp_path, monkeypatch):
    args = ["--steps", "12", "--batch-size", "16", "--set", "sample_every=4", "--set", "checkpoint_every=5",
            "--set", "log_every=1", "--set", "eval_every=6"]
    ref, part = tmp_path / "ref", tmp_path / "part"
    assert train(ref, *args) == 0
    original = ACGANTask.after_step

    def stop_at_7(self, step, r, writer=None):
        original(self, step, r, writer)
        if step == 7:   # a real Ctrl-C, landing while step 7's pictures are written
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(ACGANTask, "after_step", stop_at_7)
    assert train(part, *args) == 130
    monkeypatch.setattr(ACGANTask, "after_step", original)
    assert read_checkpoint(part / "checkpoints" / "last.safetensors")[1]["state"]["step"] == 7
    assert main(["train", "--resume", str(part), "--no-progress"]) == 0
    a, _ = read_checkpoint(ref / "checkpoints" / "last.safetensors")
    b, _ = read_checkpoint(part / "checkpoints" / "last.safetensors")
    keys = [k for k in a if k.startswith(("module.", "optim."))]
    assert any(k.startswith("module.discriminator.") for k in keys) and any(k.startswith("optim.generator") for k in keys)
    assert set(keys) == {k for k in b if k.startswith(("module.", "optim."))}
    for k in keys:
        assert torch.equal(a[k], b[k]), k
    for name in ("step_000008.png", "step_000012.png"):
        assert (ref / "figures" / "samples" / name).read_bytes() == (part / "figures" / "samples" / name).read_bytes()
    assert rows(part, "train") == rows(ref, "train") and rows(part, "test") == rows(ref, "test")
