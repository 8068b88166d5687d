"""Levers for ``capsgen demo``, tried on exactly the demo's configuration: each trial trains the demo
(trunk-hinge on mnist-5k, its learning rates, evaluation and grid cadence) with extra ``--set``
values on one torch thread, then prints the demo's verdict on ``--n`` samples (FID beside its
floor, classes drawn, share classified with confidence >= 0.9).

    python benchmarks/demo_trials.py --out /tmp/demo-trials --seed 0 \\
        --trial base \\
        --trial lr6 model.lr=6e-4 model.lr_d=6e-4 \\
        --trial ema model.ema=0.995

Each trial is one run folder ``--out/NAME-sSEED`` (refused if it exists: a trial is not resumed,
since the verdict is of a finished demo) and one line of ``--out/trials.jsonl``. Two trials side
by side on the 2 cores take about 4 minutes each at the demo's 5,000 steps; the demo itself uses
both cores and ends in about 3. Every trial's settings are checked before anything trains.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trial", action="append", nargs="+", required=True, metavar=("NAME", "KEY=VALUE"),
                    help="a named bundle of --set values on top of the demo's (repeatable)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's)")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed (the demo's is 0)")
    ap.add_argument("--n", type=int, default=1000, help="samples for the verdict (the demo's: 1000)")
    ap.add_argument("--out", required=True, help="folder for the trial runs and trials.jsonl")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from capsgen import runs
    from capsgen.cli.train import DEMO_STEPS, demo_configs
    from capsgen.errors import CapsgenError
    from capsgen.eval.run_eval import format_verdict, sample_verdict
    from capsgen.train.checkpoint import atomic_write_text

    steps = DEMO_STEPS if args.steps is None else args.steps
    out = Path(args.out)
    plans = []
    if steps < 1 or args.n < 2:
        raise CapsgenError(f"--steps must be >= 1 and --n >= 2 (got {steps}, {args.n})")
    if out.exists() and not out.is_dir():
        raise CapsgenError(f"--out {out} is a file, not a folder; pick another --out")
    names = [t[0] for t in args.trial]
    if len(set(names)) != len(names):
        raise CapsgenError(f"trial names must be distinct, got {', '.join(names)}")
    for name, *pairs in args.trial:          # every trial checked before any training
        path = out / f"{name}-s{args.seed}"
        if path.exists():
            raise CapsgenError(f"{path} exists: a trial is trained once; remove it or pick another --out")
        tcfg, mcfg = demo_configs(steps, ("train.threads=1", *pairs), seed=args.seed)
        plans.append((name, pairs, path, tcfg, mcfg))
    out.mkdir(parents=True, exist_ok=True)
    log = out / "trials.jsonl"
    for name, pairs, path, tcfg, mcfg in plans:
        t0 = time.perf_counter()
        run, _ = runs.train_new(tcfg, mcfg, path, progress=False)
        train_s = time.perf_counter() - t0
        v = sample_verdict(str(run.path), n=args.n, seed=args.seed)
        print(f"{name} (seed {args.seed}, {steps} steps, {' '.join(pairs) or 'the demo as it is'}; "
              f"trained in {train_s:.0f} s): {format_verdict(v)}", flush=True)
        row = {"trial": name, "seed": args.seed, "steps": steps, "settings": pairs, "train_s": train_s,
               **{k: v[k] for k in ("n", "fid", "fid_floor", "classes_hit", "confident_share")}}
        old = log.read_text() if log.exists() else ""
        atomic_write_text(log, old + json.dumps(row) + "\n", mode=0o644)
    return 0


if __name__ == "__main__":
    from capsgen.errors import CapsgenError
    from capsgen.train.loop import Interrupted

    try:
        sys.exit(main())
    except (Interrupted, KeyboardInterrupt):
        print("interrupted; finished trials are in trials.jsonl (remove the unfinished trial's folder to "
              "try it again)", file=sys.stderr)
        sys.exit(130)
    except CapsgenError as exc:      # bad input, refused before anything is written, or found as training starts
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
