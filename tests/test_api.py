"""The Python API (capsgen.api): the README's snippet runs as written, and a run answers only
what its family can."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import capsgen
from capsgen.errors import CapsgenError

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet() -> str:
    """The README's Python block that uses capsgen.load_run (read here, so the two cannot drift)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if "capsgen.load_run(" in b]
    assert len(found) == 1, "the README should hold exactly one API snippet"
    return found[0]


def test_the_readme_snippet_runs_as_written(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root),
           "CAPSGEN_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-c", readme_snippet()], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "capabilities=['generate', 'class-conditional', 'classify', 'encode']" in r.stdout
    assert (tmp_path / "runs" / "api-vcaps" / "checkpoints" / "last.safetensors").is_file()


@pytest.fixture(scope="module")
def vcaps(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    # the settings of tests/test_cli_outputs.py's VCAPS_TINY, as keywords
    return capsgen.train("vcaps", data="digits", out=out, steps=4, batch_size=16, seed=0, threads=1, caps_dim=4,
                         eval_n=32, n_fixed=8, enc_channels=(8, 8, 8), dec_hidden=32)


def test_a_run_samples_classifies_encodes_and_decodes(vcaps):
    x = vcaps.sample(6, cls=2, seed=1)
    assert x.shape == (6, 1, 8, 8) and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x, capsgen.load_run(vcaps.path).sample(6, cls=2, seed=1))   # same seed, same images
    labels = vcaps.classify(x)
    assert labels.shape == (6,) and labels.dtype == torch.int64
    u8 = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    assert vcaps.classify(u8).shape == (6,)
    caps = vcaps.encode(x)
    assert caps.shape == (6, 10, 4) and vcaps.decode(caps).shape == x.shape
    assert vcaps.config["model"]["caps_dim"] == 4 and isinstance(vcaps.model, torch.nn.Module)


def test_a_run_refuses_what_its_family_cannot_do_in_one_line(vcaps, tmp_path):
    with pytest.raises(CapsgenError, match="cannot generate images with chosen attributes"):
        vcaps.sample(2, attributes={"blue": 1})
    with pytest.raises(CapsgenError, match=r"takes float tensors \[N, 1, 8, 8\]"):
        vcaps.classify(np.zeros((2, 9, 9, 1), np.uint8))
    cnn = capsgen.train("classifier", data="digits", out=tmp_path / "cnn", steps=2, batch_size=16, threads=1)
    with pytest.raises(CapsgenError, match="cannot encode images into capsules; it can: classify"):
        cnn.encode(torch.zeros(1, 1, 8, 8))
    with pytest.raises(CapsgenError, match="cannot generate images"):
        cnn.sample(1)


def test_a_poe_run_encodes_into_code_capsules_and_decodes(tmp_path):
    from tests.test_poe_task import TINY

    sets = dict(pair.split("=", 1) for pair in TINY[1::2])
    run = capsgen.train("poe", data="digits", out=tmp_path / "poe", batch_size=16, seed=0, **sets)
    x = run.sample(3, seed=2)
    code = run.encode(x)
    assert code.shape == (3, 4, 6)                       # code_capsules 4 of code_dim 6 (TINY)
    assert run.decode(code).shape == x.shape
