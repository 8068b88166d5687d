"""``capsgen reproduce EXPERIMENT …`` and ``capsgen reproduce --list``: experiments from the registry
:data:`capsgen.reproduce.EXPERIMENTS`, each with its own arguments."""
from __future__ import annotations

import json
import shlex


def add_parsers(sub) -> None:
    from capsgen.cli import OneLineParser
    from capsgen.data import dataset_names
    from capsgen.reproduce import EXPERIMENTS

    p = sub.add_parser("reproduce", help="a paper's experiments end to end: train, evaluate, report.md/html "
                       "(--list shows them)")
    p.add_argument("--list", action="store_true", help="list the experiments")
    p.set_defaults(func=cmd_reproduce, experiment=None)
    exps = p.add_subparsers(dest="experiment", parser_class=OneLineParser, metavar="EXPERIMENT")
    for name, module in EXPERIMENTS.items():
        e = exps.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        module.add_arguments(e, dataset_names())
        e.set_defaults(func=cmd_reproduce, experiment=name)


def cmd_reproduce(args) -> int:
    from capsgen.errors import CapsgenError
    from capsgen.reproduce import EXPERIMENTS

    if args.list or not args.experiment:
        if not args.list:
            raise CapsgenError(f"name an experiment: {', '.join(EXPERIMENTS)} (capsgen reproduce --list)")
        for name, module in EXPERIMENTS.items():
            print(f"{name:<12} {module.DESCRIPTION}")
        return 0
    command = "capsgen " + " ".join(shlex.quote(a) for a in args.argv)
    out = EXPERIMENTS[args.experiment].main(args, command)
    print(json.dumps(out))
    print(f"report: {out['report']}" + (f" and {out['html']}" if "html" in out else ""))
    return 0
