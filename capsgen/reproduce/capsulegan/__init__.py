"""``capsgen reproduce capsulegan``: Karmakar's pair (DCGAN vs CapsuleGAN, both with Karmakar's
settings: sample quality along training) and Jaiswal et al. 2018's pair (convolutional GAN vs
margin-loss CapsuleGAN: sample metrics, GAM battle, semi-supervised Label Spreading), at equal
wall clock and/or equal iterations, over several seeds, into report.md + report.html.
Arguments here (torch-free, every one checked before anything runs); stages in run.py, report
in report.py, models and settings in spec.py."""
from __future__ import annotations

import argparse
from typing import Any

from capsgen.errors import CapsgenError
from capsgen.reproduce.args import LABELLED_DRAWS, labelled_counts, name_list, seed_list

DESCRIPTION = ("Karmakar's DCGAN vs CapsuleGAN (quality along training) and Jaiswal et al. 2018's "
               "convolutional GAN vs CapsuleGAN (sample metrics, GAM battle, Label Spreading), "
               "at equal wall clock and equal iterations, over several seeds")





def add_arguments(p: argparse.ArgumentParser, dataset_names: list[str]) -> None:
    from capsgen.reproduce.capsulegan.spec import LR_TREATMENTS, MODEL_NAMES, SCALES

    p.add_argument("--data", required=True, choices=dataset_names, help="dataset name")
    p.add_argument("--data-dir", help="folder holding the dataset's standard files")
    p.add_argument("--budget", type=float, metavar="MINUTES",
                   help="equal wall clock: training minutes per model and seed")
    p.add_argument("--steps", type=int, metavar="N",
                   help="equal iterations: training steps per model and seed (the papers compare this way; "
                        "Karmakar trains 10000). Give --budget, --steps or both")
    p.add_argument("--out", help="report folder (default reports/capsulegan-DATA); running the same "
                   "command again continues an interrupted reproduction, and a longer --seeds adds seeds")
    p.add_argument("--scale", default="cpu", choices=SCALES,
                   help="cpu: the paper presets with 64-channel, 8-type capsule discriminators (default); "
                        "paper: the papers' sizes")
    p.add_argument("--models", type=name_list(MODEL_NAMES), default=MODEL_NAMES, metavar="A,B,…",
                   help=f"models to train (default all: {','.join(MODEL_NAMES)})")
    p.add_argument("--lr", default="equal", choices=LR_TREATMENTS,
                   help="equal: every discriminator learns at its generator's rate, as in the papers (default); "
                        "asymmetric: capsule discriminators at 2e-5 (a confound the report names)")
    p.add_argument("--batch-size", type=int, help="real images per batch for every model "
                   "(default: each paper's, Karmakar 16 (+ 16 fake), Jaiswal et al. 64)")
    p.add_argument("--seeds", type=seed_list, default=(0, 1, 2),
                   help="seeds of initialisation, latents and labelled draws (default 0,1,2)")
    p.add_argument("--curve-points", type=int, default=5,
                   help="FID measurements along each run, evenly spaced over its budget (default 5; fewer when "
                        "--steps is smaller; 0 = none)")
    p.add_argument("--curve-n", type=int, default=2000, help="samples per FID along training")
    p.add_argument("--n", type=int, default=10_000, help="samples per model for FID & co.")
    p.add_argument("--battle-n", type=int, default=1000, help="samples per generator in the GAM battle")
    p.add_argument("--tol", type=float, default=0.05, help="GAM: |r - 1| <= tol counts as r ≈ 1")
    p.add_argument("--labelled", type=labelled_counts, default=(100, 1000, 10000),
                   help="semi-supervised: labelled real images per row")
    p.add_argument("--labelled-draw", default=LABELLED_DRAWS[0], choices=LABELLED_DRAWS,
                   help="semi-supervised: labelled images drawn at random (Jaiswal et al., default) or "
                        "class-balanced")
    p.add_argument("--generated", type=int, default=50_000, help="semi-supervised: generated unlabelled images")
    p.add_argument("--semisup-test-n", type=int, help="semi-supervised: first N test images (default all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field of every model, e.g. --set model.d_conv_kernel=3")


def main(args: Any, command: str) -> dict[str, str]:
    if args.budget is None and args.steps is None:
        raise CapsgenError("give --budget MINUTES (equal wall clock), --steps N (equal iterations) or both")
    if args.budget is not None and not args.budget > 0:
        raise CapsgenError(f"--budget must be a positive number of minutes, got {args.budget:g}")
    for name in ("steps", "batch_size", "semisup_test_n"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CapsgenError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("n", "battle_n", "generated", "curve_n"):
        if getattr(args, name) < 1:
            raise CapsgenError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.curve_points < 0:
        raise CapsgenError(f"--curve-points must be >= 0, got {args.curve_points}")
    if args.curve_points and args.curve_n < 10:
        raise CapsgenError(f"--curve-n must be at least 10 samples for a FID, got {args.curve_n}")
    if not 0 <= args.tol < 1:
        raise CapsgenError(f"--tol must be in [0, 1), got {args.tol}")
    from capsgen.reproduce.capsulegan.run import run
    from capsgen.reproduce.capsulegan.spec import Settings

    s = Settings(data=args.data, out=args.out or f"reports/capsulegan-{args.data}", budget=args.budget,
                 steps=args.steps, data_dir=args.data_dir, scale=args.scale, models=tuple(args.models),
                 lr=args.lr, batch_size=args.batch_size, seeds=tuple(args.seeds), curve_points=args.curve_points,
                 curve_n=args.curve_n, n_metrics=args.n, n_battle=args.battle_n, tol=args.tol,
                 labelled=args.labelled, labelled_draw=args.labelled_draw, generated=args.generated,
                 semisup_test_n=args.semisup_test_n, extra=tuple(args.set), command=command)
    path = run(s)
    return {"report": str(path), "html": str(path.with_suffix(".html"))}
