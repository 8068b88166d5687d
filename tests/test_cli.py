"""The command line as a user meets it: one-line errors, no corrupted run folders, eval."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from capsgen.cli import main
from tests.conftest import TINY_CAPSNET, run_cli


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("capsgen: error:") and "Traceback" not in err
    return err


@pytest.mark.parametrize("argv, expected", [
    (["train", "nosuchmodel"], "'capsnet'"),
    (["train", "capsnet", "--data", "nosuchdata"], "fashion-mnist"),
    (["train", "capsnet", "--data", "digits", "--bogus", "1"], "valid options for 'capsgen train': --batch-size"),
    (["train", "capsnet", "--data", "digits", "--set", "nosuchkey=1"], "valid keys: model.class_dim"),
    (["train", "capsnet", "--data", "digits", "--set", "routing_iterations=abc"], "not a valid int"),
    (["train", "capsnet", "--data", "mnist"], "--data-dir"),
    (["train", "capsnet", "--data", "digits"], "too small"),
    (["train"], "name a model"),
    (["eval", "/nonexistent/run"], "no such run folder"),
    (["nosuchcommand"], "invalid choice"),
])
def test_bad_input_gets_one_line(capsys, argv, expected):
    assert expected in one_line_error(capsys, argv)


def test_bad_input_never_creates_or_corrupts_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    one_line_error(capsys, ["train", "capsnet", "--data", "mnist", "--out", str(out)])
    assert not out.exists()
    one_line_error(capsys, ["train", "capsnet", "--data", "digits", "--batch-size", "100000",
                            "--out", str(out), *TINY_CAPSNET])
    assert not out.exists()


def test_train_eval_and_refuse_existing_run(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "capsnet", "--data", "digits", "--steps", "6", "--batch-size", "8", "--no-progress",
            "--out", str(out), *TINY_CAPSNET]
    assert main(argv) == 0
    capsys.readouterr()
    before = (out / "config.json").read_text(), (out / "checkpoints" / "last.safetensors").read_bytes()
    err = one_line_error(capsys, argv)
    assert "already holds a run" in err and "--resume" in err
    assert before == ((out / "config.json").read_text(), (out / "checkpoints" / "last.safetensors").read_bytes())
    err = one_line_error(capsys, ["train", "--resume", str(out), "--data", "digits"])
    assert "only --steps/--epochs" in err
    assert main(["eval", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    res = json.loads(lines[0])
    assert res["data"] == "digits" and res["capabilities"] == ["classify"]
    assert 0.0 <= res["classify"]["test_error"] <= 1.0 and res["classify"]["n"] == 359
    assert lines[2].startswith("test error:")


def test_console_script_entry_point():
    r = run_cli(["--help"])
    assert r.returncode == 0 and "train" in r.stdout and "demo" in r.stdout


def test_demo_trains_a_capsule_gan_and_writes_samples_curves_and_report(tmp_path):
    out = tmp_path / "demo"
    r = run_cli(["demo", "--out", str(out), "--steps", "3", "--no-verdict"], timeout=120)
    assert r.returncode == 0, r.stderr
    assert "capsule GAN" in r.stdout and "report:" in r.stdout and "samples.png" in r.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["family"] == "capsulegan" and config["train"]["data"] == "mnist-5k"
    assert config["model"]["preset"] == "trunk-hinge" and config["model"]["discriminator"] == "trunk-caps"
    assert config["train"]["batch_size"] == 32
    assert config["model"]["lr"] == config["model"]["lr_d"] == 8e-4
    figs = out / "figures"
    for png in ("samples.png", "gan_curves.png", "interpolation.png"):
        assert (figs / png).stat().st_size > 1000
    assert sorted(p.name for p in (figs / "samples").iterdir()) == [f"step_00000{k}.png" for k in (1, 2, 3)]
    report = (out / "report.md").read_text()
    assert "capsulegan" in report and "mnist-5k" in report
    for ref in ("figures/samples.png", "figures/gan_curves.png", "figures/samples/step_000003.png"):
        assert f"]({ref})" in report
    for figure in ("d_acc", "d_real", "d_fake"):   # the final discriminator figures
        assert f"| {figure} |" in report


def test_demo_configs_take_extra_settings_last():
    """benchmarks/demo_trials.py tries levers on the demo's own configuration: extras win over it."""
    from capsgen.cli.train import DEMO_STEPS, demo_configs

    tcfg, mcfg = demo_configs(DEMO_STEPS)
    assert (tcfg.steps, tcfg.seed, tcfg.data, tcfg.eval_every, mcfg.sample_every) == (5000, 0, "mnist-5k", 833, 833)
    assert (mcfg.lr, mcfg.lr_d, mcfg.d_minibatch_std) == (8e-4, 8e-4, 0)      # the demo's own, over the preset's
    tcfg, mcfg = demo_configs(600, ("model.lr=6e-4", "model.ema=0.99"), seed=3)
    assert (tcfg.steps, tcfg.seed, tcfg.eval_every, mcfg.lr, mcfg.lr_d, mcfg.ema) == (600, 3, 100, 6e-4, 8e-4, 0.99)


@pytest.mark.parametrize("argv, expected", [
    (["--trial", "a", "model.lr=-1"], "model.lr = -1.0 must be > 0"),
    (["--trial", "a", "--trial", "a"], "trial names must be distinct"),
    (["--trial", "a", "model.nosuch=1"], "unknown --set key 'model.nosuch'"),
    (["--trial", "a", "--steps", "0"], "--steps must be >= 1"),
    (["--trial", "ok", "--trial", "made"], "exists: a trial is trained once"),
    (["--trial", "a", "--out", "FILE"], "is a file, not a folder"),
])
def test_demo_trials_refuse_bad_input_in_one_line_before_training(tmp_path, argv, expected):
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "trials"
    (out / "made-s0").mkdir(parents=True)
    (tmp_path / "FILE").write_text("mine")
    argv = [str(tmp_path / "FILE") if a == "FILE" else a for a in argv]
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "demo_trials.py"), "--out", str(out), *argv],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and expected in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["made-s0"]          # nothing trained or written
    assert (tmp_path / "FILE").read_text() == "mine"


@pytest.mark.parametrize("wrapped", [False, True])
def test_an_interrupt_wrapped_by_an_import_is_one_line(monkeypatch, capsys, wrapped):
    """Python 3.11 turns a Ctrl-C inside a class's __set_name__ (torch.fx, during `import torch`)
    into a RuntimeError caused by it; capsgen still reports one line and exit 130."""
    import capsgen.cli.models as models_cli

    def interrupted(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            if wrapped:
                raise RuntimeError("Error calling __set_name__ on 'Field' instance") from exc
            raise

    monkeypatch.setattr(models_cli, "cmd_models", interrupted)
    assert main(["models"]) == 130
    assert capsys.readouterr().err == "capsgen: interrupted\n"


def test_other_errors_are_not_taken_for_interrupts(monkeypatch):
    import capsgen.cli.models as models_cli

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(models_cli, "cmd_models", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["models"])


def test_python_m_capsgen_exits_130_after_an_interrupt_inside_an_exec(tmp_path):
    """A Ctrl-C that escapes an exec() of a string (dataclasses and namedtuple build methods that
    way while torch imports) leaves CPython 3.11's sticky "unhandled KeyboardInterrupt" flag set,
    and `python -m` then dies by SIGINT (-2) whatever capsgen returned. Here the interrupt is
    caught and the command is interrupted: exit 130, one line."""
    (tmp_path / "interrupted_in_exec.py").write_text(
        "import sys\n"
        "import capsgen.cli.models as models_cli\n"
        "def interrupted(args):\n"
        "    exec('raise KeyboardInterrupt')\n"
        "models_cli.cmd_models = interrupted\n"
        "sys.argv = ['capsgen', 'models']\n"
        "from capsgen.cli import entry\n"
        "entry()\n")
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "interrupted_in_exec"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == 130 and r.stderr == "capsgen: interrupted\n"
