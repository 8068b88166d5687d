"""``capsgen eval RUN|FILE.npz`` and ``capsgen evaluator``."""
from __future__ import annotations

import json
from pathlib import Path

from capsgen.errors import CapsgenError

EVAL_DESCRIPTION = (
    "Evaluate a run or score generated images. A run reports every capability it has: test error "
    "(classifying runs), per-attribute accuracy, the family's own held-out figures, and for runs "
    "that generate, FID, KID, Inception Score, precision/recall, density/coverage and class coverage "
    "of N drawn images against the real test split, beside the real-vs-real floor (real training "
    "images vs the same test images, same counts), plus conditional fidelity for class-conditional "
    "runs. A FILE.npz (uint8 array 'images' [N, H, W, C]) gets the sample metrics against --data. "
    "Features and class probabilities come from capsgen's own evaluator classifier for the dataset "
    "(trained once and cached in $CAPSGEN_CACHE or ~/.cache/capsgen), NOT from Inception-v3: its "
    "weights cannot be downloaded here and it does not suit 28x28 images, so scores are not "
    "comparable with published Inception-based numbers.")


def add_parsers(sub) -> None:
    from capsgen.cli import add_device
    from capsgen.data import dataset_names

    p = sub.add_parser("eval", help="evaluate a run (every capability it has) or score generated images "
                       "(FID, KID, IS, PR, DC; own evaluator network, not Inception)", description=EVAL_DESCRIPTION)
    p.add_argument("run", metavar="RUN_DIR|FILE.npz", help="run folder, or .npz with uint8 'images' [N, H, W, C]")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--n", type=int, help="runs: the first N test images and N drawn samples (default all "
                   "test images, 10000 samples); files: the first N samples (default all)")
    p.add_argument("--data", choices=dataset_names(), help="dataset the samples imitate (required for FILE.npz)")
    p.add_argument("--data-dir", help="folder holding the dataset's standard files")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated latents and the real subsets")
    p.add_argument("--image-size", type=int, help="files: the square size their images were made at, when a run "
                   "with --set train.image_size=N made them (runs know their own)")
    add_device(p, "cpu")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("evaluator", help="train once (or show) the cached evaluator classifier of a dataset")
    p.add_argument("--data", required=True, choices=dataset_names(), help="dataset name")
    p.add_argument("--data-dir", help="folder holding the dataset's standard files")
    p.add_argument("--image-size", type=int, help="the evaluator of images resized to this square size, as "
                   "runs with --set train.image_size=N see them (default: the dataset's own size)")
    p.add_argument("--retrain", action="store_true", help="discard the cached evaluator and train it again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluator)


def cmd_eval(args) -> int:
    from capsgen.sampling import is_sample_file

    if args.n is not None and args.n < 1:
        raise CapsgenError(f"--n must be a positive number, got {args.n}")
    if args.image_size is not None and args.image_size < 4:
        raise CapsgenError(f"--image-size must be >= 4, got {args.image_size}")
    if is_sample_file(args.run):
        return _eval_file(args)
    if args.image_size is not None:
        raise CapsgenError("--image-size is for sample files; a run is scored at its own train.image_size")
    from capsgen.eval.run_eval import evaluate_run, format_run_eval
    from capsgen.runs import read_run

    _, tcfg, _ = read_run(args.run)
    if args.data and args.data != tcfg.data:
        raise CapsgenError(f"{args.run} was trained on {tcfg.data}, not {args.data}; leave --data out")
    res = evaluate_run(args.run, args.n, args.seed, args.checkpoint, args.device, args.data_dir)
    print(json.dumps(res))
    print(format_run_eval(res))
    return 0


def _eval_file(args) -> int:
    from capsgen.data.registry import get_spec
    from capsgen.eval.report_metrics import evaluate_samples, format_table, read_samples_npz

    if not args.data:
        raise CapsgenError(f"--data NAME is required with a sample file (the dataset {args.run} imitates)")
    data = get_spec(args.data).name
    images = read_samples_npz(args.run)
    result = evaluate_samples(images, data, args.n, data_dir=args.data_dir, seed=args.seed, source=str(args.run),
                              image_size=args.image_size)
    print(json.dumps({"source": str(args.run), "kind": "file", **result}))
    print(format_table(result))
    return 0


def cmd_evaluator(args) -> int:
    from capsgen.eval.evaluator import get_evaluator

    if args.image_size is not None and args.image_size < 4:
        raise CapsgenError(f"--image-size must be >= 4, got {args.image_size}")
    ev = get_evaluator(args.data, args.data_dir, retrain=args.retrain, progress=not args.no_progress,
                       image_size=args.image_size)
    print(json.dumps({"data": ev.data, "accuracy": ev.accuracy, "n_test": ev.n_test,
                      "feature_dim": ev.feature_dim, "path": str(Path(ev.path))}))
    print(f"{ev.data} evaluator: test accuracy {100 * ev.accuracy:.2f}% on {ev.n_test} test images; {ev.path}")
    return 0
