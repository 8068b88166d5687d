"""Training-step time of the variational capsule network versus its twin (the conditional VAE with
the same encoder and decoder, ``capsgen train vcaps --twin``), both measured in this one run.

The two are built as ``capsgen train vcaps [--twin] --data mnist-5k`` builds them (the family's
defaults plus ``--preset`` / ``--set``, the run's batch size), and step on the same real batch of
mnist-5k training images with the loop's per-step seeded generator; the timed steps alternate
(capsules, twin, capsules, twin …) and are summarised by their medians, so drifts in machine load
hit both sides equally. Each step is timed twice: wall clock, and this thread's CPU time (with one
torch thread every operation runs in it), which a busy machine inflates far less than wall clock.

    python benchmarks/vcaps_step.py [--warmup 3] [--repeats 20] [--threads 1] [--preset NAME]
                                    [--set model.KEY=VALUE ...]

Last line: vcaps_vs_twin_step_ratio=R (capsule / twin step time, CPU time with one thread, else wall
clock; > 1 = the capsules are slower)
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from capsgen import runs
from capsgen.data.batch import Batch
from capsgen.data.registry import load_split
from capsgen.train.task import StepContext, Task
from gan_step import interleaved   # benchmarks/ is the script's directory, so on sys.path


def vcaps_step(task: Task, batch: Batch) -> Callable[[], None]:
    """One ``train_step`` per call, with the loop's per-step seeded generator."""
    counter = [0]

    def step() -> None:
        s = counter[0]
        counter[0] += 1
        task.train_step(batch, StepContext(s, 0.0, 1, torch.Generator().manual_seed(s), len(batch), slice(0, len(batch))))

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds before timing")
    ap.add_argument("--repeats", type=int, default=20, help="timed rounds; medians are reported")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--data", default="mnist-5k")
    ap.add_argument("--preset", help="a vcaps preset (capsgen models)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as capsgen train --set")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train = load_split(args.data, "train")
    info = runs.data_info(train)
    tasks = {}
    for name, twin in (("capsules", []), ("twin", ["model.twin=true"])):
        tcfg, mcfg = runs.make_configs("vcaps", [*twin, *args.set], preset=args.preset, data=args.data)
        tasks[name] = runs.build_task(tcfg, mcfg, info, "cpu")
    B = tcfg.batch_size
    images = torch.from_numpy(train.images[:B].copy()).permute(0, 3, 1, 2).float() / 255
    labels = None if train.labels is None else torch.from_numpy(train.labels[:B].copy()).long()
    attributes = None if train.attribute_names is None else torch.from_numpy(train.attributes[:B].copy()).float()
    batch = Batch(images, labels, attributes)
    counts = {name: sum(p.numel() for m in t.modules.values() for p in m.parameters()) for name, t in tasks.items()}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, data {args.data}, batch {B}, "
          f"preset {args.preset or '(defaults)'}, set {args.set or '-'}")
    print(f"parameters: capsules {counts['capsules']:,}, twin {counts['twin']:,} "
          f"({100 * (counts['twin'] / counts['capsules'] - 1):+.2f} %)")
    for t in tasks.values():
        t.train_mode(True)
    steps = {name: vcaps_step(t, batch) for name, t in tasks.items()}
    wall = interleaved(steps, args.warmup, args.repeats)
    cpu = interleaved(steps, 0, args.repeats, clock=time.thread_time) if args.threads == 1 else None
    for name in steps:
        print(f"{name}: {1000 * wall[name]:.1f} ms wall" + (f", {1000 * cpu[name]:.1f} ms CPU" if cpu else "")
              + f" per step (medians of {args.repeats})")
    print(f"wall-clock ratio {wall['capsules'] / wall['twin']:.3f}")
    ratio = (cpu or wall)['capsules'] / (cpu or wall)['twin']
    print(f"vcaps_vs_twin_step_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
