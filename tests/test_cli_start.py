"""What a newcomer sees around a run: a start header before the wait, --version, --config FILE.toml
equal to the same --set lines, and export writing the weights alone."""
from __future__ import annotations

import json

from safetensors import safe_open

from capsgen import __version__
from capsgen.cli import main
from capsgen.train.checkpoint import read_checkpoint
from tests.test_cli_outputs import VCAPS_TINY
from tests.test_runs_lifecycle import CAPSNET


def test_train_prints_a_start_header_with_what_the_wait_is_for(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [a for a in VCAPS_TINY if a != "--no-progress"]
    assert main([*argv, "--device", "cpu", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    header = next(line for line in err.splitlines() if line.startswith("capsgen: training"))
    for part in ("vcaps on digits", "parameters", "device cpu", "1 thread", "batch 16", "4 steps", f"into {out}"):
        assert part in header, (part, header)
    assert "final evaluation" in err and "writing figures and report" in err


def test_minutes_bars_show_the_time_left(tmp_path, capsys):
    argv = [a for a in VCAPS_TINY if a not in ("--no-progress",)]
    argv = argv[:argv.index("--steps")] + argv[argv.index("--steps") + 2:]
    assert main([*argv, "--minutes", "0.02", "--out", str(tmp_path / "run")]) == 0
    assert " left" in capsys.readouterr().err


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.strip() == f"capsgen {__version__}"


def test_a_toml_config_equals_the_same_set_lines(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text('steps = 3\n[train]\nlog_every = 1\n[model]\ndecoder_hidden = [32, 64]\nrouting_iterations = 2\n'
                    'lr = 2e-3\n')
    sets = ["--set", "steps=3", "--set", "train.log_every=1", "--set", "model.decoder_hidden=32,64",
            "--set", "model.routing_iterations=2", "--set", "model.lr=0.002"]
    assert main([*CAPSNET, "--config", str(toml), "--out", str(tmp_path / "a")]) == 0
    assert main([*CAPSNET, *sets, "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / n / "config.json").read_text()) for n in ("a", "b"))
    assert (a["train"], a["model"]) == (b["train"], b["model"])
    assert a["model"]["lr"] == 2e-3 and a["train"]["steps"] == 3
    capsys.readouterr()
    for text, expected in (("[optim]\nlr = 1\n", "unknown table [optim]"), ("steps = \n", "not valid TOML"),
                           ("[model]\nlr = {a = 1}\n", "must be a number")):
        toml.write_text(text)
        assert main([*CAPSNET, "--config", str(toml), "--out", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err and not (tmp_path / "c").exists()


def test_export_writes_the_weights_alone(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*VCAPS_TINY, "--out", str(run)]) == 0
    capsys.readouterr()
    out = tmp_path / "model.safetensors"
    assert main(["export", str(run), "--out", str(out)]) == 0
    ckpt, _ = read_checkpoint(run / "checkpoints" / "last.safetensors")
    with safe_open(str(out), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        exported = {k: f.get_tensor(k) for k in keys}
    weights = {k.removeprefix("module."): v for k, v in ckpt.items() if k.startswith("module.")}
    assert keys == set(weights) and all((exported[k] == weights[k]).all() for k in keys)
    assert not any(k.startswith(("optim.", "rng.", "extra.")) for k in keys)
    assert meta["family"] == "vcaps" and json.loads(meta["model"])["caps_dim"] == 4
    assert out.stat().st_size < (run / "checkpoints" / "last.safetensors").stat().st_size
