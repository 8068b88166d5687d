"""``capsgen explore RUN``: a local page to steer what a trained run's capsules and latents encode."""
from __future__ import annotations


def add_parsers(sub) -> None:
    from capsgen.cli import add_device

    p = sub.add_parser("explore", help="serve a local web page to play with a trained run's capsules or latents")
    p.add_argument("run", help="a finished run folder (one with a decoder or a generator: see the README's table)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port; default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="the only address it answers on (default: %(default)s)")
    p.add_argument("--checkpoint", choices=["last", "best"], default="last", help="which checkpoint to load")
    add_device(p, "cpu")
    p.set_defaults(func=cmd_explore)


def cmd_explore(args) -> int:
    from capsgen.explore.server import serve

    return serve(args.run, args.host, args.port, args.device, args.checkpoint)
