"""A run's life as the docs promise it (docs/reliability.md, README "Run folders"): resuming a
finished run changes no metrics, an interruption outside the loop still names the resume command,
equal seeds give equal checkpoints down to the stored RNG states, tb/ is private from the start,
and bf16 on a CPU says it is slow."""
from __future__ import annotations

import json
import stat

import pytest
import torch

from capsgen.cli import main
from capsgen.models.poe.task import PoETask
from capsgen.models.vcaps.task import VCapsTask
from capsgen.train.checkpoint import read_checkpoint
from capsgen.train.rundir import RunDir
from tests.conftest import TINY_CAPSNET, run_cli
from tests.test_cli_outputs import VCAPS_TINY
from tests.test_poe_task import TINY as POE_TINY

CAPSNET = ["train", "capsnet", "--data", "digits", "--batch-size", "16", "--seed", "3", "--no-progress",
           "--set", "threads=1", *TINY_CAPSNET]
POE = ["train", "poe", "--data", "digits", "--batch-size", "16", "--seed", "0", "--no-progress", *POE_TINY]


def test_resume_of_a_finished_run_appends_no_second_test_row(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*CAPSNET, "--steps", "4", "--out", str(out)]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[-1])
    rows = (out / "metrics.jsonl").read_text()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    again = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (out / "metrics.jsonl").read_text() == rows
    assert again == first                       # the same final figures are still reported


@pytest.mark.parametrize("family, argv, task_cls", [("vcaps", [*VCAPS_TINY], VCapsTask),
                                                    ("poe", POE, PoETask)])
def test_an_interrupt_while_writing_figures_names_the_resume_command(tmp_path, capsys, monkeypatch, family,
                                                                      argv, task_cls):
    out = tmp_path / "run"

    def interrupted(self, out_dir, batch):
        raise KeyboardInterrupt   # what Ctrl-C does there: after the loop gave its handlers back

    with monkeypatch.context() as m:
        m.setattr(task_cls, "write_figures", interrupted)
        assert main([*argv, "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"capsgen train --resume {out}" in err, err
    assert stat.S_IMODE((out / "tb").stat().st_mode) == 0o700
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0   # the advice works: report written
    assert (out / "report.md").is_file()


def test_two_runs_of_a_seed_write_equal_checkpoints_including_rng_states(tmp_path):
    # Two processes, as two users' runs: torch 2.13, numpy and Python seed their global generators
    # from the OS at start-up (training never draws from them, so within one process they agree).
    for name in ("a", "b"):
        r = run_cli([*CAPSNET, "--steps", "3", "--out", str(tmp_path / name)])
        assert r.returncode == 0, r.stderr
    a, meta_a = read_checkpoint(tmp_path / "a" / "checkpoints" / "last.safetensors")
    b, meta_b = read_checkpoint(tmp_path / "b" / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys() and {"rng.torch", "rng.numpy"} <= a.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert meta_a["rng"] == meta_b["rng"]       # numpy's position and Python's state too


def test_tb_folder_is_private_from_the_start(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create({"capsgen": "test"})
    run.unlock()
    assert stat.S_IMODE(run.tb.stat().st_mode) == 0o700


def test_bf16_on_cpu_warns_in_one_line(tmp_path, capsys):
    assert main([*CAPSNET, "--steps", "1", "--precision", "bf16", "--device", "cpu",
                 "--out", str(tmp_path / "run")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "bf16" in warnings[0] and "slower than fp32" in warnings[0], warnings
    assert main([*CAPSNET, "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "fp32")]) == 0
    assert "warning" not in capsys.readouterr().err
