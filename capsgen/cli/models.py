"""``capsgen models``: the families, what their runs can do, and their presets (no torch import)."""
from __future__ import annotations

import json


def add_parsers(sub) -> None:
    p = sub.add_parser("models", help="list model families with their capabilities and presets")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    from capsgen.models import FAMILIES

    rows = [{"family": f.name, "capabilities": list(f.capabilities), "presets": f.presets,
             "description": f.description + (f" ({f.paper})" if f.paper else ""),
             "twin": f.config_cls.TWIN or None} for f in FAMILIES.values()]
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        print(f"{r['family']:<12} {r['description']}")
        print(f"{'':<12} can: {', '.join(r['capabilities']) or 'train only'}"
              + (f"; presets: {', '.join(r['presets'])}" if r["presets"] else ""))
        if r["twin"]:
            print(f"{'':<12} twin (--twin): {r['twin']}")
    return 0
