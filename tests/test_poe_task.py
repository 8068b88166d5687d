"""The ``poe`` family through the loop and the CLI: the schedule of stages as one run, the budget it
fixes, resume after a real Ctrl-C inside every stage (bit-identical), sampling by capsule and
domain, evaluation per stage, pictures, and the one-line refusals."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from capsgen.cli import main
from capsgen.config import TrainConfig, fit_train_budget
from capsgen.errors import ConfigError
from capsgen.models import FAMILIES
from capsgen.models.poe.config import PoEConfig
from capsgen.models.poe.task import PoETask
from capsgen.runs import open_run
from capsgen.train.checkpoint import read_checkpoint

# Every part of the model at 8x8: 3x3 kernels, 8 -> 6 -> 2x2 maps of 16 channels = 8 primary
# capsules of 8-D, 4 code capsules of 6-D. Stages: ae [0, 6), stats [6, 9), w [9, 15), u [15, 21).
TINY = ["--set", "threads=1", "--set", "ae_kernel=3", "--set", "ae_channels=16", "--set", "code_capsules=4",
        "--set", "code_dim=6", "--set", "init_std=0.1", "--set", "w_lr=20", "--set", "ae_lr=3e-3",
        "--set", "ae_steps=6", "--set", "stat_steps=3", "--set", "w_steps=6", "--set", "u_steps=6",
        "--set", "eval_n=40", "--set", "log_every=1", "--set", "checkpoint_every=4", "--set", "eval_every=5"]
TOTAL = 21


def train(out: Path, *args: str) -> int:
    return main(["train", "poe", "--data", "digits", "--batch-size", "32", "--seed", "3", "--no-progress",
                 "--out", str(out), *TINY, *args])


def checkpoint(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / "checkpoints" / "last.safetensors")[0]


def rows(run: Path, split: str) -> list[dict]:
    out = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time"} for r in out if r["split"] == split]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("poe") / "ref"
    assert train(run) == 0
    return run


# ----------------------------------------------------------------------------- the schedule
def test_stage_of_follows_the_schedule_and_fixes_the_run_length():
    cfg = PoEConfig(ae_steps=2, stat_steps=1, w_steps=3, u_steps=2)
    assert [cfg.stage_of(s) for s in range(8)] == [("ae", 0), ("ae", 1), ("stats", 0), ("w", 0), ("w", 1),
                                                   ("w", 2), ("u", 0), ("u", 1)]
    assert cfg.fixed_steps()[0] == 8
    assert PoEConfig(ae_steps=0, w_steps=0, u_steps=0).stage_of(0) == ("stats", 0)
    t = TrainConfig(family="poe")
    fit_train_budget(t, cfg)
    assert t.steps == 8
    for bad in (TrainConfig(family="poe", steps=7), TrainConfig(family="poe", epochs=1.0)):
        with pytest.raises(ConfigError, match="trains exactly 8 steps"):
            fit_train_budget(bad, cfg)
    fit_train_budget(TrainConfig(family="poe", steps=8, minutes=1.0), cfg)     # equal steps and a cap: fine


def test_registry_entry_and_presets():
    fam = FAMILIES["poe"]
    assert fam.capabilities == ("generate", "encode") and fam.task() is PoETask and fam.paper == "Hauser"
    assert fam.presets == ["hauser"]
    assert PoEConfig().centre_capsules and PoEConfig().decoder_rule == "gaussian"


def test_budget_and_data_refusals_are_one_line(tmp_path, capsys):
    for args in (["--steps", "5"], ["--epochs", "1"]):
        assert train(tmp_path / "a", *args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"trains exactly {TOTAL} steps" in err
    assert main(["train", "poe", "--data", "digits", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "too small" in err and "model.ae_kernel=3" in err
    assert main(["train", "poe", "--data", "digits", "--out", str(tmp_path / "c"), *TINY,
                 "--set", "u_steps=0", "--set", "u_lr=1"]) == 2
    assert "u_steps is 0" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "abc")


# ----------------------------------------------------------------------------- one run, resumable
def test_a_run_trains_every_stage_in_order(reference):
    train_rows = rows(reference, "train")
    stages = [r["stage"] for r in train_rows]
    assert stages == [0.0] * 6 + [1.0] * 3 + [2.0] * 6 + [3.0] * 6
    assert all("ae_loss" in r for r in train_rows[:6]) and all("w_recon" in r for r in train_rows[9:15])
    assert all("u_recon" in r for r in train_rows[15:])
    t = checkpoint(reference)
    assert t["module.model.stage_steps"].tolist() == [6, 3, 6, 6]
    assert {"extra.w_momentum", "extra.u_momentum"} <= set(t)
    assert t["extra.w_updates"].item() == 6 and t["extra.u_updates"].item() == 6
    assert bool(t["module.model.capsules.capsules_fitted"]) and bool(t["module.model.capsules.domain_fitted"])
    assert t["module.model.capsules.capsule_count"].item() == 3 * 32 and t["module.model.capsules.code_count"].item() == 6 * 32
    # the stages changed what they own and nothing else: W moved in stage w only, U in u only
    test = rows(reference, "test")
    assert {"ae_mse"} <= set(test[0]) and "w_recon" not in test[0]             # step 5: autoencoder
    assert "w_recon" in test[1] and "u_recon" not in test[1]                   # step 10: W
    last = test[-1]
    assert {"u_recon", "pixel_mse", "negative_full", "negative_restricted", "code_resultant"} <= set(last)
    figs = {p.name for p in (reference / "figures").iterdir()}
    assert {"reconstructions.png", "capsule_grid_full.png", "capsule_grid_restricted.png",
            "capsule_grid_negated.png", "interpolation.png", "poe_curves.png"} <= figs


@pytest.mark.parametrize("stop", [3, 7, 9, 12, 15, 18])   # in ae, stats, at w's start, in w, at u's start, in u
def test_ctrl_c_in_any_stage_resumes_to_identical_tensors(reference, tmp_path, monkeypatch, stop):
    run = tmp_path / "run"
    original = PoETask.after_step

    def interrupt(self, step, r, writer=None):
        original(self, step, r, writer)
        if step == stop:   # a real Ctrl-C between steps
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(PoETask, "after_step", interrupt)
    assert train(run) == 130
    monkeypatch.setattr(PoETask, "after_step", original)
    assert read_checkpoint(run / "checkpoints" / "last.safetensors")[1]["state"]["step"] == stop
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert_same_run(reference, run)


def assert_same_run(reference: Path, run: Path) -> None:
    """The two runs' last checkpoints hold identical weights, optimizer and extra state, and their
    training rows are the same."""
    a, b = checkpoint(reference), checkpoint(run)
    keys = [k for k in a if k.startswith(("module.", "optim.", "extra."))]
    assert set(keys) == {k for k in b if k.startswith(("module.", "optim.", "extra."))}
    for k in keys:
        assert torch.equal(a[k], b[k]), k
    assert rows(run, "train") == rows(reference, "train")


def test_a_time_capped_run_stops_in_a_stage_and_resuming_finishes_it(reference, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(run, "--minutes", "1e-9") == 0          # stops after its first step
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "s.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no trained decoder yet" in err and "stage 'ae'" in err
    assert main(["train", "--resume", str(run), "--steps", "5", "--no-progress"]) == 2
    assert f"trains exactly {TOTAL} steps" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--minutes", "60", "--no-progress"]) == 0
    a, b = checkpoint(reference), checkpoint(run)
    for k in a:
        if k.startswith(("module.", "optim.", "extra.")):
            assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- sampling
def test_capsule_grids_restricted_poses_are_the_full_or_the_negated_ones(reference):
    task = open_run(reference).task
    g = lambda: torch.Generator().manual_seed(5)
    full, restricted, negated = (task.capsule_grid(3, d, g(), negate=n) for d, n in
                                 (("full", False), ("restricted", False), ("full", True)))
    assert full.shape == (3 * 4, 1, 8, 8) and 0 <= float(full.min()) and float(full.max()) <= 1
    same = [torch.equal(r, f) for r, f in zip(restricted, full)]
    flipped = [torch.equal(r, n) for r, n in zip(restricted, negated)]
    assert all(s or f for s, f in zip(same, flipped)) and any(same) and any(flipped)
    # the flip keeps each pose in the half-space of its capsule's training direction
    J, D = 4, 6
    poses = torch.randn(3 * J, D, generator=g())
    kept = task._poses(poses, torch.arange(J).repeat(3), True)
    assert ((kept * task.caps.directions[torch.arange(J).repeat(3)]).sum(-1) >= 0).all()


def test_sample_by_capsule_is_reproducible_and_one_capsule_only(reference):
    task = open_run(reference).task
    a = task.sample_capsules(6, 2, "restricted", torch.Generator().manual_seed(1))
    b = task.sample_capsules(6, 2, "restricted", torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (6, 1, 8, 8)
    # capsule 2 with pose g: the same images as the grid's column 2 draws with the same poses
    g = torch.randn(6, 6, generator=torch.Generator().manual_seed(1))
    code = task._codes(task._poses(g, torch.full((6,), 2), True), torch.full((6,), 2))
    assert torch.allclose(task.decode_codes(code), a)
    assert task.sample(5, torch.Generator().manual_seed(0)).shape == (5, 1, 8, 8)
    assert task.interpolate(3, 4, torch.Generator().manual_seed(0)).shape == (12, 1, 8, 8)


def test_sample_cli_capsule_and_domain(reference, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert main(["sample", str(reference), "--n", "5", "--out", str(out), "--capsule", "3",
                 "--domain", "full", "--seed", "2"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["capsule"] == 3 and res["domain"] == "full"
    task = open_run(reference).task
    want = task.sample_capsules(5, 3, "full", torch.Generator().manual_seed(2))
    got = np.load(out)["images"]
    assert got.shape == (5, 8, 8, 1)
    assert np.abs(got.astype(int) - (want.permute(0, 2, 3, 1) * 255).round().numpy().astype(int)).max() <= 1
    for args, msg in ((["--capsule", "4"], "--capsule 4 is out of range"),
                      (["--capsule", "-1"], "out of range"),
                      (["--capsule", "1", "--class", "1"], "not several")):
        assert main(["sample", str(reference), "--n", "2", "--out", str(tmp_path / "x.npz"), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, err
    assert not (tmp_path / "x.npz").exists()


def test_capsule_option_on_a_family_without_capsules_is_one_line(tmp_path, capsys):
    run = tmp_path / "gan"
    assert main(["train", "dcgan", "--data", "digits", "--steps", "1", "--batch-size", "16", "--no-progress",
                 "--out", str(run), "--set", "g_width=8", "--set", "g_channels=16,8,8,3", "--set", "d_width=8",
                 "--set", "n_fixed=4", "--set", "eval_n=16", "--set", "eval_limit=16"]) == 0
    capsys.readouterr()
    for args in (["--capsule", "0"], ["--domain", "restricted"]):
        assert main(["sample", str(run), "--n", "2", "--out", str(tmp_path / "x.npz"), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "has no code capsules" in err and "poe" in err


# ----------------------------------------------------------------------------- evaluation
def test_evaluate_changes_nothing_and_reports_each_trained_stage(reference):
    opened = open_run(reference)
    task = opened.task
    batch = opened.test_batch(60)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    a, b = task.evaluate(batch), task.evaluate(batch)
    assert a == b and a["n"] == 40
    for k, v in task.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert 0 <= a["negative_full"] <= 1 and 0 <= a["negative_restricted"] <= 1
    assert 0 < a["code_resultant"] <= 1 and a["mean_capsule_error"] > 0
    task.model.stage_steps.copy_(torch.tensor([6, 3, 6, 0]))       # as if stopped before U
    c = task.evaluate(batch)
    assert "w_recon" in c and "u_recon" not in c and "negative_full" not in c
    assert c["w_recon"] == a["w_recon"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private evaluator cache (the digits evaluator trains here in ~5 s), never the user's."""
    monkeypatch.setenv("CAPSGEN_CACHE", str(tmp_path / "cache"))


def test_eval_command_measures_samples(reference, cache, capsys):
    assert main(["eval", str(reference), "--n", "20"]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[0])
    assert res["capabilities"] == ["generate", "encode"] and "fid" in res["generate"]["samples"]
    assert "negative_restricted" in res["figures"]


@pytest.mark.slow
def test_two_processes_give_the_weights_of_one_process(tmp_path):
    """dW, dU and the running means are averaged over processes (all_mean), the longest capsule
    is their maximum: under torchrun W, U and the statistics follow the one-process run (no
    dropout, which each process draws for itself)."""
    from tests.conftest import run_cli

    args = ["train", "poe", "--data", "digits", "--batch-size", "32", "--seed", "3", "--no-progress",
            *TINY, "--set", "dropout=0"]
    one, two = tmp_path / "one", tmp_path / "two"
    r = run_cli([*args, "--out", str(one)])
    assert r.returncode == 0, r.stderr
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "capsgen", *args, "--out", str(two)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    a, b = checkpoint(one), checkpoint(two)
    for k in ("encoder_weight", "decoder_weight", "capsule_mean", "max_length", "code_mean", "directions"):
        diff = (a[f"module.model.capsules.{k}"].double() - b[f"module.model.capsules.{k}"].double()).abs().max().item()
        scale = a[f"module.model.capsules.{k}"].double().abs().max().item()
        assert diff <= 1e-3 * scale, (k, diff, scale)
    assert torch.equal(a["module.model.stage_steps"], b["module.model.stage_steps"])
