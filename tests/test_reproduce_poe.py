"""``capsgen reproduce poe`` end to end on the 8x8 digits with a tiny model: the report beside
Hauser's claims, both settings and the DCGAN of equal wall clock, kept stages on a rerun, a
Ctrl-C inside a training stage continued to the same tensors, and bad input."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from capsgen.cli import main
from capsgen.models.poe.task import PoETask
from capsgen.reproduce.poe.run import class_purity
from capsgen.train.checkpoint import read_checkpoint

# A tiny poe (8 primary capsules, 4 code capsules) and DCGAN at 8x8; explicit stage lengths so the
# plan does not depend on the timing of this machine (a --set of them wins over the calibration).
TINY = ["--set", "threads=1", "--set", "model.ae_kernel=3", "--set", "model.ae_channels=16",
        "--set", "model.code_capsules=4", "--set", "model.code_dim=6", "--set", "model.init_std=0.1",
        "--set", "model.w_lr=20", "--set", "model.ae_steps=8", "--set", "model.stat_steps=2",
        "--set", "model.w_steps=8", "--set", "model.u_steps=8", "--set", "model.eval_n=16",
        "--set", "model.g_width=8", "--set", "model.g_channels=16,8,8,3", "--set", "model.d_width=8",
        "--set", "model.n_fixed=4", "--set", "train.eval_limit=64"]
FAST = ["--data", "digits", "--budget", "0.02", "--per-capsule", "12", *TINY]


def reproduce(out: Path, *args: str) -> int:
    return main(["reproduce", "poe", "--out", str(out), *args])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private evaluator cache: the digits evaluator is trained once here (~5 s)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAPSGEN_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def fast(tmp_path_factory, cache) -> Path:
    out = tmp_path_factory.mktemp("poe") / "rep"
    assert reproduce(out, *FAST) == 0
    return out


def stages(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())["stages"]


def test_report_checks_every_claim_for_both_settings_beside_the_baseline(fast):
    md = (fast / "report.md").read_text()
    for heading in ("## Scale", "## The two settings", "## Errors per stage (test split)",
                    "## Figure 2: 4 capsules × 4 samples", "## Negatives: full sphere against the restricted half",
                    "## Do capsules learn specific objects?", "## Sample quality against the baseline at the same wall clock",
                    "## Hauser's claims, one by one", "## Deviations from the paper", "## Timing"):
        assert heading in md, heading
    assert "about fifteen minutes" in md and "restrict our sampling domain" in md
    assert md.count("→ **") >= 2 * 5               # five verdicts per arm (the time claim is a statement)
    st = stages(fast)
    assert set(st) == {"calibrate/hauser", "train/hauser", "calibrate/centred", "train/centred", "train/baseline",
                       "measure/hauser", "measure/centred", "measure/baseline"}
    h, c = st["train/hauser"]["model"], st["train/centred"]["model"]
    assert (h["centre_capsules"], h["decoder_rule"]) == (False, "hauser")
    assert (c["centre_capsules"], c["decoder_rule"]) == (True, "gaussian")
    assert st["train/hauser"]["steps"] == st["train/centred"]["steps"] == 26    # the --set stage lengths won
    # the baseline had the poe runs' mean wall clock
    mean_s = (st["train/hauser"]["seconds"] + st["train/centred"]["seconds"]) / 2
    assert st["train/baseline"]["train"]["minutes"] == pytest.approx(mean_s / 60, rel=0.05)
    assert st["train/baseline"]["train"]["family"] == "dcgan"
    for arm in ("hauser", "centred"):
        m = st[f"measure/{arm}"]
        n = m["negatives"]
        assert n["n"] == 4 * 12 and 0 <= n["full"] <= 1 and 0 <= n["restricted"] <= 1
        assert len(m["restricted"]["purity"]["per_capsule"]) == 4
        assert m["full"]["metrics"]["counts"]["samples"] == 48 and "fid" in m["full"]["metrics"]["samples"]
        for name in ("full", "restricted", "negated", "reconstructions"):
            assert (fast / m["grids"][name]).is_file() and f"]({m['grids'][name]})" in md
    assert (fast / st["measure/baseline"]["grid"]).is_file() and "real training images (floor)" in md
    assert (fast / "report.html").read_text().count("<img") >= 9


def test_purity_counts_the_dominant_class_per_capsule():
    pred = torch.tensor([1, 1, 2, 3, 3, 3, 0, 0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    p = class_purity(pred, groups, 3, 4)
    assert [(q["class"], round(q["purity"], 3)) for q in p["per_capsule"]] == [(1, 0.667), (3, 1.0), (0, 1.0)]
    assert p["pooled"] == pytest.approx(3 / 8) and p["classes"] == 3
    assert p["mean"] == pytest.approx((2 / 3 + 1 + 1) / 3)


def test_rerun_keeps_every_stage(fast, capsys):
    before = stages(fast)
    ckpt = fast / "runs" / "centred" / "checkpoints" / "last.safetensors"
    mtime = ckpt.stat().st_mtime_ns
    assert reproduce(fast, *FAST) == 0
    assert "done before, kept" in capsys.readouterr().out
    assert stages(fast) == before and ckpt.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_ctrl_c_inside_a_training_stage_continues_to_the_same_tensors(fast, tmp_path, monkeypatch):
    out = tmp_path / "rep"
    original = PoETask.after_step

    def interrupt(self, step, r, writer=None):
        original(self, step, r, writer)
        if step == 13:   # the first arm (hauser), inside its W stage
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(PoETask, "after_step", interrupt)
    assert reproduce(out, *FAST) == 130
    monkeypatch.setattr(PoETask, "after_step", original)
    assert "train/hauser" not in stages(out)
    assert reproduce(out, *FAST) == 0
    for arm in ("hauser", "centred"):
        a, _ = read_checkpoint(fast / "runs" / arm / "checkpoints" / "last.safetensors")
        b, _ = read_checkpoint(out / "runs" / arm / "checkpoints" / "last.safetensors")
        for k in a:
            if k.startswith(("module.", "optim.", "extra.")):
                assert torch.equal(a[k], b[k]), (arm, k)


@pytest.mark.parametrize("args,msg", [
    (["--baseline", "poe"], "not another generative family"),
    (["--baseline", "nosuch"], "is not a family"),
    (["--set", "train.steps=5"], "the reproduction sets it; use --budget"),
    (["--set", "model.nosuch=1"], "no model of this experiment has that field"),
    (["--budget", "0"], "--budget must be a positive"),
    (["--set", "model.ae_kernel=9"], "too small"),
])
def test_bad_input_is_one_line_and_makes_no_folder(tmp_path, capsys, args, msg):
    out = tmp_path / "rep"
    base = ["--data", "digits", "--budget", "0.02", "--set", "model.ae_kernel=3"]
    assert reproduce(out, *base, *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err, err
    assert not out.exists()


def test_the_twin_arm_takes_centreds_steps_and_is_measured_per_component(tmp_path, cache):
    out = tmp_path / "rep"
    assert reproduce(out, *FAST, "--arms", "twin,centred") == 0
    st = stages(out)
    t, c = st["train/twin"], st["train/centred"]
    assert t["model"]["twin"] is True and c["model"]["twin"] is False
    assert t["steps"] == c["steps"] == 26
    assert (t["model"]["w_lr"], c["model"]["w_lr"]) == (300.0, 20.0)     # the capsule-only --set skips the twin
    m = st["measure/twin"]
    assert len(m["restricted"]["purity"]["per_capsule"]) == 4 and "mixture_loglik" in m["errors"]
    md = (out / "report.md").read_text()
    assert "the non-capsule twin of centred" in md
