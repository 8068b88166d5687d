"""``capsgen train`` and ``capsgen demo``."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from capsgen.errors import CapsgenError

# The demo's capsule GAN (capsgen train capsulegan --preset trunk-hinge) and its length; the steps
# are what fitted in about 3 minutes on this project's 2-core machine (RESULTS.md, `capsgen demo`).
DEMO_PRESET = "trunk-hinge"
DEMO_STEPS = 5000
# Both networks at 8e-4 instead of the preset's 4e-4: on mnist-5k at 5,000 steps (one thread, beside
# another job, 1,000 samples) FID 21.5 and 56 % of samples confidently one digit with seed 0, the
# demo's (seed 1: 21.5 / 49 %), against 25.3 / 45 % at 4e-4, 22.5 / 48 % at 6e-4 and 20.4 / 49 % at
# 1e-3. EMA of G (0.99, 0.995, 0.999), a 64-wide G and DiffAugment did not help (RESULTS.md,
# `capsgen demo`). The preset's minibatch std is left out: with it the share fell to 51 % / 47 %
# (FID 21.0 / 24.4) on seeds 0 / 1, though it lifts 10-minute recall on Fashion-MNIST.
DEMO_SETS = ("model.lr=8e-4", "model.lr_d=8e-4", "model.d_minibatch_std=0")


def add_parsers(sub) -> None:
    from capsgen.cli import add_device
    from capsgen.data import dataset_names
    from capsgen.models import FAMILIES

    p = sub.add_parser("train", help="train a model (or resume a run)")
    p.add_argument("model", nargs="?", choices=sorted(FAMILIES), help="model family (see capsgen models)")
    p.add_argument("--data", choices=dataset_names(), help="dataset name")
    p.add_argument("--data-dir", help="folder holding the dataset's standard files")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=float, help="epochs to train (default 1)")
    g.add_argument("--steps", type=int, help="optimisation steps to train")
    p.add_argument("--minutes", type=float, help="wall-clock budget; stops at the first step past it "
                   "(alone: train until it is spent)")
    p.add_argument("--batch-size", type=int, help="examples per step (over all processes under torchrun)")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="run folder to create: new or empty (default runs/MODEL-DATA-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its last checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set model.routing_iterations=2")
    p.add_argument("--config", metavar="FILE.toml", help="--set lines from a TOML file: keys under [train] and "
                   "[model] (or bare names), lists for tuples; applied before your own --set")
    p.add_argument("--preset", help="named bundle of --set values of the model (see capsgen models), "
                   "applied before your own --set")
    p.add_argument("--twin", action="store_true", help="train the model's matched non-capsule twin: the same "
                   "network, loss, data and budget with the capsule part replaced (capsgen models says which "
                   "families have one and what it is)")
    p.add_argument("--precision", choices=["fp32", "bf16"], help="bf16: autocast around each step (default fp32)")
    add_device(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("demo", help="train a capsule GAN for a few minutes on bundled digits; samples, curves, report")
    p.add_argument("--out", default="runs/demo", help="run folder to create (default runs/demo)")
    p.add_argument("--steps", type=int, default=DEMO_STEPS,
                   help=f"training steps (default {DEMO_STEPS}: about 3 min on 2 cores)")
    p.add_argument("--no-verdict", action="store_true", help="skip the evaluator's verdict on 1000 samples "
                   "(the first verdict trains the mnist-5k evaluator once, ~2 min)")
    add_device(p)
    p.set_defaults(func=cmd_demo)


def cmd_train(args) -> int:
    from capsgen import runs

    if args.resume:
        extra = [n for n in ("model", "data", "data_dir", "batch_size", "seed", "out", "preset", "precision", "twin",
                             "config")
                 if getattr(args, n)]
        if extra or args.set:
            raise CapsgenError("--resume continues a run with its own settings; only --steps/--epochs/--minutes/"
                               f"--device may be given with it (got {', '.join(extra + ['set'] * bool(args.set))})")
        run, final = runs.resume(args.resume, args.steps, args.epochs, progress=not args.no_progress,
                                 minutes=args.minutes, device=args.device)
    else:
        if not args.model:
            raise CapsgenError("name a model to train (e.g. capsgen train capsnet --data fashion-mnist) "
                               "or pass --resume RUN_DIR")
        pairs = [*(config_file_pairs(args.config) if args.config else []), *args.set]
        if args.twin:
            from capsgen.models import get_family

            fam = get_family(args.model)
            if not fam.config_cls.TWIN:
                have = ", ".join(f.name for f in twin_families())
                raise CapsgenError(f"--twin: {args.model} has no capsule part, so no twin; families with one: {have}")
            pairs = ["model.twin=true", *pairs]
        tcfg, mcfg = runs.make_configs(args.model, pairs, preset=args.preset, data=args.data,
                                       data_dir=args.data_dir, epochs=args.epochs, steps=args.steps,
                                       minutes=args.minutes, batch_size=args.batch_size, seed=args.seed,
                                       precision=args.precision)
        out = args.out or f"runs/{args.model}-{tcfg.data}-{time.strftime('%Y%m%d-%H%M%S')}"
        run, final = runs.train_new(tcfg, mcfg, out, progress=not args.no_progress, device=args.device,
                                    preset=args.preset)
    from capsgen.train.distributed import launched_by_torchrun

    if not launched_by_torchrun() or _rank() == 0:
        print(json.dumps({"run": str(run.path), **final}))
    return 0


def config_file_pairs(path: str) -> list[str]:
    """The ``--set`` pairs a TOML file stands for: ``[train] steps = 5`` is ``train.steps=5``,
    ``[model] channels = [16, 32]`` is ``model.channels=16,32``, a top-level ``lr = 1e-3`` is ``lr=1e-3``."""
    try:
        import tomllib                      # Python >= 3.11
    except ModuleNotFoundError:             # Python 3.10: the same parser as a package
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise CapsgenError("--config needs Python >= 3.11 or the tomli package (pip install tomli)") from None
    try:
        with open(path, "rb") as fh:
            table = tomllib.load(fh)
    except OSError as exc:
        raise CapsgenError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise CapsgenError(f"--config {path}: not valid TOML ({str(exc).splitlines()[0]})") from None
    pairs: list[str] = []
    for key, value in table.items():
        if isinstance(value, dict):
            if key not in ("train", "model"):
                raise CapsgenError(f"--config {path}: unknown table [{key}]; use [train] and [model]")
            for name, v in value.items():
                pairs.append(f"{key}.{name}={_toml_text(v, path, f'{key}.{name}')}")
        else:
            pairs.append(f"{key}={_toml_text(value, path, key)}")
    return pairs


def _toml_text(value: Any, path: str, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value):
        return ",".join(str(v) for v in value)
    raise CapsgenError(f"--config {path}: {key} must be a number, a string, true/false or a list of numbers/strings")


def twin_families() -> list:
    """The registered families that have a matched non-capsule twin."""
    from capsgen.models import FAMILIES

    return [f for f in FAMILIES.values() if f.config_cls.TWIN]


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", 0))


def demo_configs(steps: int, extra: tuple[str, ...] = (), seed: int = 0) -> tuple[Any, Any]:
    """The demo's (TrainConfig, CapsuleGANConfig) for ``steps``, with ``extra`` --set pairs applied
    last (benchmarks/demo_trials.py tries levers on exactly this configuration)."""
    from capsgen import runs

    every = max(1, steps // 6)   # ~6 fixed-noise progress grids, with a test evaluation at each
    # trunk-hinge: the best capsule discriminator measured (RESULTS.md, "CapsuleGAN levers"); the
    # demo used the papers' full-resolution CapsNet D until 2026-12-04, whose samples stayed strokes
    # (FID 64.4 on mnist-5k, 18 % confident) in the same minutes.
    return runs.make_configs("capsulegan", [*DEMO_SETS, f"model.sample_every={every}", *extra], preset=DEMO_PRESET,
                             data="mnist-5k", steps=steps, seed=seed, eval_every=every,
                             log_every=max(1, min(20, steps // 10)))


def cmd_demo(args) -> int:
    """A capsule GAN on the bundled mnist-5k digits: samples, progress grids, curves, report."""
    from capsgen import runs

    out = Path(args.out)
    steps = args.steps
    if steps < 1:
        raise CapsgenError(f"--steps must be >= 1, got {steps}")
    tcfg, mcfg = demo_configs(steps)
    every = tcfg.eval_every
    print(f"capsgen demo: training a capsule GAN (preset {DEMO_PRESET}, {' '.join(DEMO_SETS)}: DCGAN generator; "
          f"DCGAN's conv body under routed capsules as discriminator) on the bundled mnist-5k digits for {steps} "
          f"steps into {out} (about 3 minutes on 2 CPU cores)")
    run, final = runs.train_new(tcfg, mcfg, out, progress=True, device=args.device, preset=DEMO_PRESET)
    figs = run.figures
    print(f"discriminator on {final['n']} test digits vs {final['n']} samples: accuracy {final['d_acc']:.3f} "
          f"(real {final['d_acc_real']:.3f}, fake {final['d_acc_fake']:.3f}; 0.5 = chance), "
          f"mean P(real) {final['d_real']:.3f} real vs {final['d_fake']:.3f} generated")
    n_grids = len(list((figs / "samples").glob("step_*.png")))
    print(f"samples:        {run.figure('samples.png')}")
    print(f"progress grids: {figs / 'samples'}/ ({n_grids}, every {every} steps, same noise)")
    print(f"curves:         {run.figure('gan_curves.png')}")
    print(f"interpolation:  {run.figure('interpolation.png')}")
    print(f"report:         {run.report_path}")
    if not args.no_verdict:
        from capsgen.eval.run_eval import format_verdict, sample_verdict

        print(format_verdict(sample_verdict(str(run.path), n=1000, device=args.device)))
    # The verdict compares the samples with real digits, not with another model: what the capsules
    # add is measured against the same network without them (docs/twins.md), so say so.
    print("what this does not show: whether the capsules help. The same network with dense layers instead of "
          f"capsules: capsgen train capsulegan --preset {DEMO_PRESET} --twin --data mnist-5k --steps {steps} "
          f"{' '.join('--set ' + p for p in DEMO_SETS)}; RESULTS.md compares the two")
    return 0
