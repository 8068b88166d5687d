"""Shared fixtures: a tiny CapsNet configuration that trains in seconds on the 8x8 digits."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Small enough for CI, still every part of the real model (conv, primary caps, routing, decoder).
TINY_CAPSNET = [
    "--set", "conv_channels=16", "--set", "conv_kernel=3", "--set", "primary_capsules=4",
    "--set", "primary_kernel=3", "--set", "class_dim=8", "--set", "decoder_hidden=32,64",
    "--set", "shift_pixels=1",
]


@pytest.fixture
def tiny_capsnet_args() -> list[str]:
    return list(TINY_CAPSNET)


def run_cli(args: list[str], cwd: Path | None = None, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run ``capsgen`` in a fresh interpreter (as a user would), capturing output."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "capsgen", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="session")
def tiny_capsnet_run(tmp_path_factory) -> Path:
    """A tiny CapsNet-with-decoder run, 4 steps on digits, trained once per session (the explorer's
    server and browser tests share it; it is only read)."""
    from capsgen.cli import main

    out = tmp_path_factory.mktemp("tiny-capsnet") / "run"
    assert main(["train", "capsnet", "--data", "digits", "--steps", "4", "--batch-size", "16", "--seed", "0",
                 "--no-progress", "--set", "threads=1", *TINY_CAPSNET, "--out", str(out)]) == 0
    return out
