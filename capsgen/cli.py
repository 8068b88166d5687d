"""The ``capsgen`` command line.

    capsgen train capsnet --data fashion-mnist --epochs 1 --out runs/caps
    capsgen train --resume runs/caps [--steps N]
    capsgen train capsulegan --preset karmakar --data mnist-5k --steps 2000 --out runs/cgan
    capsgen eval runs/caps
    capsgen eval samples.npz --data fashion-mnist [--n 10000]   (FID, KID, IS, PR, DC + floor)
    capsgen evaluator --data fashion-mnist                      (train/show the evaluator net)
    capsgen sample runs/cgan --n 1000 --out samples.npz --grid samples.png
    capsgen interpolate runs/cgan --out interpolation.png
    capsgen demo

Every user-facing problem is reported as one line ``capsgen: error: …`` with exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from capsgen.errors import CapsgenError


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, listing the valid options."""

    def error(self, message: str):  # noqa: D401 - argparse API
        if message.startswith("unrecognized arguments") or "invalid choice" not in message:
            opts = sorted({s for a in self._actions for s in a.option_strings if s.startswith("--")})
            if opts and "invalid choice" not in message:
                message += f" (valid options for '{self.prog}': {', '.join(opts)})"
        raise CapsgenError(message)


def _add_train(sub) -> None:
    from capsgen.data import dataset_names
    from capsgen.models import FAMILIES

    p = sub.add_parser("train", help="train a model (or resume a run)")
    p.add_argument("model", nargs="?", choices=sorted(FAMILIES), help="model family")
    p.add_argument("--data", choices=dataset_names(), help="dataset name")
    p.add_argument("--data-dir", help="folder holding the dataset's standard files")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=float, help="epochs to train (default 1)")
    g.add_argument("--steps", type=int, help="optimisation steps to train")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="run folder to create (default runs/MODEL-DATA-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its last checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set model.routing_iterations=2")
    p.add_argument("--preset", help="named bundle of --set defaults of the model (e.g. karmakar, "
                   "jaiswal for dcgan/capsulegan), applied before your own --set")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_train(args) -> int:
    from capsgen import runs

    if args.resume:
        extra = [n for n in ("model", "data", "data_dir", "batch_size", "seed", "out", "preset")
                 if getattr(args, n)]
        if extra or args.set:
            raise CapsgenError("--resume continues a run with its own settings; only --steps/--epochs "
                               f"may be given with it (got {', '.join(extra + ['set'] * bool(args.set))})")
        run, final = runs.resume(args.resume, args.steps, args.epochs, progress=not args.no_progress)
    else:
        if not args.model:
            raise CapsgenError("name a model to train (e.g. capsgen train capsnet --data fashion-mnist) "
                               "or pass --resume RUN_DIR")
        pairs = _preset_pairs(args) + args.set
        tcfg, mcfg = runs.make_configs(args.model, pairs, data=args.data, data_dir=args.data_dir,
                                       epochs=args.epochs, steps=args.steps,
                                       batch_size=args.batch_size, seed=args.seed)
        out = args.out or f"runs/{args.model}-{tcfg.data}-{time.strftime('%Y%m%d-%H%M%S')}"
        run, final = runs.train_new(tcfg, mcfg, out, progress=not args.no_progress)
    print(json.dumps({"run": str(run.path), **final}))
    return 0


def _preset_pairs(args) -> list[str]:
    """The ``--set`` pairs of ``--preset`` (a ``PRESETS`` dict on the family's config class).

    They come before the user's ``--set``; a train field the user gave as a flag (e.g.
    ``--batch-size``) is dropped from the preset so the flag wins.
    """
    if not args.preset:
        return []
    from capsgen.models import get_family

    presets = getattr(get_family(args.model).config_cls, "PRESETS", {}) or {}
    if args.preset not in presets:
        have = f"choose one of: {', '.join(sorted(presets))}" if presets else "it has no presets"
        raise CapsgenError(f"unknown preset {args.preset!r} for {args.model}; {have}")
    flags = {f"train.{n}" for n in ("data", "data_dir", "epochs", "steps", "batch_size", "seed")
             if getattr(args, n) is not None}
    return [pair for pair in presets[args.preset] if pair.split("=", 1)[0] not in flags]


def cmd_eval(args) -> int:
    from capsgen import eval_cli, runs

    if eval_cli.wants_sample_metrics(args.run):   # FILE.npz or a generative run
        return eval_cli.cmd_eval_samples(args)
    run, tcfg, task, test = runs.open_run(args.run, args.checkpoint)
    if args.data and args.data != tcfg.data:
        raise CapsgenError(f"{run.path} was trained on {tcfg.data}, not {args.data}; leave --data out")
    x, y = test.to_tensors()
    if args.n:
        x, y = x[: args.n], y[: args.n] if y is not None else None
    import torch

    with torch.no_grad():
        res = task.evaluate(x, y)
    print(json.dumps({"run": str(run.path), "data": tcfg.data, "checkpoint": args.checkpoint, **res}))
    if "test_error" in res:
        print(f"test error: {100 * res['test_error']:.2f}% on {res.get('n', len(x))} {tcfg.data} test images")
    return 0


def cmd_demo(args) -> int:
    from capsgen import runs

    out = Path(args.out)
    tcfg, mcfg = runs.make_configs("capsnet", [], data="mnist-5k", steps=args.steps, batch_size=50,
                                   seed=0)
    tcfg.eval_every = max(1, args.steps // 4)
    tcfg.checkpoint_every = 50
    print(f"capsgen demo: training a CapsNet on the bundled mnist-5k digits for {args.steps} steps "
          f"into {out} (a few minutes on 2 CPU cores)")
    run, final = runs.train_new(tcfg, mcfg, out, progress=True)
    print(f"test error {100 * final['test_error']:.2f}% on {final['n']} held-out digits")
    print(f"report: {run.path / 'report.md'}; pictures: {run.figures}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="capsgen", description="Capsule-network generative models.")
    sub = parser.add_subparsers(dest="command", parser_class=OneLineParser, metavar="COMMAND")
    parser.subcommands = sub.choices
    _add_train(sub)
    from capsgen.data import dataset_names
    from capsgen.eval_cli import EVAL_DESCRIPTION

    p = sub.add_parser("eval", help="evaluate a run, or score generated images (FID, KID, IS, PR, DC; "
                       "own evaluator network, not Inception)", description=EVAL_DESCRIPTION)
    p.add_argument("run", metavar="RUN_DIR|FILE.npz", help="run folder, or .npz with uint8 'images' [N, H, W, C]")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--n", type=int, help="classifier runs: the first N test images; samples: the first N "
                   "(default all in the file, 10000 drawn from a generative run)")
    p.add_argument("--data", choices=dataset_names(), help="dataset the samples imitate (required for FILE.npz)")
    p.add_argument("--data-dir", help="folder holding the dataset's standard files")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated latents and the real subsets")
    p = sub.add_parser("evaluator", help="train once (or show) the cached evaluator classifier of a dataset")
    p.add_argument("--data", required=True, choices=dataset_names(), help="dataset name")
    p.add_argument("--data-dir", help="folder holding the dataset's standard files")
    p.add_argument("--retrain", action="store_true", help="discard the cached evaluator and train it again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = sub.add_parser("demo", help="short CapsNet run on bundled data, with pictures and a report")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--steps", type=int, default=200)
    p = sub.add_parser("sample", help="draw images from a trained generative run into an .npz")
    p.add_argument("run", help="run folder of a generative model (dcgan, capsulegan)")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--out", required=True, help="FILE.npz: uint8 [N, H, W, C] under the key 'images'")
    p.add_argument("--grid", help="also write a PNG grid of the first images")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent noise")
    p = sub.add_parser("interpolate", help="latent interpolation grid of a trained generative run")
    p.add_argument("run", help="run folder of a generative model (dcgan, capsulegan)")
    p.add_argument("--out", required=True, help="FILE.png")
    p.add_argument("--rows", type=int, default=8, help="pairs of latents, one per row")
    p.add_argument("--cols", type=int, default=10, help="images per row (both ends included)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent noise")
    return parser


def cmd_evaluator(args) -> int:
    from capsgen.eval_cli import cmd_evaluator as run

    return run(args)


def cmd_sample(args) -> int:
    from capsgen.gan_cli import sample

    print(json.dumps(sample(args.run, args.n, args.out, args.grid, args.seed)))
    return 0


def cmd_interpolate(args) -> int:
    from capsgen.gan_cli import interpolate

    print(json.dumps(interpolate(args.run, args.out, args.rows, args.cols, args.seed)))
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "demo": cmd_demo, "sample": cmd_sample,
            "interpolate": cmd_interpolate, "evaluator": cmd_evaluator}


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:
            # Name the options of the sub-command the user typed, not the top level's.
            sub = parser.subcommands.get(args.command, parser) if args.command else parser
            sub.error(f"unrecognized arguments: {' '.join(extra)}")
        if not args.command:
            parser.print_help()
            return 2
        return COMMANDS[args.command](args)
    except CapsgenError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"capsgen: error: {msg}", file=sys.stderr)
        return 130 if type(exc).__name__ == "Interrupted" else 2


if __name__ == "__main__":
    sys.exit(main())
