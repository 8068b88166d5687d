"""Training throughput of CapsNet with 1 process vs 2 processes (torchrun, gloo) on this machine.

Each configuration trains the same CapsNet on the same global batch through the real command
line (``capsgen train`` / ``torchrun -m capsgen train``); throughput is taken from the run's own
metrics.jsonl (the loop's clock between the first and the last logged step), so start-up, data
loading and evaluation are not counted. All runs happen in this one invocation, one after the
other, so the ratio compares like with like on a machine whose speed drifts.

    python benchmarks/ddp_throughput.py [--data mnist-5k] [--batch 64] [--steps 30]

Configurations: 1 process x 1 thread (the baseline), 1 process x 2 threads (torch's own intra-op
parallelism over both cores) and 2 processes x 1 thread (data parallel). Last line:
ddp_2proc_vs_1proc_ratio=R (2 processes vs 1 process, each using both cores).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def throughput(run: Path, batch: int) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("split") == "train"]
    first, last = train[1], train[-1]          # skip the first step: lazy initialisation
    return (last["step"] - first["step"]) * batch / (last["time"] - first["time"])


def train(nproc: int, threads: int, args, out: Path) -> float:
    cmd = ["-m", "capsgen", "train", "capsnet", "--data", args.data, "--batch-size", str(args.batch),
           "--steps", str(args.steps), "--no-progress", "--out", str(out), "--set", f"threads={threads}",
           "--set", "log_every=1", "--set", f"eval_every={10 ** 6}", "--set", "eval_limit=100",
           "--set", "checkpoint_every=100000", "--device", "cpu"]
    if nproc > 1:
        cmd = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *cmd]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    subprocess.run([sys.executable, *cmd], env=env, check=True, capture_output=True, text=True)
    return throughput(out, args.batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist-5k")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        single = train(1, 1, args, Path(tmp) / "single")
        one = train(1, 2, args, Path(tmp) / "one")
        two = train(2, 1, args, Path(tmp) / "two")
    print(f"capsnet {args.data}, global batch {args.batch}, {args.steps} steps")
    print(f"1 process x 1 thread:   {single:8.1f} images/s")
    print(f"1 process x 2 threads:  {one:8.1f} images/s")
    print(f"2 processes x 1 thread: {two:8.1f} images/s")
    print(f"ddp_2proc_vs_1proc1thread_ratio={two / single:.3f}")
    print(f"ddp_2proc_vs_1proc_ratio={two / one:.3f}")


if __name__ == "__main__":
    main()
