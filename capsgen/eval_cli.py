"""``capsgen eval FILE.npz|GENERATIVE_RUN`` and ``capsgen evaluator``: sample metrics from the command line.

``capsgen eval`` on a classifier run (capsnet, classifier) keeps reporting its test error
(:mod:`capsgen.cli`); on a sample file or a run that can generate images it lands here and
prints one JSON line, then a table: metric | samples | real-vs-real floor.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from capsgen.errors import CapsgenError

DEFAULT_RUN_SAMPLES = 10_000    # images drawn from a generative run when --n is not given

EVAL_DESCRIPTION = (
    "Evaluate a run or score generated images. A classifier run (capsnet, classifier) reports its "
    "test error. A generative run (dcgan, capsulegan: N images are drawn from it) or a FILE.npz "
    "(uint8 array 'images' [N, H, W, C]) gets FID, KID, Inception Score, precision/recall, "
    "density/coverage and class coverage against the real test split of --data, beside the "
    "real-vs-real floor (real training images vs the same test images, same counts). Features and "
    "class probabilities come from capsgen's own evaluator classifier for the dataset (trained once "
    "and cached in $CAPSGEN_CACHE or ~/.cache/capsgen), NOT from Inception-v3: its weights cannot "
    "be downloaded here and it does not suit 28x28 images, so scores are not comparable with "
    "published Inception-based numbers.")


def is_sample_file(target: str) -> bool:
    return str(target).lower().endswith(".npz") or Path(target).is_file()


def wants_sample_metrics(target: str) -> bool:
    """True for a .npz path or a run folder whose family can generate images."""
    if is_sample_file(target):
        return True
    try:
        from capsgen import runs
        from capsgen.models import get_family

        _, tcfg, _ = runs.read_run(target)
        return hasattr(get_family(tcfg.family).task_cls(), "sample")
    except CapsgenError:
        return False        # the classifier path reports the problem with the run folder


def generate_images(run_dir: str, n: int, seed: int) -> tuple[str, str | None, np.ndarray]:
    """(dataset, data_dir, uint8 [n, H, W, C]) drawn from a generative run's 'last' weights."""
    import torch

    from capsgen import runs
    from capsgen.report.figures import to_uint8_hwc

    try:
        from capsgen.gan_cli import open_generative
    except ImportError as exc:  # pragma: no cover - the GAN module ships with capsgen
        raise CapsgenError(f"cannot sample from {run_dir} ({exc}); evaluate a FILE.npz instead") from None
    _, tcfg, _ = runs.read_run(run_dir)
    _, task = open_generative(run_dir)
    images = task.sample(n, torch.Generator().manual_seed(seed))
    return tcfg.data, tcfg.data_dir, to_uint8_hwc(images)


def cmd_eval_samples(args: Any) -> int:
    from capsgen.data.registry import get_spec
    from capsgen.eval.report_metrics import evaluate_samples, format_table, read_samples_npz

    target = args.run
    if args.n is not None and args.n < 1:
        raise CapsgenError(f"--n must be a positive number of samples, got {args.n}")
    if is_sample_file(target):
        if not args.data:
            raise CapsgenError(f"--data NAME is required with a sample file (the dataset {target} imitates)")
        data, data_dir = get_spec(args.data).name, args.data_dir
        images = read_samples_npz(target)
        kind = "file"
    else:
        n = args.n or DEFAULT_RUN_SAMPLES
        data, data_dir, images = generate_images(target, n, args.seed)
        if args.data and get_spec(args.data).name != data:
            raise CapsgenError(f"{target} was trained on {data}, not {args.data}; leave --data out")
        data_dir = args.data_dir or data_dir
        kind = "run"
    result = evaluate_samples(images, data, args.n, data_dir=data_dir, seed=args.seed, source=str(target))
    print(json.dumps({"source": str(target), "kind": kind, **result}))
    print(format_table(result))
    return 0


def cmd_evaluator(args: Any) -> int:
    from capsgen.eval.evaluator import get_evaluator

    ev = get_evaluator(args.data, args.data_dir, retrain=args.retrain, progress=not args.no_progress)
    print(json.dumps({"data": ev.data, "accuracy": ev.accuracy, "n_test": ev.n_test,
                      "feature_dim": ev.feature_dim, "path": str(Path(ev.path))}))
    print(f"{ev.data} evaluator: test accuracy {100 * ev.accuracy:.2f}% on {ev.n_test} test images; {ev.path}")
    return 0
