"""Multi-process training under torchrun (gloo on the CPU): same weights as one process, resume,
world-size checks, a GAN family smoke test, and two "nodes" (two torchrun launchers meeting at a
c10d rendezvous on localhost). Spawns processes, so marked slow."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from capsgen.train.checkpoint import read_checkpoint
from tests.conftest import TINY_CAPSNET, run_cli

pytestmark = pytest.mark.slow

CAPSNET = ["train", "capsnet", "--data", "digits", "--batch-size", "16", "--seed", "5", "--no-progress",
           "--set", "threads=1", "--set", "checkpoint_every=3", *TINY_CAPSNET]


def torchrun(args: list[str], nproc: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", "-m", "capsgen", *args],
                          env=env, capture_output=True, text=True, timeout=timeout)


def weights(run: Path) -> dict[str, torch.Tensor]:
    tensors, _ = read_checkpoint(run / "checkpoints" / "last.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith("module.")}


def max_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)


def test_two_processes_match_one_process_of_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r = run_cli([*CAPSNET, "--steps", "8", "--out", str(one)])
    assert r.returncode == 0, r.stderr
    r = torchrun([*CAPSNET, "--steps", "8", "--out", str(two)])
    assert r.returncode == 0, r.stderr
    # Only process 0 wrote: one JSON line, one run folder, world_size recorded.
    assert sum(line.startswith("{") for line in r.stdout.splitlines()) == 1
    assert json.loads((two / "config.json").read_text())["train"]["world_size"] == 2
    diff = max_difference(one, two)
    print(f"max |w_1proc - w_2proc| after 8 steps = {diff:.3g}")
    # Summation order differs (two half-batch means averaged vs one mean): float tolerance only.
    assert diff < 1e-4
    # ... and a torchrun resume continues to the same weights as a longer one-process run.
    r = run_cli([*CAPSNET, "--steps", "12", "--out", str(tmp_path / "one12")])
    assert r.returncode == 0, r.stderr
    r = torchrun(["train", "--resume", str(two), "--steps", "12", "--no-progress"])
    assert r.returncode == 0, r.stderr
    assert read_checkpoint(two / "checkpoints" / "last.safetensors")[1]["state"]["step"] == 12
    assert max_difference(tmp_path / "one12", two) < 1e-4
    # Resuming a two-process run with one process is refused in one line, nothing changed.
    before = (two / "config.json").read_text()
    r = run_cli(["train", "--resume", str(two), "--steps", "14", "--no-progress"])
    assert r.returncode == 2 and "2 process" in r.stderr and "Traceback" not in r.stderr
    assert (two / "config.json").read_text() == before


def test_batch_that_does_not_split_over_the_processes_is_refused(tmp_path):
    r = torchrun(["train", "capsnet", "--data", "digits", "--batch-size", "15", "--steps", "2",
                  "--no-progress", *TINY_CAPSNET, "--out", str(tmp_path / "odd")])
    assert r.returncode != 0
    assert "does not split evenly over 2 processes" in r.stderr
    # torchrun's launcher prints its own ChildFailedError report; no frame of capsgen's is in it
    assert 'capsgen/' not in r.stderr.replace("-m capsgen", "")
    assert not (tmp_path / "odd").exists()


def test_gan_family_trains_under_torchrun(tmp_path):
    out = tmp_path / "gan"
    r = torchrun(["train", "dcgan", "--data", "digits", "--batch-size", "16", "--steps", "4", "--no-progress",
                  "--set", "g_width=8", "--set", "d_width=8", "--set", "sample_every=0", "--set", "eval_n=32",
                  "--out", str(out)])
    assert r.returncode == 0, r.stderr
    state = read_checkpoint(out / "checkpoints" / "last.safetensors")[1]["state"]
    assert state["step"] == 4 and (out / "figures" / "samples.png").exists()


def two_nodes(args: list[str], timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """``capsgen args`` as two nodes of one process each: two torchrun launchers, as on two machines,
    that find each other through a c10d rendezvous (here on localhost; across machines, the
    address of one of them)."""
    with socket.socket() as s:     # a free port for the rendezvous
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
           "--rdzv_backend=c10d", f"--rdzv_endpoint=localhost:{port}", "--rdzv_id=capsgen-two-nodes",
           "-m", "capsgen", *args]
    nodes = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    done = []
    for node in nodes:
        out, err = node.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(cmd, node.returncode, out, err))
    return done


def test_two_nodes_train_and_resume_from_rank_0s_checkpoint(tmp_path):
    one, nodes = tmp_path / "one12", tmp_path / "nodes"
    r = run_cli([*CAPSNET, "--steps", "12", "--out", str(one)])
    assert r.returncode == 0, r.stderr
    done = two_nodes([*CAPSNET, "--steps", "8", "--out", str(nodes)])
    assert all(d.returncode == 0 for d in done), [d.stderr for d in done]
    # the process the rendezvous made rank 0 wrote the one run folder and the one JSON line
    assert sum(line.startswith("{") for d in done for line in d.stdout.splitlines()) == 1
    assert json.loads((nodes / "config.json").read_text())["train"]["world_size"] == 2
    assert read_checkpoint(nodes / "checkpoints" / "last.safetensors")[1]["state"]["step"] == 8
    # both nodes resume from that checkpoint (a shared folder here; copied to each node otherwise)
    done = two_nodes(["train", "--resume", str(nodes), "--steps", "12", "--no-progress"])
    assert all(d.returncode == 0 for d in done), [d.stderr for d in done]
    assert read_checkpoint(nodes / "checkpoints" / "last.safetensors")[1]["state"]["step"] == 12
    diff = max_difference(one, nodes)
    print(f"max |w_1proc - w_2nodes| after 8 + 4 resumed steps = {diff:.3g}")
    assert diff < 1e-4
