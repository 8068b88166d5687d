"""``capsgen reproduce poe``: Hauser's products of expert capsules — the paper's setting and the
centred one — against a DCGAN given the same wall clock: figure-2 grids on the full sphere and the
restricted half, negative-image shares, per-capsule class purity, FID/KID/precision/recall, each
claim checked, into report.md + report.html. Arguments here (torch-free); settings and claims in
spec.py, stages in run.py, report in report.py."""
from __future__ import annotations

import argparse
from typing import Any

from capsgen.reproduce.args import name_list

from capsgen.reproduce.poe.spec import ARM_CHOICES, ARMS

DESCRIPTION = ("Products of expert capsules (Hauser): paper setting and centred capsules vs a DCGAN of equal wall "
               "clock; figure-2 grids, negatives full vs restricted, per-capsule class purity, FID/precision/recall")



def add_arguments(p: argparse.ArgumentParser, dataset_names: list[str]) -> None:
    p.add_argument("--data", required=True, choices=dataset_names, help="dataset name (labelled, dark background "
                   "for the negatives measure: mnist, mnist-5k, fashion-mnist)")
    p.add_argument("--data-dir", help="folder holding the dataset's standard files")
    p.add_argument("--budget", type=float, required=True, metavar="MINUTES",
                   help="training minutes of each poe run (its stage lengths are planned from timed steps); "
                   "the baseline gets the mean time the poe runs took")
    p.add_argument("--arms", type=name_list(ARM_CHOICES), default=ARMS, metavar="hauser,centred",
                   help="which settings: hauser (the paper as printed), centred (capsgen's default), twin (the "
                   "non-capsule twin of centred: a PPCA mixture on the same autoencoder, at centred's steps)")
    p.add_argument("--baseline", default="dcgan", help="a generative family trained for the same wall clock "
                   "(default dcgan; none = skip)")
    p.add_argument("--per-capsule", type=int, default=100, help="samples per capsule and domain (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", help="report folder (default reports/poe-DATA); running the same command again "
                   "continues an interrupted reproduction")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field of every model whose family has it, e.g. --set threads=1 "
                   "or --set model.w_steps=300 (wins over the planned stage lengths)")


def main(args: Any, command: str) -> dict[str, str]:
    from capsgen.reproduce.poe.run import run
    from capsgen.reproduce.poe.spec import Settings

    s = Settings(data=args.data, budget=args.budget, out=args.out or f"reports/poe-{args.data}",
                 data_dir=args.data_dir, seed=args.seed, batch_size=args.batch_size, arms=args.arms,
                 baseline=args.baseline, per_capsule=args.per_capsule, extra=tuple(args.set), command=command)
    path = run(s)
    return {"report": str(path), "html": str(path.with_suffix(".html"))}
