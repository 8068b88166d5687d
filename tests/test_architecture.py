"""The architecture's promises (docs/architecture.md): layers import only downwards, the command
line starts without torch, declared capabilities match the Task classes, and a new family —
``tests/example_family`` — works through every command by registering one line."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from capsgen.cli import main
from capsgen.models import FAMILIES
from capsgen.train.capabilities import CAPABILITIES
from capsgen.train.checkpoint import read_checkpoint
from tests import example_family

ROOT = Path(__file__).resolve().parents[1] / "capsgen"

# Higher layers may import lower ones, never the reverse (prefix -> rank; longest prefix wins).
LAYERS = {
    "capsgen.cli": 6, "capsgen.__main__": 6,
    "capsgen.reproduce": 5,
    "capsgen.api": 4, "capsgen.export": 4, "capsgen.sampling": 4, "capsgen.compare": 4, "capsgen.eval.run_eval": 4,
    "capsgen.eval.evaluator": 4, "capsgen.eval.attribute_evaluator": 4, "capsgen.explore": 4,
    "capsgen.eval.report_metrics": 4, "capsgen.eval.attacks": 4, "capsgen.eval.attack_runs": 4,
    "capsgen.runs": 3,
    "capsgen.models": 2,
    "capsgen.train": 1,
    "capsgen.data": 0, "capsgen.nn": 0, "capsgen.eval": 0, "capsgen.report": 0, "capsgen.config": 0,
    "capsgen.errors": 0, "capsgen": 0,
}


def rank(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def imports_of(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m == "capsgen" or m.startswith("capsgen.")}


def test_no_module_imports_a_layer_above_it():
    bad = []
    for path in ROOT.rglob("*.py"):
        mod = "capsgen." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
        mod = mod.removesuffix(".__init__")
        for imp in imports_of(path):
            if rank(imp) > rank(mod):
                bad.append(f"{mod} (layer {rank(mod)}) imports {imp} (layer {rank(imp)})")
    assert not bad, "\n".join(bad)


def test_help_and_models_do_not_import_torch():
    code = ("import sys, io, contextlib; from capsgen.cli import main, build_parser; build_parser();"
            "buf = io.StringIO();\nwith contextlib.redirect_stdout(buf): main(['models'])\n"
            "assert 'torch' not in sys.modules, 'torch imported'; print(buf.getvalue())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for name in FAMILIES:
        assert name in r.stdout


def test_import_capsgen_does_not_import_torch():
    code = ("import sys, capsgen; assert callable(capsgen.__getattr__); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(capsgen.__version__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    code = "import sys, capsgen; capsgen.load_run; assert 'torch' in sys.modules"   # and the API is there
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_declared_capabilities_match_the_task_classes():
    for fam in FAMILIES.values():
        cls = fam.task()
        inherited = [n for n, c in CAPABILITIES.items() if issubclass(cls, c)]
        assert list(fam.capabilities) == inherited, fam.name
        assert set(fam.capabilities) <= set(CAPABILITIES)


@pytest.fixture
def example(monkeypatch):
    monkeypatch.setitem(FAMILIES, "example", example_family.FAMILY)
    return ["train", "example", "--data", "digits", "--batch-size", "32", "--seed", "4", "--no-progress",
            "--set", "log_every=1", "--set", "checkpoint_every=3"]


def test_a_new_family_trains_resumes_evaluates_and_reports_what_it_can_do(example, tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert main([*example, "--steps", "10", "--out", str(full)]) == 0
    assert main([*example, "--steps", "4", "--out", str(part)]) == 0
    assert main(["train", "--resume", str(part), "--steps", "10", "--no-progress"]) == 0
    a, _ = read_checkpoint(full / "checkpoints" / "last.safetensors")
    b, _ = read_checkpoint(part / "checkpoints" / "last.safetensors")
    assert "extra.class_means" in a and a["extra.class_means"].abs().sum() > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k
    capsys.readouterr()
    assert main(["eval", str(full)]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[0])
    assert res["capabilities"] == ["classify"] and 0 <= res["classify"]["test_error"] < 0.5
    assert main(["sample", str(full), "--n", "4", "--out", str(tmp_path / "s.npz")]) == 2
    err = capsys.readouterr().err
    assert "cannot generate images; it can: classify" in err and not (tmp_path / "s.npz").exists()
    assert main(["train", "example", "--data", "digits", "--preset", "nosuch", "--out", str(tmp_path / "x")]) == 2
    assert "choose one of: slow" in capsys.readouterr().err
