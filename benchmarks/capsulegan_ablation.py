"""Equal-wall-clock ablation of GAN levers: trains one run per named bundle of ``--set`` values for
the same minutes on one torch thread, then scores each with capsgen's evaluator, one row per lever.

    python benchmarks/capsulegan_ablation.py --data mnist-5k --minutes 3 \\
        --lever base \\
        --lever stride2 model.d_conv_stride=2 model.d_primary_kernel=5 \\
        --lever hinge-sn model.objective=hinge model.d_spectral_norm=true model.lr_d=2e-4 \\
        --lever diffaug model.diffaugment=translation,cutout \\
        --lever dcgan family=dcgan

or ``--levers FILE`` with one bundle per line (``NAME KEY=VALUE …``; ``#`` starts a comment).
Every bundle is applied after ``--family``'s defaults (or ``--preset``) and the ``--set`` values
common to all; ``family=NAME`` in a bundle trains another family (e.g. a DCGAN reference row).
Without levers, the built-in list below runs. Every bundle's config and network are checked
before anything trains. Runs go to ``--out/NAME``; a run already there is continued up to the
minutes (so an interrupted ablation can be re-run), not retrained.

Columns: steps reached, ms per step, FID / precision / recall / coverage of ``--n`` samples
against the real test images (capsgen evaluator features, not Inception; lower FID is better),
and the final test D accuracy. Equal wall clock on a shared machine is noisy: the step counts
say how much each lever got; compare rows from one invocation only.

Every row is also kept in ``--out/rows.json`` (one entry per lever and minutes, written after each
row, so an interrupted ablation keeps what it measured). Over seeds, run one invocation per
``--seed`` (each its own ``--out``), then

    python benchmarks/capsulegan_ablation.py --summarise OUT_SEED0 OUT_SEED1 OUT_SEED2 --reference dcgan

prints mean ± sd per lever and minutes, each seed's values, and for every metric the verdict of
``capsgen.reproduce.common.compare`` against the reference lever: "better"/"worse" only when the
mean ± sd intervals do not overlap, else "not resolved".
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

DEFAULT_LEVERS = (
    ("base", ()),
    ("stride2", ("model.d_conv_stride=2", "model.d_primary_kernel=5")),
    ("hinge", ("model.objective=hinge",)),
    ("sn-equal-lr", ("model.d_spectral_norm=true", "model.lr_d=2e-4")),
    ("diffaugment", ("model.diffaugment=translation,cutout",)),
)


def read_levers(path: str) -> list[tuple[str, tuple[str, ...]]]:
    out = []
    for line in Path(path).read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append((words[0], tuple(words[1:])))
    return out


def split_bundle(bundle: tuple[str, ...], family: str) -> tuple[str, list[str]]:
    """(family, --set pairs) of a bundle: ``family=NAME`` picks the family, the rest are pairs."""
    pairs = []
    for word in bundle:
        if word.startswith("family="):
            family = word.split("=", 1)[1]
        else:
            pairs.append(word)
    return family, pairs


# (name, lower is better, decimals shown)
METRICS = (("fid", True, 2), ("precision", False, 3), ("recall", False, 3), ("coverage", False, 3))
ROW_KEYS = ("lever", "minutes", "seed", "steps", *(m for m, _, _ in METRICS))


def read_rows(path: Path) -> list[dict]:
    """The rows of an ablation's ``rows.json`` ([] if there is none), checked; CapsgenError if not."""
    from capsgen.errors import CapsgenError

    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CapsgenError(f"{path}: cannot read the ablation's rows ({exc}); move it away or pick another "
                           "--out") from None
    if not (isinstance(rows, list) and all(isinstance(r, dict) and all(k in r for k in ROW_KEYS) for r in rows)):
        raise CapsgenError(f"{path} is not an ablation's rows (a list of rows with {', '.join(ROW_KEYS)}); "
                           "move it away or pick another --out")
    return rows


def record_row(out: Path, row: dict) -> None:
    """Put ``row`` into ``out/rows.json``, replacing an earlier row of the same lever and minutes."""
    from capsgen.train.checkpoint import atomic_write_text

    path = out / "rows.json"
    rows = [r for r in read_rows(path) if (r["lever"], r["minutes"]) != (row["lever"], row["minutes"])] + [row]
    atomic_write_text(path, json.dumps(rows, indent=1) + "\n", mode=0o644)


def summarise(folders: list[str], reference: str) -> list[str]:
    """Markdown lines: per minutes and lever, mean ± sd over the folders' seeds, and verdicts
    against ``reference`` at the same minutes (see the module docstring)."""
    from capsgen.errors import CapsgenError
    from capsgen.reproduce.common import compare, mean_sd_n

    groups: dict[tuple[float, str], list[dict]] = {}
    for folder in folders:
        path = Path(folder) / "rows.json"
        if not path.is_file():
            raise CapsgenError(f"{path} does not exist; run the ablation into {folder} first")
        for r in read_rows(path):
            group = groups.setdefault((r["minutes"], r["lever"]), [])
            if any(g["seed"] == r["seed"] for g in group):
                raise CapsgenError(f"{path}: lever {r['lever']!r} at {r['minutes']:g} minutes, seed {r['seed']}, "
                                   "is in another of the folders too; give each seed's folder once")
            group.append(r)

    def fmt(xs: list[float], digits: int) -> str:
        m, sd, n = mean_sd_n(xs)
        return f"{m:.{digits}f}" if n < 2 else f"{m:.{digits}f} ± {sd:.{digits}f}"

    lines = []
    for minutes in sorted({m for m, _ in groups}):
        ref = groups.get((minutes, reference))
        lines += ["", f"{minutes:g} minutes per run; verdicts against {reference!r} "
                      f"({'no such row' if ref is None else f'{len(ref)} seed(s)'})", "",
                  "| lever | seeds | steps | FID | precision | recall | coverage | verdicts |",
                  "|---|---|---|---|---|---|---|---|"]
        for (mins, lever), rs in sorted(groups.items()):
            if mins != minutes:
                continue
            rs = sorted(rs, key=lambda r: r["seed"])
            verdicts = []
            if ref is not None and lever != reference:
                for metric, lower, _ in METRICS:
                    v = compare([r[metric] for r in rs], [r[metric] for r in ref], lower_is_better=lower)
                    verdicts.append(f"{metric} " + {"a": "better", "b": "worse", "spread": "not resolved"}.get(v, v))
            lines.append(f"| {lever} | {','.join(str(r['seed']) for r in rs)} | {fmt([r['steps'] for r in rs], 0)} | "
                         + " | ".join(fmt([r[m] for r in rs], d) for m, _, d in METRICS)
                         + f" | {'; '.join(verdicts) or '–'} |")
            lines.append(f"| (per seed) | | {' / '.join(str(r['steps']) for r in rs)} | "
                         + " | ".join(" / ".join(f"{r[m]:.{d}f}" for r in rs) for m, _, d in METRICS) + " | |")
    return lines


def main() -> int:
    if "--summarise" in sys.argv[1:]:
        sp = argparse.ArgumentParser(description="mean ± sd over seeds of earlier ablations' rows.json")
        sp.add_argument("--summarise", nargs="+", required=True, metavar="OUT", help="--out folders, one per seed")
        sp.add_argument("--reference", default="dcgan", help="the lever every other is compared with")
        sargs = sp.parse_args()
        from capsgen.errors import CapsgenError

        try:
            print("\n".join(summarise(sargs.summarise, sargs.reference)))
        except CapsgenError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist-5k")
    ap.add_argument("--data-dir")
    ap.add_argument("--minutes", type=float, default=3.0, help="training wall clock per lever")
    ap.add_argument("--family", default="capsulegan")
    ap.add_argument("--preset", help="a preset of --family applied before every bundle")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=2000, help="samples per lever for the metrics")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applied to every lever")
    ap.add_argument("--lever", action="append", nargs="+", metavar=("NAME", "KEY=VALUE"),
                    help="a named bundle of --set values (repeatable)")
    ap.add_argument("--levers", help="file with one bundle per line: NAME KEY=VALUE …")
    ap.add_argument("--out", default=f"/tmp/capsgen-ablation-{time.strftime('%Y%m%d-%H%M%S')}")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from capsgen import runs
    from capsgen.data import load_split
    from capsgen.errors import CapsgenError
    from capsgen.eval.evaluator import get_evaluator
    from capsgen.eval.report_metrics import evaluate_samples
    from capsgen.sampling import generate_images
    from capsgen.train.checkpoint import read_checkpoint
    from capsgen.train.rundir import RunDir

    levers = list(DEFAULT_LEVERS) if not (args.lever or args.levers) else []
    levers += read_levers(args.levers) if args.levers else []
    levers += [(lv[0], tuple(lv[1:])) for lv in args.lever or []]
    names = [n for n, _ in levers]
    if len(set(names)) != len(names):
        print(f"error: lever names must be distinct, got {', '.join(names)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    plans = []
    name = args.data
    try:
        info = runs.data_info(load_split(args.data, "train", args.data_dir))
        for name, bundle in levers:          # every config and network checked before any training
            family, pairs = split_bundle(bundle, args.family)
            preset = args.preset if family == args.family else None
            tcfg, mcfg = runs.make_configs(family, [*args.set, "train.threads=1", *pairs], preset=preset,
                                           data=args.data, data_dir=args.data_dir, minutes=args.minutes,
                                           batch_size=args.batch_size, seed=args.seed)
            tcfg.steps = None                # the wall clock alone ends every run (drops a preset's steps)
            runs.build_task(tcfg, mcfg, info, "cpu")
            plans.append((name, family, pairs, tcfg, mcfg))
    except CapsgenError as exc:
        print(f"error: {name}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        read_rows(out / "rows.json")         # a damaged rows.json stops us now, not after the training
    except CapsgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ev = get_evaluator(args.data, args.data_dir)
    print(f"torch {torch.__version__}, 1 thread; {args.data}, {args.minutes:g} min per lever, batch {args.batch_size}, "
          f"seed {args.seed}; metrics of {args.n} samples on the capsgen evaluator ({100 * ev.accuracy:.2f}%)",
          flush=True)
    head = f"{'lever':<16} {'family':<11} {'steps':>6} {'ms/step':>8} {'FID':>8} {'prec':>6} {'recall':>6} " \
           f"{'cover':>6} {'D acc':>6}  settings"
    rows = []
    for name, family, pairs, tcfg, mcfg in plans:
        path = out / name
        if RunDir(path).is_run():
            _, final = runs.resume(path, minutes=args.minutes, progress=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            _, final = runs.train_new(tcfg, mcfg, path, progress=False)
        _, meta = read_checkpoint(RunDir(path).checkpoint("last"))
        steps, secs = meta["state"]["step"], meta["state"]["elapsed"]
        _, _, images = generate_images(str(path), args.n, args.seed)
        m = evaluate_samples(images, args.data, evaluator=ev, data_dir=args.data_dir, seed=args.seed,
                             source=name)["samples"]
        row = (f"{name:<16} {family:<11} {steps:>6} {1000 * secs / max(steps, 1):>8.0f} {m['fid']:>8.2f} "
               f"{m['precision']:>6.3f} {m['recall']:>6.3f} {m['coverage']:>6.3f} {final.get('d_acc', float('nan')):>6.3f}"
               f"  {' '.join(pairs) or '(defaults)'}")
        rows.append(row)
        print(row, flush=True)
        record_row(out, {"lever": name, "family": family, "minutes": args.minutes, "seed": args.seed,
                         "data": args.data, "n": args.n, "steps": steps, "ms_per_step": 1000 * secs / max(steps, 1),
                         "fid": m["fid"], "precision": m["precision"], "recall": m["recall"],
                         "coverage": m["coverage"], "d_acc": final.get("d_acc"), "settings": pairs})
    print()
    print(head)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    from capsgen.errors import CapsgenError
    from capsgen.train.loop import Interrupted

    # The loop turns a Ctrl-C into Interrupted after saving a checkpoint; a second Ctrl-C (or one
    # outside training) is a KeyboardInterrupt. Either way the rows and runs made so far stay.
    try:
        sys.exit(main())
    except (Interrupted, KeyboardInterrupt):
        print("interrupted; every finished row is in rows.json, and the same command continues the runs",
              file=sys.stderr)
        sys.exit(130)
    except CapsgenError as exc:      # e.g. a run folder that cannot be resumed
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
