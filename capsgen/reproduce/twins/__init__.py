"""``capsgen reproduce twins``: every capsule model against its matched non-capsule twin at equal wall
clock and at equal steps over seeds, into report.md + report.html. Arguments here (torch-free);
pairs and metrics in spec.py, stages in run.py, report in report.py."""
from __future__ import annotations

import argparse
from typing import Any

from capsgen.reproduce.args import seed_list
from capsgen.reproduce.twins.spec import PAIRS

DESCRIPTION = ("does the capsule part help? every capsule model against its matched twin (the capsule part "
               "replaced) at equal wall clock and equal steps, over seeds")


def pair_list(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated pairs FAMILY[:PRESET], e.g. "
                                         f"{','.join(PAIRS[:2])}")
    return names


def add_arguments(p: argparse.ArgumentParser, dataset_names: list[str]) -> None:
    p.add_argument("--data", required=True, choices=dataset_names, help="dataset name")
    p.add_argument("--data-dir", help="folder holding the dataset's standard files")
    p.add_argument("--budget", type=float, metavar="MINUTES",
                   help="wall-clock minutes of each capsule run and of its equal-time twin")
    p.add_argument("--steps", type=int, metavar="N", help="instead of --budget: steps of each capsule run and of "
                   "its equal-steps twin (the equal-time twin then gets the capsule run's wall clock); the "
                   "comparison that does not depend on what else the machine runs")
    p.add_argument("--seeds", type=seed_list, default=(0, 1, 2), metavar="0,1,2")
    p.add_argument("--pairs", type=pair_list, default=(), metavar="FAMILY[:PRESET],…",
                   help=f"which capsule models (default every one whose family has a twin, of {','.join(PAIRS)})")
    p.add_argument("--n", type=int, default=2000, help="test images and samples per evaluation (default 2000)")
    p.add_argument("--no-grids", action="store_true", help="no sample grids in the report")
    p.add_argument("--out", help="report folder (default reports/twins-DATA); running the same command again "
                   "continues an interrupted reproduction")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field of every model whose family has it, e.g. --set threads=1")


def main(args: Any, command: str) -> dict[str, str]:
    from capsgen.reproduce.twins.run import run
    from capsgen.reproduce.twins.spec import Settings

    s = Settings(data=args.data, budget=args.budget, steps=args.steps, out=args.out or f"reports/twins-{args.data}",
                 data_dir=args.data_dir, seeds=args.seeds, pairs=args.pairs, n=args.n, extra=tuple(args.set),
                 command=command, grids=not args.no_grids)
    path = run(s)
    return {"report": str(path), "html": str(path.with_suffix(".html"))}
