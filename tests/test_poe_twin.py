"""The poe family's non-capsule twin (``capsgen train poe --twin``): the same autoencoder, schedule and
run length with a PPCA mixture fitted by EM in place of W, routing and U; training, bit-identical
resume inside an EM sweep, sampling by component and domain, eval, per-component purity as
``reproduce poe`` computes it for capsules, and the refusals."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from capsgen.cli import main
from capsgen.models.poe.task import PoETask
from capsgen.nn.twins_poe import chi2_quantile
from capsgen.reproduce.poe.spec import Settings
from capsgen.runs import open_run
from capsgen.train.checkpoint import read_checkpoint
from tests.test_poe_task import assert_same_run, checkpoint, rows
from tests.test_reproduce_poe import cache  # noqa: F401  (the module-wide private evaluator cache)

# The tiny poe of test_poe_task (8x8 digits, 3x3 kernels: 64 features; 4 capsules of 6-D = 4
# components of 6-D) without its capsule-only settings. EM steps 9..20: M-steps after steps 12,
# 16, 20 (em_batches 4) and at the last step, 20.
TINY = ["--set", "threads=1", "--set", "ae_kernel=3", "--set", "ae_channels=16", "--set", "code_capsules=4",
        "--set", "code_dim=6", "--set", "ae_lr=3e-3", "--set", "ae_steps=6", "--set", "stat_steps=3",
        "--set", "w_steps=6", "--set", "u_steps=6", "--set", "eval_n=40",
        "--set", "log_every=1", "--set", "checkpoint_every=4", "--set", "eval_every=5"]
TWIN = ["--twin", "--set", "em_batches=4"]
CAPSULE = ["--set", "init_std=0.1", "--set", "w_lr=20"]      # test_poe_task's tiny capsule model
TOTAL = 21


def train(out: Path, *args: str, twin: bool = True) -> int:
    return main(["train", "poe", *(TWIN if twin else CAPSULE), "--data", "digits", "--batch-size", "32",
                 "--seed", "3", "--no-progress", "--out", str(out), *TINY, *args])


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("twin") / "ref"
    assert train(run) == 0
    return run


@pytest.fixture(scope="module")
def capsule(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("caps") / "ref"
    assert train(run, twin=False) == 0
    return run


def test_twin_trains_the_same_schedule_and_autoencoder_and_fits_the_mixture(twin, capsule):
    train_rows = rows(twin, "train")
    assert [r["stage"] for r in train_rows] == [0.0] * 6 + [1.0] * 3 + [2.0] * 6 + [3.0] * 6
    assert all("em_loglik" in r for r in train_rows[9:])
    assert [r["step"] for r in train_rows if "em_sweep_loglik" in r] == [13, 17, 21]
    t, c = checkpoint(twin), checkpoint(capsule)
    assert t["module.model.stage_steps"].tolist() == [6, 3, 6, 6]
    assert t["module.model.mixture.em_rounds"].item() == 3 and bool(t["module.model.mixture.fitted"])
    assert "extra.em_count" not in t and t["extra.em_seen"].item() == 0    # no sums left after the last M-step
    # the autoencoder trains exactly as the capsule model's: same initial weights, dropout, data order
    for k in c:
        if k.startswith("module.model.ae."):
            assert torch.equal(t[k], c[k]), k
    assert read_checkpoint(twin / "checkpoints" / "last.safetensors")[1]["state"]["step"] == TOTAL
    assert json.loads((twin / "config.json").read_text())["model"]["twin"] is True


@pytest.mark.parametrize("stop", [10, 14, 19])     # inside the first sweep, inside the second, in u
def test_ctrl_c_inside_an_em_sweep_resumes_to_identical_tensors(twin, tmp_path, monkeypatch, stop):
    run = tmp_path / "run"
    original = PoETask.after_step

    def interrupt(self, step, r, writer=None):
        original(self, step, r, writer)
        if step == stop:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(PoETask, "after_step", interrupt)
    assert train(run) == 130
    monkeypatch.setattr(PoETask, "after_step", original)
    saved = checkpoint(run)
    assert saved["extra.em_seen"].item() > 0 and "extra.em_cross" in saved      # mid-sweep sums were saved
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert_same_run(twin, run)


def test_sample_by_component_and_domain(twin, tmp_path, capsys):
    task = open_run(twin).task
    mix = task.twin
    g = lambda: torch.Generator().manual_seed(4)
    full, restricted, negated = (task.capsule_grid(3, d, g(), negate=n) for d, n in
                                 (("full", False), ("restricted", False), ("full", True)))
    assert full.shape == (3 * 4, 1, 8, 8) and 0 <= float(full.min()) and float(full.max()) <= 1
    assert not torch.equal(full, restricted) and not torch.equal(full, negated)
    # restricted = the component's noise-free subspace, the latent clamped into the half-mass ball
    z = torch.randn(5, 6, generator=g())
    core = mix.features_of(z, torch.randn(5, 64), torch.full((5,), 1), True)
    coef = torch.linalg.lstsq(mix.factors[1], (core - mix.means[1]).T).solution.T
    assert torch.allclose(mix.means[1] + coef @ mix.factors[1].T, core, atol=1e-4)
    assert float(coef.norm(dim=1).max()) <= chi2_quantile(6, 0.5) ** 0.5 + 1e-3
    a = task.sample_capsules(6, 2, "restricted", torch.Generator().manual_seed(1))
    assert torch.equal(a, task.sample_capsules(6, 2, "restricted", torch.Generator().manual_seed(1)))
    out = tmp_path / "s.npz"
    assert main(["sample", str(twin), "--n", "5", "--out", str(out), "--capsule", "3", "--domain", "restricted"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["capsule"] == 3 and res["domain"] == "restricted" and out.is_file()
    assert main(["sample", str(twin), "--n", "5", "--out", str(out), "--capsule", "0", "--domain", "full",
                 "--force"]) == 0
    capsys.readouterr()
    assert main(["sample", str(twin), "--n", "2", "--out", str(tmp_path / "x.npz"), "--capsule", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--capsule 4 is out of range" in err
    figs = {p.name for p in (twin / "figures").iterdir()}
    assert {"reconstructions.png", "capsule_grid_full.png", "capsule_grid_restricted.png",
            "capsule_grid_negated.png", "interpolation.png", "poe_curves.png"} <= figs


def test_eval_gives_the_capsule_runs_shared_metrics(twin, capsule, cache, capsys):
    got = {}
    for name, run in (("twin", twin), ("capsule", capsule)):
        assert main(["eval", str(run), "--n", "20"]) == 0
        got[name] = json.loads(capsys.readouterr().out.splitlines()[0])
    assert got["twin"]["capabilities"] == got["capsule"]["capabilities"] == ["generate", "encode"]
    assert set(got["twin"]["generate"]["samples"]) == set(got["capsule"]["generate"]["samples"])
    shared = {"n", "stage", "ae_mse", "pixel_mse", "negative_full", "negative_restricted"}
    assert shared <= set(got["capsule"]["figures"]) and set(got["twin"]["figures"]) == shared | {"mixture_loglik"}


def test_per_component_purity_is_measured_as_for_capsules(twin, cache, tmp_path):
    from capsgen.data import load_split
    from capsgen.eval.evaluator import get_evaluator
    from capsgen.reproduce.poe.run import measure_run

    s = Settings(data="digits", budget=1.0, out=str(tmp_path), per_capsule=6)
    m = measure_run(s, twin, "twin", tmp_path, get_evaluator("digits"), load_split("digits", "test").to_batch())
    for domain in ("full", "restricted"):
        p = m[domain]["purity"]
        assert len(p["per_capsule"]) == 4 and all(0 < c["purity"] <= 1 for c in p["per_capsule"])
        assert m[domain]["metrics"]["counts"]["samples"] == 4 * 6
    assert (tmp_path / m["grids"]["restricted"]).is_file()


def test_a_twin_stopped_before_its_first_m_step_cannot_sample(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(run, "--minutes", "1e-9") == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "s.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no fitted mixture yet" in err


@pytest.mark.parametrize("args,message", [
    (["--set", "w_lr=20"], "--set model.w_lr conflicts with --twin"),
    (["--set", "model.centre_capsules=false"], "--set model.centre_capsules conflicts with --twin"),
])
def test_capsule_only_settings_on_the_twin_are_refused(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert train(out, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_em_batches_on_the_capsule_model_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "poe", "--data", "digits", "--out", str(out), "--set", "ae_kernel=3",
                 "--set", "em_batches=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.em_batches cannot take effect" in err[0], err
    assert not out.exists()
