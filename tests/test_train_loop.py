"""The generic loop: checkpoints, resume after SIGKILL / Ctrl-C, metrics, run-folder safety."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from capsgen.errors import CapsgenError
from capsgen.train.checkpoint import read_checkpoint, save_checkpoint, load_checkpoint
from tests.conftest import TINY_CAPSNET, run_cli

TRAIN = ["train", "capsnet", "--data", "digits", "--batch-size", "16", "--seed", "3",
         "--no-progress", "--set", "threads=1", "--set", "log_every=1", *TINY_CAPSNET]


def weights(run: Path) -> dict[str, torch.Tensor]:
    tensors, meta = read_checkpoint(run / "checkpoints" / "last.safetensors")
    return tensors


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = weights(a), weights(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        if k.startswith(("module.", "optim.")):
            assert torch.equal(ta[k], tb[k]), f"{k} differs"


def start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # A shell without job control starts background jobs (`make test &`) with SIGINT ignored,
    # and Python keeps an inherited SIG_IGN: give the child the terminal's default so that
    # SIGINT here means Ctrl-C, whatever started pytest.
    return subprocess.Popen([sys.executable, "-m", "capsgen", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_checkpoint(run: Path, proc: subprocess.Popen, min_step: int) -> None:
    """Block until the run has a 'last' checkpoint and has logged at least ``min_step``."""
    deadline = time.time() + 240
    while time.time() < deadline:
        assert proc.poll() is None, f"run ended before it could be stopped: {proc.stderr.read()}"
        if (run / "checkpoints" / "last.safetensors").exists() and (run / "metrics.jsonl").exists():
            steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()
                     if l.endswith("}")]
            if steps and max(steps) >= min_step:
                return
        time.sleep(0.01)
    raise AssertionError("run made no progress")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    r = run_cli([*TRAIN, "--steps", "300", "--set", "checkpoint_every=7", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted(tmp_path, reference_run):
    run = tmp_path / "run"
    proc = start([*TRAIN, "--steps", "300", "--set", "checkpoint_every=7", "--out", str(run)])
    wait_for_checkpoint(run, proc, min_step=12)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = read_checkpoint(run / "checkpoints" / "last.safetensors")[1]["state"]["step"]
    assert 7 <= killed_at < 300
    r = run_cli(["train", "--resume", str(run), "--no-progress"])
    assert r.returncode == 0, r.stderr
    assert_same_weights(run, reference_run)
    # metrics after the resume point were redone, not duplicated
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()
             if '"train"' in l]
    assert steps == sorted(set(steps)) and steps[-1] == 300


@pytest.mark.slow
def test_ctrl_c_saves_checkpoint_and_resume_matches(tmp_path, reference_run):
    run = tmp_path / "run"
    proc = start([*TRAIN, "--steps", "300", "--set", "checkpoint_every=1000", "--out", str(run)])
    # no periodic checkpoint: only the interrupt handler can have written one
    deadline = time.time() + 240
    while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 20:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "--resume" in err
    assert "Traceback" not in err
    stopped = read_checkpoint(run / "checkpoints" / "last.safetensors")[1]["state"]["step"]
    assert 20 <= stopped < 300
    r = run_cli(["train", "--resume", str(run), "--no-progress"])
    assert r.returncode == 0, r.stderr
    assert_same_weights(run, reference_run)


@pytest.mark.slow
def test_resume_can_extend_budget(tmp_path):
    run = tmp_path / "run"
    assert run_cli([*TRAIN, "--steps", "10", "--out", str(run)]).returncode == 0
    r = run_cli(["train", "--resume", str(run), "--steps", "15", "--no-progress"])
    assert r.returncode == 0, r.stderr
    assert read_checkpoint(run / "checkpoints" / "last.safetensors")[1]["state"]["step"] == 15
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 15


@pytest.mark.slow
def test_run_folder_contents(reference_run):
    cfg = json.loads((reference_run / "config.json").read_text())
    assert cfg["train"]["family"] == "capsnet" and cfg["model"]["conv_channels"] == 16
    rows = [json.loads(l) for l in (reference_run / "metrics.jsonl").read_text().splitlines()]
    assert {"train", "test"} <= {r["split"] for r in rows}
    assert (reference_run / "checkpoints" / "best.safetensors").exists()
    assert list((reference_run / "tb").glob("events.out.tfevents.*"))
    for png in ("curves.png", "reconstructions.png"):
        assert (reference_run / "figures" / png).stat().st_size > 0
    assert "test_error" in (reference_run / "report.md").read_text()


def test_checkpoint_roundtrip_is_pickle_free_and_atomic(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"m": model}, {"m": opt}, {"step": 7})
    raw = path.read_bytes()
    assert b"\x80\x04" not in raw[:8] and raw[8:9] == b"{"   # safetensors header, not a pickle
    rnd = torch.rand(3)  # consume RNG; loading restores it
    model2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt2 = torch.optim.Adam(model2.parameters(), 1e-2)
    assert load_checkpoint(path, {"m": model2}, {"m": opt2}) == {"step": 7}
    assert torch.equal(torch.rand(3), rnd)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for pid in s1["state"]:
        for k in s1["state"][pid]:
            assert torch.equal(torch.as_tensor(s1["state"][pid][k]), torch.as_tensor(s2["state"][pid][k]))
    assert not list(tmp_path.glob(".*.tmp"))
    # a truncated checkpoint is refused with one line, not a traceback
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CapsgenError, match="not a readable capsgen checkpoint"):
        load_checkpoint(path, {"m": model2})


@pytest.mark.slow
def test_diverging_loss_stops_and_keeps_last_good(tmp_path):
    run = tmp_path / "run"
    r = run_cli([*TRAIN, "--steps", "200", "--set", "checkpoint_every=2", "--set", "lr=1e12",
                 "--set", "recon_weight=1e9", "--out", str(run)])
    assert r.returncode == 2
    assert "non-finite" in r.stderr and "Traceback" not in r.stderr
    tensors, meta = read_checkpoint(run / "checkpoints" / "last.safetensors")
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("module."))


@pytest.mark.slow
def test_time_budget_stops_evaluates_and_saves(tmp_path):
    out = tmp_path / "run"
    t0 = time.time()
    r = run_cli([*TRAIN, "--minutes", "0.05", "--set", "checkpoint_every=100000", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert time.time() - t0 < 120
    final = json.loads(r.stdout.strip().splitlines()[-1])
    assert "test_error" in final
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    last_step = max(row["step"] for row in rows)
    assert last_step > 1 and rows[-1]["split"] == "test"
    tensors, meta = read_checkpoint(out / "checkpoints" / "last.safetensors")
    assert meta["state"]["step"] == last_step and meta["state"]["elapsed"] >= 3.0
    # The budget counts the run's whole time: a resume with the same budget has nothing left to do.
    r = run_cli(["train", "--resume", str(out), "--no-progress"])
    assert r.returncode == 0, r.stderr
    assert "time budget of 0.05 minutes is already spent" in r.stdout
    r = run_cli(["train", "--resume", str(out), "--no-progress", "--minutes", "0"])
    assert r.returncode == 2 and "minutes" in r.stderr and "must be > 0" in r.stderr
