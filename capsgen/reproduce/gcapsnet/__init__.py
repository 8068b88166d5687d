"""``capsgen reproduce gcapsnet``: Chen et al.'s (G-CapsNets) experiments — test error against
parameter count over seeds (table 2), error on AC-GAN digits after each GAN epoch (table 3) and
adversarial attacks (4.3, supplementary 6.2) — into report.md + report.html. Arguments here
(torch-free); models and the paper's numbers in spec.py, stages in run.py, report in report.py."""
from __future__ import annotations

import argparse
from typing import Any

from capsgen.reproduce.args import name_list, seed_list

from capsgen.reproduce.gcapsnet.spec import ATTACKS, MODEL_NAMES, SCALES

DESCRIPTION = ("G-CapsNets (Chen et al.): test error vs parameters over seeds (CNN, CapsNet, FC/conv/multi-layer "
               "G-CapsNets), error on AC-GAN images per GAN epoch, FGSM, PGD and universal-perturbation attacks")




def add_arguments(p: argparse.ArgumentParser, dataset_names: list[str]) -> None:
    p.add_argument("--data", required=True, choices=dataset_names, help="dataset name (labelled)")
    p.add_argument("--data-dir", help="folder holding the dataset's standard files")
    p.add_argument("--budget", type=float, required=True, metavar="MINUTES",
                   help="training wall-clock minutes per model and seed")
    p.add_argument("--seeds", type=seed_list, default=(0, 1, 2), metavar="0,1,2",
                   help="seeds of every classifier (table 2 reports mean ± sd over them)")
    p.add_argument("--epochs", type=float, help="also stop each classifier after this many epochs")
    p.add_argument("--out", help="report folder (default reports/gcapsnet-DATA); running the same command "
                   "again continues an interrupted reproduction")
    p.add_argument("--scale", default="cpu", choices=SCALES,
                   help="cpu: the paper's architectures with fewer maps (default); paper: Chen et al.'s sizes")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--models", type=name_list(MODEL_NAMES), default=MODEL_NAMES, metavar="NAMES",
                   help=f"which models (default all: {','.join(MODEL_NAMES)}; multilayer on 3-channel data only)")
    p.add_argument("--gan-epochs", type=int, default=5, help="table 3: AC-GAN epochs (0 = skip table 3)")
    p.add_argument("--gan-minutes", type=float, help="table 3: training minutes per AC-GAN epoch at most "
                   "(default: --budget)")
    p.add_argument("--gan-family", default="acgan", help="table 3: a class-conditional family (default acgan)")
    p.add_argument("--per-class", type=int, default=400, help="table 3: images per class after each GAN epoch")
    p.add_argument("--attacks", type=name_list(ATTACKS, allow_none=True), default=ATTACKS, metavar="fgsm,pgd,uap",
                   help="attacks on the seed-0 baseline, CapsNet, FC and conv G-CapsNets (none = skip)")
    p.add_argument("--attack-n", type=int, default=1000, help="test images attacked")
    p.add_argument("--uap-iters", type=int, default=300, help="iterations of the universal-perturbation generator")
    p.add_argument("--substitute-steps", type=int, default=2000, help="black-box FGSM: LeNet substitute steps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field of every model whose family has it, e.g. --set threads=1")


def main(args: Any, command: str) -> dict[str, str]:
    from capsgen.reproduce.gcapsnet.run import run
    from capsgen.reproduce.gcapsnet.spec import Settings

    s = Settings(data=args.data, budget=args.budget, out=args.out or f"reports/gcapsnet-{args.data}",
                 data_dir=args.data_dir, seeds=args.seeds, epochs=args.epochs, scale=args.scale,
                 batch_size=args.batch_size, models=args.models, gan_family=args.gan_family,
                 gan_epochs=args.gan_epochs, gan_minutes=args.gan_minutes, per_class=args.per_class,
                 attacks=args.attacks, attack_n=args.attack_n, uap_iters=args.uap_iters,
                 substitute_steps=args.substitute_steps, extra=tuple(args.set), command=command)
    path = run(s)
    return {"report": str(path), "html": str(path.with_suffix(".html"))}
