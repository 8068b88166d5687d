"""The ``capsgen`` command line.

    capsgen train capsnet --data fashion-mnist --epochs 1 --out runs/caps
    capsgen train --resume runs/caps [--steps N]
    capsgen train capsulegan --preset karmakar --data mnist-5k --steps 2000 --out runs/cgan
    capsgen eval runs/caps
    capsgen eval samples.npz --data fashion-mnist [--n 10000]   (FID, KID, IS, PR, DC + floor)
    capsgen evaluator --data fashion-mnist                      (train/show the evaluator net)
    capsgen sample runs/cgan --n 1000 --out samples.npz --grid samples.png
    capsgen interpolate runs/cgan --out interpolation.png
    capsgen battle runs/cgan runs/dcgan --n 1000               (GAM: r_samples, r_test, verdict)
    capsgen semisup runs/cgan --labelled 100,1000 --generated 50000
    capsgen reproduce capsulegan --data fashion-mnist --budget 20   (train 3 GANs, evaluate, report)
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
    p.add_argument("--minutes", type=float, help="wall-clock budget; stops at the first step past it "
                   "(alone: train until it is spent)")
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
            raise CapsgenError("--resume continues a run with its own settings; only --steps/--epochs/--minutes "
                               f"may be given with it (got {', '.join(extra + ['set'] * bool(args.set))})")
        run, final = runs.resume(args.resume, args.steps, args.epochs, progress=not args.no_progress,
                                 minutes=args.minutes)
    else:
        if not args.model:
            raise CapsgenError("name a model to train (e.g. capsgen train capsnet --data fashion-mnist) "
                               "or pass --resume RUN_DIR")
        pairs = _preset_pairs(args) + args.set
        tcfg, mcfg = runs.make_configs(args.model, pairs, data=args.data, data_dir=args.data_dir,
                                       epochs=args.epochs, steps=args.steps, minutes=args.minutes,
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
    """A capsule GAN on the bundled mnist-5k digits: samples, progress grids, curves, report."""
    from capsgen import runs

    out = Path(args.out)
    steps = args.steps
    if steps < 1:
        raise CapsgenError(f"--steps must be >= 1, got {steps}")
    every = max(1, steps // 6)   # ~6 fixed-noise progress grids, with a test evaluation at each
    # The capsulegan defaults are tuned for a CPU (D learning rate 2e-5; batch 64 as tuned).
    tcfg, mcfg = runs.make_configs("capsulegan", [f"model.sample_every={every}"], data="mnist-5k",
                                   steps=steps, batch_size=64, seed=0)
    tcfg.eval_every = every
    tcfg.log_every = max(1, min(20, steps // 10))
    print(f"capsgen demo: training a capsule GAN (CapsNet discriminator, DCGAN generator) on the bundled "
          f"mnist-5k digits for {steps} steps into {out} (a few minutes on 2 CPU cores)")
    run, final = runs.train_new(tcfg, mcfg, out, progress=True)
    figs = run.figures
    print(f"discriminator on {final['n']} test digits vs {final['n']} samples: accuracy {final['d_acc']:.3f} "
          f"(real {final['d_acc_real']:.3f}, fake {final['d_acc_fake']:.3f}; 0.5 = chance), "
          f"mean P(real) {final['d_real']:.3f} real vs {final['d_fake']:.3f} generated")
    n_grids = len(list((figs / "samples").glob("step_*.png")))
    print(f"samples:        {figs / 'samples.png'}")
    print(f"progress grids: {figs / 'samples'}/ ({n_grids}, every {every} steps, same noise)")
    print(f"curves:         {figs / 'gan_curves.png'}")
    print(f"interpolation:  {figs / 'interpolation.png'}")
    print(f"report:         {run.path / 'report.md'}")
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
    p = sub.add_parser("demo", help="train a capsule GAN for a few minutes on bundled digits; samples, curves, report")
    p.add_argument("--out", default="runs/demo", help="run folder to create (default runs/demo)")
    p.add_argument("--steps", type=int, default=600, help="training steps (default 600: ~3-5 min on 2 cores)")
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
    _add_compare(sub)
    return parser


def _labelled_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated counts, e.g. 100,1000,10000") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: counts must be positive, e.g. 100,1000,10000")
    return counts


def _add_compare(sub) -> None:
    from capsgen.data import dataset_names

    p = sub.add_parser("battle", help="GAM battle of two generative runs (Im et al.; CapsuleGAN §5.3)")
    p.add_argument("run_a", metavar="RUN_A", help="model A (the paper puts the CapsuleGAN here)")
    p.add_argument("run_b", metavar="RUN_B", help="model B (the convolutional GAN in the paper)")
    p.add_argument("--n", type=int, default=1000, help="samples per generator and real test images")
    p.add_argument("--tol", type=float, default=0.05, help="|r - 1| <= tol counts as r ≈ 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", help="folder holding the dataset's standard files")
    p = sub.add_parser("semisup", help="Label Spreading error with generated images as unlabelled "
                       "data (CapsuleGAN §5.4)")
    p.add_argument("source", metavar="RUN_DIR|FILE.npz", help="generative run or .npz of uint8 'images'")
    p.add_argument("--data", choices=dataset_names(), help="dataset (required for FILE.npz)")
    p.add_argument("--data-dir", help="folder holding the dataset's standard files")
    p.add_argument("--labelled", type=_labelled_counts, default=(100, 1000, 10000),
                   help="real labelled training images per row (default 100,1000,10000)")
    p.add_argument("--generated", type=int, default=50_000, help="generated unlabelled images (default 50000)")
    p.add_argument("--test-n", type=int, help="score on the first N real test images (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the labelled subsets and the latents")
    from capsgen.reproduce import EXPERIMENTS

    p = sub.add_parser("reproduce", help="a paper's experiments end to end: train, evaluate, report.md/html")
    p.add_argument("experiment", choices=sorted(EXPERIMENTS),
                   help="; ".join(f"{k}: {v[1]}" for k, v in EXPERIMENTS.items()))
    p.add_argument("--data", required=True, choices=dataset_names(), help="dataset name")
    p.add_argument("--data-dir", help="folder holding the dataset's standard files")
    p.add_argument("--budget", type=float, required=True, metavar="MINUTES",
                   help="training wall-clock minutes per model (every model gets the same)")
    p.add_argument("--out", help="report folder (default reports/EXPERIMENT-DATA); running the same "
                   "command again continues an interrupted reproduction")
    p.add_argument("--scale", default="cpu", choices=["cpu", "paper"],
                   help="cpu: small discriminators (default); paper: the papers' network sizes")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=10_000, help="samples per model for FID & co.")
    p.add_argument("--battle-n", type=int, default=1000, help="samples per generator in the GAM battle")
    p.add_argument("--tol", type=float, default=0.05, help="GAM: |r - 1| <= tol counts as r ≈ 1")
    p.add_argument("--labelled", type=_labelled_counts, default=(100, 1000, 10000),
                   help="semi-supervised: labelled real images per row")
    p.add_argument("--generated", type=int, default=50_000, help="semi-supervised: generated unlabelled images")
    p.add_argument("--semisup-test-n", type=int, help="semi-supervised: first N test images (default all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field of every model, e.g. --set model.d_conv_kernel=3")


def cmd_battle(args) -> int:
    from capsgen.compare import battle, format_battle

    res = battle(args.run_a, args.run_b, n=args.n, seed=args.seed, tol=args.tol, data_dir=args.data_dir)
    print(json.dumps(res))
    print(format_battle(res))
    return 0


def cmd_semisup(args) -> int:
    from capsgen.compare import format_semisup, semisup

    if args.test_n is not None and args.test_n < 1:
        raise CapsgenError(f"--test-n must be positive, got {args.test_n}")
    res = semisup(args.source, args.data, args.labelled, args.generated, seed=args.seed,
                  data_dir=args.data_dir, test_n=args.test_n)
    print(json.dumps(res))
    print(format_semisup(res))
    return 0


def cmd_reproduce(args, argv: list[str] | None = None) -> int:
    from capsgen.reproduce import capsulegan as exp

    for name in ("n", "battle_n", "batch_size", "generated"):
        if getattr(args, name) < 1:
            raise CapsgenError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    s = exp.Settings(data=args.data, budget=args.budget, data_dir=args.data_dir, scale=args.scale,
                     out=args.out or f"reports/{args.experiment}-{args.data}", batch_size=args.batch_size,
                     seed=args.seed, n_metrics=args.n, n_battle=args.battle_n, tol=args.tol,
                     labelled=args.labelled, generated=args.generated, semisup_test_n=args.semisup_test_n,
                     extra=tuple(args.set),
                     command=exp.command_line(argv))
    path = exp.run(s)
    print(json.dumps({"report": str(path), "html": str(path.with_suffix(".html"))}))
    print(f"report: {path} and {path.with_suffix('.html')}")
    return 0


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
            "interpolate": cmd_interpolate, "evaluator": cmd_evaluator, "battle": cmd_battle,
            "semisup": cmd_semisup, "reproduce": cmd_reproduce}


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
        if args.command == "reproduce":     # its report quotes the exact command line
            return cmd_reproduce(args, argv)
        return COMMANDS[args.command](args)
    except CapsgenError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"capsgen: error: {msg}", file=sys.stderr)
        return 130 if type(exc).__name__ == "Interrupted" else 2


if __name__ == "__main__":
    sys.exit(main())
