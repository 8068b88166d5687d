"""``capsgen reproduce capsulegan``: DCGAN vs CapsuleGAN with a BCE CapsNet discriminator
(Karmakar) vs CapsuleGAN with the margin-loss capsule (Jaiswal et al. 2018): sample metrics, GAM
battles and semi-supervised Label Spreading, report.md + report.html. Arguments here (torch-free);
stages in run.py, report in report.py."""
from __future__ import annotations

import argparse
from typing import Any

from capsgen.errors import CapsgenError

DESCRIPTION = ("DCGAN vs CapsuleGAN (BCE, Karmakar) vs CapsuleGAN (margin loss, Jaiswal et al. 2018): "
               "sample metrics, GAM battle, semi-supervised Label Spreading")


def labelled_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated counts, e.g. 100,1000,10000") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: counts must be positive, e.g. 100,1000,10000")
    return counts


def add_arguments(p: argparse.ArgumentParser, dataset_names: list[str]) -> None:
    p.add_argument("--data", required=True, choices=dataset_names, help="dataset name")
    p.add_argument("--data-dir", help="folder holding the dataset's standard files")
    p.add_argument("--budget", type=float, required=True, metavar="MINUTES",
                   help="training wall-clock minutes per model (every model gets the same)")
    p.add_argument("--out", help="report folder (default reports/capsulegan-DATA); running the same "
                   "command again continues an interrupted reproduction")
    p.add_argument("--scale", default="cpu", choices=["cpu", "paper"],
                   help="cpu: small discriminators (default); paper: the papers' network sizes")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=10_000, help="samples per model for FID & co.")
    p.add_argument("--battle-n", type=int, default=1000, help="samples per generator in the GAM battle")
    p.add_argument("--tol", type=float, default=0.05, help="GAM: |r - 1| <= tol counts as r ≈ 1")
    p.add_argument("--labelled", type=labelled_counts, default=(100, 1000, 10000),
                   help="semi-supervised: labelled real images per row")
    p.add_argument("--generated", type=int, default=50_000, help="semi-supervised: generated unlabelled images")
    p.add_argument("--semisup-test-n", type=int, help="semi-supervised: first N test images (default all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field of every model, e.g. --set model.d_conv_kernel=3")


def main(args: Any, command: str) -> dict[str, str]:
    for name in ("n", "battle_n", "batch_size", "generated"):
        if getattr(args, name) < 1:
            raise CapsgenError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.semisup_test_n is not None and args.semisup_test_n < 1:
        raise CapsgenError(f"--semisup-test-n must be positive, got {args.semisup_test_n}")
    if not 0 <= args.tol < 1:
        raise CapsgenError(f"--tol must be in [0, 1), got {args.tol}")
    from capsgen.reproduce.capsulegan.run import run
    from capsgen.reproduce.capsulegan.spec import Settings

    s = Settings(data=args.data, budget=args.budget, data_dir=args.data_dir, scale=args.scale,
                 out=args.out or f"reports/capsulegan-{args.data}", batch_size=args.batch_size,
                 seed=args.seed, n_metrics=args.n, n_battle=args.battle_n, tol=args.tol,
                 labelled=args.labelled, generated=args.generated, semisup_test_n=args.semisup_test_n,
                 extra=tuple(args.set), command=command)
    path = run(s)
    return {"report": str(path), "html": str(path.with_suffix(".html"))}
