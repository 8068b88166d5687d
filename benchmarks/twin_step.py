"""Training-step time of capsule models against their matched non-capsule twins (``--twin``).

For each family given, at its defaults (or ``--preset``), the capsule Task and its twin Task take
the same real batch (the first ``--batch`` training images of ``--data``) through
``Task.train_step`` (shifts, loss, backward, Adam) with the loop's per-step generator. The two are
timed interleaved (capsule, twin, capsule, twin, ...) after warm-up and summarised by medians
(gan_step.interleaved), in this one run, so drifts in machine load hit both equally.

    python benchmarks/twin_step.py [--family capsnet,gcapsnet] [--data mnist-5k] [--batch 100]
                                   [--warmup 2] [--repeats 5] [--threads N] [--preset NAME]

Per family: ``<family>_capsule_step_ms``, ``<family>_twin_step_ms``, both parameter counts, and
``<family>_twin_speedup`` = capsule / twin step time (above 1: the twin's step is faster).

Measured 2026-12-08 (``--threads 1 --repeats 3 --warmup 1``, mnist-5k, batch 100, on a machine
whose two cores were both busy with another run, so the absolute times are slow; the ratios are of
interleaved medians): capsnet 15.8 s vs 12.2 s per step, twin_speedup 1.30 (three routing
iterations over 1152 x 10 votes cost about a quarter of the step); gcapsnet (fc) 12.5 s vs
12.3 s, 1.01 (trainable routing is already one matrix product). Both are dominated by the
256 -> 256 9x9 primary convolution, which twin and capsule model share.
"""
from __future__ import annotations

import argparse

import torch

from capsgen import runs
from capsgen.data import load_split
from capsgen.data.batch import Batch
from capsgen.train.loop import step_generator
from capsgen.train.task import StepContext, Task
from gan_step import interleaved   # benchmarks/ is on sys.path when this file runs as a script


def train_step(task: Task, batch: Batch, steps_per_epoch: int):
    """One ``train_step`` per call, step s drawing from the loop's generator for (seed 0, s)."""
    counter = [0]

    def step() -> None:
        s = counter[0]
        counter[0] += 1
        task.train_step(batch, StepContext(s, s / steps_per_epoch, steps_per_epoch, step_generator(0, s)))

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="capsnet,gcapsnet", help="comma-separated families with a twin")
    ap.add_argument("--data", default="mnist-5k")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds before timing")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds; medians are reported")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--preset", help="a preset of every family given (default: the family's defaults)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train = load_split(args.data, "train")
    info = runs.data_info(train)
    x, y = train.to_tensors()
    batch = Batch(x[:args.batch], y[:args.batch] if y is not None else None)
    steps_per_epoch = max(1, info.train_size // args.batch)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.data} batch {args.batch}, "
          f"warmup {args.warmup}, repeats {args.repeats} (medians, interleaved)")
    for family in args.family.split(","):
        tasks = {}
        for side, pairs in (("capsule", []), ("twin", ["model.twin=true"])):
            tcfg, mcfg = runs.make_configs(family, pairs, preset=args.preset, data=args.data,
                                           batch_size=args.batch)
            tasks[side] = runs.build_task(tcfg, mcfg, info, "cpu")
            tasks[side].train_mode(True)
            n = sum(p.numel() for m in tasks[side].modules.values() for p in m.parameters())
            print(f"{family}_{side}_params={n}")
        sec = interleaved({side: train_step(t, batch, steps_per_epoch) for side, t in tasks.items()},
                          args.warmup, args.repeats)
        for side, s in sec.items():
            print(f"{family}_{side}_step_ms={1000 * s:.1f}")
        print(f"{family}_twin_speedup={sec['capsule'] / sec['twin']:.3f}")


if __name__ == "__main__":
    main()
