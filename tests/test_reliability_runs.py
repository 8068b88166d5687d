"""Bad input and faults around runs (reliability classes 1-4, 7 and 8 of docs/reliability.md).

Fast cases run in-process through ``capsgen.cli.main``: every refusal is one line, exit 2, and
leaves the file system exactly as it was. Signals at random moments spawn real processes and
compare every tensor with an uninterrupted run; they are marked slow.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from capsgen.cli import main
from capsgen.train.checkpoint import read_checkpoint
from tests.conftest import TINY_CAPSNET, run_cli
from tests.test_train_loop import start

TRAIN = ["train", "capsnet", "--data", "digits", "--batch-size", "16", "--seed", "3", "--no-progress",
         "--set", "threads=1", *TINY_CAPSNET]
TINY_GAN = ["train", "capsulegan", "--data", "digits", "--batch-size", "16", "--seed", "2", "--no-progress",
            "--set", "threads=1", "--set", "g_width=8", "--set", "d_conv_channels=8", "--set", "d_conv_kernel=3",
            "--set", "d_primary_caps=2", "--set", "d_primary_kernel=3", "--set", "d_caps_dim=4",
            "--set", "sample_every=0", "--set", "eval_n=32", "--set", "log_every=1"]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its SHA-256 (to prove nothing was touched)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("capsgen: error:") and "Traceback" not in err, err
    return err


# ------------------------------------------------------------ class 4: numbers refused up front
@pytest.mark.parametrize("extra, expected", [
    (["--batch-size", "0"], "must be >= 1"),
    (["--batch-size", "-4"], "must be >= 1"),
    (["--steps", "0"], "must be >= 1"),
    (["--steps", "-5"], "must be >= 1"),
    (["--epochs", "0"], "must be > 0"),
    (["--epochs", "-1"], "must be > 0"),
    (["--minutes", "0"], "must be > 0"),
    (["--minutes", "-3"], "must be > 0"),
    (["--minutes", "nan"], "not a valid float"),
    (["--seed", "-1"], "must be >= 0"),
    (["--set", "log_every=0"], "log_every"),
    (["--set", "checkpoint_every=0"], "checkpoint_every"),
    (["--set", "eval_limit=0"], "eval_limit"),
    (["--set", "eval_every=-1"], "eval_every"),
    (["--set", "threads=-2"], "threads"),
    (["--set", "threads=0"], "threads"),
    (["--set", "routing_iterations=0"], "routing_iterations"),
    (["--set", "conv_kernel=0"], "conv_kernel"),
    (["--set", "primary_kernel=0"], "primary_kernel"),
    (["--set", "lr=0"], "lr"),
    (["--set", "lr=inf"], "lr"),
    (["--set", "m_pos=2"], "m_pos"),
    (["--set", "squash=nosuch"], "choose one of"),
    (["--set", "decoder_hidden=512,0"], "decoder_hidden"),
    (["--precision", "fp8"], "invalid choice"),
    (["--device", "cuda:7"], "--device"),
    (["--device", "tpu"], "--device"),
])
def test_bad_numbers_are_refused_before_any_file(tmp_path, capsys, extra, expected):
    out = tmp_path / "run"
    budget = [] if any(a in extra for a in ("--steps", "--epochs")) else ["--steps", "3"]
    err = one_line_error(capsys, [*TRAIN, *budget, "--out", str(out), *extra])
    assert expected in err
    assert not out.exists()


@pytest.mark.parametrize("argv, expected", [
    (["--set", "model.discriminator=caps1", "--set", "model.d_routing=5"], "single parent capsule"),
    (["--set", "model.discriminator=conv"], "not one of this family's"),
    (["--set", "model.d_grad_through_routing=false"], "single parent capsule"),
])
def test_settings_that_cannot_take_effect_are_refused(tmp_path, capsys, argv, expected):
    out = tmp_path / "gan"
    err = one_line_error(capsys, [*TINY_GAN, "--steps", "2", "--out", str(out), *argv])
    assert expected in err and not out.exists()


@pytest.mark.parametrize("argv", [
    ["eval", "RUN", "--n", "0"], ["eval", "RUN", "--n", "-5"], ["sample", "RUN", "--n", "0", "--out", "OUT.npz"],
    ["interpolate", "RUN", "--rows", "0", "--out", "OUT.png"], ["eval", "RUN", "--checkpoint", "nosuch"],
])
def test_bad_numbers_on_commands_that_read_runs(trained_run, tmp_path, capsys, argv):
    argv = [a.replace("RUN", str(trained_run)).replace("OUT", str(tmp_path / "o")) for a in argv]
    before = snapshot(trained_run)
    one_line_error(capsys, argv)
    assert snapshot(trained_run) == before and not list(tmp_path.glob("o.*"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("r") / "run"
    assert main([*TRAIN, "--steps", "4", "--set", "checkpoint_every=2", "--out", str(out)]) == 0
    return out


# -------------------------------------------------------- class 2: never write into user folders
@pytest.mark.parametrize("content", [
    {"report.md": "my notes"}, {"metrics.jsonl": '{"mine": 1}\n'}, {"figures/plot.png": "png"},
    {".hidden": "x"}, {"checkpoints/": None}, {"sub/deeper/file.txt": "x"},
])
def test_out_folder_with_user_files_is_refused_untouched(tmp_path, capsys, content):
    out = tmp_path / "mine"
    out.mkdir()
    for rel, text in content.items():
        p = out / rel
        if text is None:
            p.mkdir(parents=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    before = snapshot(out)
    err = one_line_error(capsys, [*TRAIN, "--steps", "2", "--out", str(out)])
    assert "did not create" in err
    assert snapshot(out) == before


def test_out_that_is_a_file_or_under_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("keep")
    assert "not a folder" in one_line_error(capsys, [*TRAIN, "--steps", "2", "--out", str(f)])
    assert "not a folder" in one_line_error(capsys, [*TRAIN, "--steps", "2", "--out", str(f / "run")])
    assert f.read_text() == "keep"


def test_empty_out_folder_is_fine_and_run_files_are_private(tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    old = os.umask(0o000)
    try:
        assert main([*TRAIN, "--steps", "2", "--out", str(out)]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert modes and all(m == 0o600 for m in modes.values()), modes


def test_reproduce_refuses_a_foreign_folder(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("mine")
    err = one_line_error(capsys, ["reproduce", "capsulegan", "--data", "digits", "--budget", "0.01",
                                  "--out", str(out)])
    assert "did not create" in err and (out / "report.md").read_text() == "mine"


# ---------------------------------------------- class 3: no silent restarts, no persisted mistakes
@pytest.mark.parametrize("extra", [["--steps", "-5"], ["--steps", "0"], ["--minutes", "0"], ["--epochs", "-1"],
                                   ["--steps", "3", "--device", "cuda:3"]])
def test_bad_resume_budget_changes_nothing(trained_run, capsys, extra):
    before = snapshot(trained_run)
    one_line_error(capsys, ["train", "--resume", str(trained_run), "--no-progress", *extra])
    assert snapshot(trained_run) == before


def test_resume_without_last_checkpoint_refuses_and_keeps_everything(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--steps", "4", "--set", "checkpoint_every=2", "--out", str(out)]) == 0
    capsys.readouterr()
    (out / "checkpoints" / "last.safetensors").unlink()
    before = snapshot(out)
    err = one_line_error(capsys, ["train", "--resume", str(out), "--steps", "6", "--no-progress"])
    assert "missing" in err and "cannot be resumed" in err
    assert snapshot(out) == before


@pytest.mark.parametrize("damage", ["truncate", "flip", "config-type", "config-list", "config-missing"])
def test_resume_of_a_damaged_run_refuses_and_keeps_everything(tmp_path, capsys, damage):
    out = tmp_path / "run"
    assert main([*TRAIN, "--steps", "4", "--set", "checkpoint_every=2", "--out", str(out)]) == 0
    capsys.readouterr()
    last, cfg = out / "checkpoints" / "last.safetensors", out / "config.json"
    raw = last.read_bytes()
    if damage == "truncate":
        last.write_bytes(raw[: len(raw) // 3])
    elif damage == "flip":
        b = bytearray(raw)
        b[-100] ^= 0xFF      # inside the tensor data
        last.write_bytes(bytes(b))
    elif damage == "config-type":
        c = json.loads(cfg.read_text())
        c["train"]["batch_size"] = "sixteen"
        cfg.write_text(json.dumps(c))
    elif damage == "config-list":
        cfg.write_text("[1, 2, 3]")
    else:
        c = json.loads(cfg.read_text())
        del c["model"]
        cfg.write_text(json.dumps(c))
    before = snapshot(out)
    one_line_error(capsys, ["train", "--resume", str(out), "--steps", "6", "--no-progress"])
    assert snapshot(out) == before


def test_resume_with_a_good_budget_after_a_refused_one_works(trained_run, capsys):
    one_line_error(capsys, ["train", "--resume", str(trained_run), "--steps", "-5", "--no-progress"])
    assert main(["train", "--resume", str(trained_run), "--no-progress"]) == 0


# -------------------------------------------------------------------- class 7: the file system
def test_unwritable_places_get_one_line(tmp_path, capsys):
    for out in ("/proc/capsgen-run", "/dev/null/run"):
        one_line_error(capsys, [*TRAIN, "--steps", "2", "--out", out])


def test_checkpoint_write_failing_mid_run_is_one_line_and_keeps_the_last(tmp_path, capsys, monkeypatch):
    import capsgen.train.loop as loop

    real, calls = loop.save_checkpoint, {"n": 0}

    def failing(path, *a, **kw):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *a, **kw)

    monkeypatch.setattr(loop, "save_checkpoint", failing)
    out = tmp_path / "run"
    err = one_line_error(capsys, [*TRAIN, "--steps", "10", "--set", "checkpoint_every=2", "--out", str(out)])
    assert "cannot write the checkpoint" in err and "--resume" in err
    assert read_checkpoint(out / "checkpoints" / "last.safetensors")[1]["state"]["step"] == 2


# ------------------------------------------------------------- class 8: advice that can be followed
def test_divergence_advice_names_a_new_run_and_keeps_finite_weights(tmp_path, capsys):
    out = tmp_path / "run"
    err = one_line_error(capsys, [*TRAIN, "--steps", "200", "--set", "checkpoint_every=1", "--set", "lr=1e12",
                                  "--set", "recon_weight=1e9", "--out", str(out)])
    assert "new run" in err and "--set model.lr=" in err
    tensors, _ = read_checkpoint(out / "checkpoints" / "last.safetensors")
    for k, t in tensors.items():
        if k.startswith("module."):
            assert torch.isfinite(t).all() and t.abs().max() < 1e30, k


# --------------------------------------------- class 1: signals at random moments, then --resume
def _reference(tmp_path_factory, argv: list[str], name: str) -> Path:
    out = tmp_path_factory.mktemp(name) / "run"
    r = run_cli([*argv, "--out", str(out)])
    assert r.returncode == 0, r.stderr
    return out


def _all_tensors(run: Path) -> dict[str, torch.Tensor]:
    tensors, _ = read_checkpoint(run / "checkpoints" / "last.safetensors")
    return {k: v for k, v in tensors.items() if not k.startswith("rng.")}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["capsnet", "capsulegan"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_at_random_moments_then_resume_is_bit_identical(tmp_path_factory, family, sig):
    argv = [*(TRAIN if family == "capsnet" else TINY_GAN), "--steps", "120", "--set", "checkpoint_every=1000",
            "--set", "log_every=1"]
    ref = _reference(tmp_path_factory, argv, f"ref-{family}")
    rng = random.Random(f"{family}-{sig}")
    interrupted = 0
    # A delay near the top of the range can land after training, while the run writes its figures,
    # or after it has finished: two of three draws did in 1 of 9 repetitions here. So draw until
    # three runs were interrupted, at most six.
    for trial in range(6):
        if interrupted == 3:
            break
        run = tmp_path_factory.mktemp(f"{family}-{int(sig)}-{trial}") / "run"
        proc = start([*argv, "--out", str(run)])
        deadline = time.time() + 240
        while not (run / "metrics.jsonl").exists():
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 1.5))     # anywhere inside a step, an eval or a log write
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=240)
        if proc.returncode == 0:
            continue                           # it finished first: nothing to resume
        assert proc.returncode == 130 and "Traceback" not in err, err
        interrupted += 1
        stopped = read_checkpoint(run / "checkpoints" / "last.safetensors")[1]["state"]["step"]
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert any(r["split"] == "train" and r["step"] == stopped for r in rows), "the cut step lost its row"
        r = run_cli(["train", "--resume", str(run), "--no-progress"])
        assert r.returncode == 0, r.stderr
        a, b = _all_tensors(run), _all_tensors(ref)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{family} {sig!r} trial {trial}: {k} differs after resume"
    assert interrupted >= 2, "the runs finished before the signal: lengthen them"


@pytest.mark.slow
def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    for delay in (0.3, 0.8, 1.5):
        run = tmp_path / f"run{delay}"
        proc = start([*TRAIN, "--steps", "50", "--out", str(run)])
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, err
        assert len([line for line in err.splitlines() if line.startswith("capsgen")]) <= 2
        if proc.returncode != 0 and run.exists():
            # whatever is left can be resumed or is nothing at all
            assert not any(run.iterdir()) or (run / "checkpoints" / "last.safetensors").exists()


def test_mixed_image_sizes_advice_can_be_followed(tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "imgs"
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
        for k in range(12):
            side = 10 if k % 2 else 12
            Image.new("L", (side, side), color=40 * k % 255).save(data / cls / f"{k}.png")
    base = ["train", "example", "--data", "folder", "--data-dir", str(data), "--batch-size", "4", "--steps", "2",
            "--no-progress"]
    from capsgen.models import FAMILIES
    from tests import example_family

    FAMILIES["example"] = example_family.FAMILY
    try:
        err = one_line_error(capsys, [*base, "--out", str(tmp_path / "r1")])
        assert "--set train.image_size=N" in err and not (tmp_path / "r1").exists()
        assert main([*base, "--set", "train.image_size=8", "--out", str(tmp_path / "r2")]) == 0
        assert json.loads((tmp_path / "r2" / "config.json").read_text())["data"]["shape"] == [1, 8, 8]
    finally:
        del FAMILIES["example"]
