"""``capsgen export``: a run's network weights alone in one safetensors file."""
from __future__ import annotations

import json


def add_parsers(sub) -> None:
    from capsgen.cli import add_force

    p = sub.add_parser("export", help="write a run's network weights (no optimiser or RNG state) to FILE.safetensors")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", required=True, help="FILE.safetensors: tensors named <module>.<parameter>, the run's "
                   "config as metadata")
    p.add_argument("--checkpoint", choices=["best", "last"], default="last")
    add_force(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from capsgen.export import export_weights

    print(json.dumps(export_weights(args.run, args.out, args.checkpoint, args.force)))
    return 0
