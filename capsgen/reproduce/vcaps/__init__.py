"""``capsgen reproduce vcaps``: Huang et al.'s variational capsule networks — test error against a
CapsNet of the same budget (§4.2), per-attribute accuracy on attribute data (§4.1.1), conditional
fidelity, sample quality against DCGAN and CapsuleGAN at equal wall clock, reconstructions,
interpolations and attribute swaps — into report.md + report.html. Arguments here (torch-free);
models and the paper's numbers in spec.py, stages in run.py, report in report.py."""
from __future__ import annotations

import argparse
from typing import Any

from capsgen.reproduce.args import name_list, seed_list

DESCRIPTION = ("variational capsules (Huang et al.): test error vs CapsNet, per-attribute accuracy, "
               "conditional fidelity, FID/precision/recall vs DCGAN and CapsuleGAN at equal wall clock")




def add_arguments(p: argparse.ArgumentParser, dataset_names: list[str]) -> None:
    from capsgen.reproduce.vcaps.spec import MODEL_NAMES, SCALES

    p.add_argument("--data", required=True, choices=dataset_names,
                   help="dataset: labelled (class mode, e.g. mnist-5k) or with attributes (e.g. shapes-attributes)")
    p.add_argument("--data-dir", help="folder holding the dataset's standard files")
    p.add_argument("--budget", type=float, required=True, metavar="MINUTES",
                   help="training wall-clock minutes per model and seed (equal for every model)")
    p.add_argument("--seeds", type=seed_list, default=(0,), metavar="0,1,2", help="seeds (default 0)")
    p.add_argument("--out", help="report folder (default reports/vcaps-DATA); running the same command "
                   "again continues an interrupted reproduction")
    p.add_argument("--scale", default="cpu", choices=SCALES,
                   help="cpu: narrower networks (default); paper: the huang-mnist / huang-celeba presets "
                        "and Sabour et al.'s CapsNet")
    p.add_argument("--models", type=name_list(MODEL_NAMES, required="vcaps"), default=MODEL_NAMES, metavar="NAMES",
                   help=f"which models (default all: {','.join(MODEL_NAMES)}; capsnet on class data only)")
    p.add_argument("--n-metrics", type=int, default=2000, metavar="N",
                   help="samples drawn per model for FID / precision / recall and conditional fidelity")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field of every model whose family has it, e.g. --set threads=1")


def main(args: Any, command: str) -> dict[str, str]:
    from capsgen.reproduce.vcaps.run import run
    from capsgen.reproduce.vcaps.spec import Settings

    s = Settings(data=args.data, budget=args.budget, out=args.out or f"reports/vcaps-{args.data}",
                 data_dir=args.data_dir, seeds=args.seeds, scale=args.scale, models=args.models,
                 n_metrics=args.n_metrics, extra=tuple(args.set), command=command)
    path = run(s)
    return {"report": str(path), "html": str(path.with_suffix(".html"))}
