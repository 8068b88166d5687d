"""``capsgen reproduce poe``: Hauser's products of expert capsules, the paper's setting and the
centred one, against a DCGAN given the same wall clock.

Stages, each kept in ``results.json`` once finished (running the same command again resumes,
also inside an interrupted training run, whose stage is a function of its step):

1. ``calibrate/<arm>``: a few steps of every stage of a throw-away copy of the arm's model on
   the real data, timed; the arm's ``ae_steps`` / ``w_steps`` / ``u_steps`` are then chosen so
   the run fills ``budget`` minutes (:data:`~.spec.STAGE_SHARES`; ``--set model.ae_steps=…``
   etc. override the plan).
2. ``train/<arm>``: one ``poe`` run per arm (``hauser`` = the preset of the same name, the paper
   as printed; ``centred`` = the family's defaults). A run whose rule diverges keeps its last
   good checkpoint and is recorded as diverged.
3. ``train/baseline``: the baseline family (``dcgan``) for the mean wall clock the poe runs took.
4. ``measure/<arm>``, ``measure/baseline``: errors per stage on the test split; per_capsule
   samples of every capsule on the full sphere, on the restricted half and negated, all from the
   same poses; their negative shares, the evaluator classifier's class of each (per-capsule
   purity), their spread, FID/KID/precision/recall (:func:`capsgen.eval.report_metrics.evaluate_samples`);
   figure-2 grids.
5. report.md / report.html (report.py).
"""
from __future__ import annotations

import dataclasses
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from capsgen.errors import CapsgenError
from capsgen.reproduce.poe.spec import (ARM_CHOICES, ARM_PAIRS, ARM_PRESET, EVAL_SHARE, TWIN_OF, EVALS_PER_RUN, STAGE_SHARES, STAT_STEPS,
                                        Settings)
from capsgen.reproduce.common import Results, open_report_folder, say
from capsgen.reproduce.overrides import applicable, check_extra

CALIBRATION_STEPS = 4          # timed steps per stage (the first of each is a warm-up and not counted)
TEST_IMAGES = 500              # test images of the error measurements
REAL_PER_CLASS = 200           # real test images per class for the within-class spread


# ------------------------------------------------------------------------------ configs
# the train fields this reproduction sets from its own options (capsgen.reproduce.overrides)
OWN_FLAGS = {"data": "--data", "data_dir": "--data-dir", "seed": "--seed", "batch_size": "--batch-size",
             "minutes": "--budget", "epochs": "--budget", "steps": "--budget"}


def arm_pairs(arm: str, extra: tuple[str, ...]) -> list[str]:
    """The arm's own pairs and the ``--set`` pairs of ``extra`` that its poe model reads: the twin
    drops the capsule-only fields (PoEConfig.CAPSULE_FIELDS), the capsule arms the twin-only one."""
    from capsgen.models.poe.config import PoEConfig

    skip = set(PoEConfig.CAPSULE_FIELDS) if arm == "twin" else {"em_batches"}
    keep = [p for p in applicable("poe", [], extra) if p.split("=", 1)[0].strip().rpartition(".")[2] not in skip]
    return [*ARM_PAIRS[arm], *keep]


def arm_configs(s: Settings, arm: str, stages: dict[str, int]) -> tuple[Any, Any]:
    """The poe run of ``arm`` with the planned stage lengths (a user's --set of them wins)."""
    from capsgen import runs

    total = sum(stages.values())
    plan = [f"model.ae_steps={stages['ae']}", f"model.stat_steps={stages['stats']}",
            f"model.w_steps={stages['w']}", f"model.u_steps={stages['u']}",
            f"train.eval_every={max(1, total // EVALS_PER_RUN)}", "train.checkpoint_every=50", "train.log_every=10"]
    return runs.make_configs("poe", [*plan, *arm_pairs(arm, s.extra)], preset=ARM_PRESET[arm], data=s.data,
                             data_dir=s.data_dir, seed=s.seed, batch_size=s.batch_size)


def baseline_configs(s: Settings, minutes: float) -> tuple[Any, Any]:
    from capsgen import runs

    return runs.make_configs(s.baseline, applicable(s.baseline, [], s.extra), data=s.data, data_dir=s.data_dir,
                             seed=s.seed, batch_size=s.batch_size, minutes=minutes)


# ------------------------------------------------------------------------------ stages
def calibrate(s: Settings, arm: str) -> dict[str, Any]:
    """Seconds per step of each stage: CALIBRATION_STEPS steps of each on training batches of a
    fresh copy of the arm's model (the first step of each stage not counted), and the plan."""
    from capsgen import runs
    from capsgen.data import load_split
    from capsgen.train.loop import epoch_order, step_generator
    from capsgen.train.task import StepContext

    n = CALIBRATION_STEPS
    tcfg, mcfg = arm_configs(s, arm, {"ae": n, "stats": n, "w": n, "u": n})
    # n steps of every stage whatever the user set (a --set of the lengths decides the real run only)
    mcfg = dataclasses.replace(mcfg, ae_steps=n, stat_steps=n, w_steps=n, u_steps=n)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    train = load_split(s.data, "train", s.data_dir)
    task = runs.build_task(tcfg, mcfg, runs.data_info(train), "cpu")
    batch = train.to_batch()
    order = epoch_order(s.seed, 0, len(batch))
    spe = len(batch) // s.batch_size
    times: dict[str, list[float]] = {}
    task.train_mode(True)
    for step in range(4 * n):
        idx = order[(step % spe) * s.batch_size:(step % spe + 1) * s.batch_size]
        ctx = StepContext(step, step / spe, spe, step_generator(s.seed, step), s.batch_size)
        t0 = time.perf_counter()
        task.train_step(batch[idx], ctx)
        times.setdefault(mcfg.stage_of(step)[0], []).append(time.perf_counter() - t0)
    per_step = {k: statistics.median(v[1:]) for k, v in times.items()}
    seconds = s.budget * 60 * (1 - EVAL_SHARE) - STAT_STEPS * per_step["stats"]
    plan = {"ae": max(1, int(STAGE_SHARES["ae"] * seconds / per_step["ae"])), "stats": STAT_STEPS,
            "w": max(1, int(STAGE_SHARES["w"] * seconds / per_step["w"])),
            "u": max(1, int(STAGE_SHARES["u"] * seconds / per_step["u"]))}
    return {"seconds_per_step": per_step, "plan": plan, "threads": torch.get_num_threads()}


def _stopped(run_dir: Path) -> tuple[int, float]:
    from capsgen.train.checkpoint import read_checkpoint
    from capsgen.train.rundir import RunDir

    _, meta = read_checkpoint(RunDir(run_dir).checkpoint("last"))
    return meta["state"]["step"], meta["state"]["elapsed"]


def train_run(folder: Path, name: str, make: Callable[[], tuple[Any, Any]]) -> dict[str, Any]:
    """Train (or continue) the run ``runs/<name>``; a divergence is recorded, not raised."""
    from capsgen import runs
    from capsgen.train.loop import Diverged
    from capsgen.train.rundir import RunDir

    run_dir = folder / "runs" / name
    diverged = None
    try:
        if RunDir(run_dir).is_run():
            say(f"{name}: continuing {run_dir}")
            runs.resume(run_dir, progress=False)
        else:
            tcfg, mcfg = make()
            say(f"{name}: training {tcfg.family} into {run_dir}"
                + (f" ({tcfg.steps} steps)" if tcfg.steps else f" for {tcfg.minutes:.2f} minutes"))
            runs.train_new(tcfg, mcfg, run_dir, progress=False)
    except Diverged as exc:
        diverged = str(exc).split(";")[0]
        say(f"{name}: diverged ({diverged}); its last good checkpoint is kept")
    step, elapsed = _stopped(run_dir)
    cfg = RunDir(run_dir).read_config()
    return {"run": str(run_dir.relative_to(folder)), "steps": step, "seconds": round(elapsed, 1),
            "diverged": diverged, "model": cfg["model"], "train": cfg["train"]}


def _pairwise_spread(x: torch.Tensor) -> float:
    """Mean pixel-space distance between distinct pairs of images [n, ...] (RMS per pixel)."""
    flat = x.flatten(1)
    n = len(flat)
    if n < 2:
        return 0.0
    d = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
    return float(d.sum() / (n * (n - 1)))


def class_purity(pred: torch.Tensor, groups: torch.Tensor, num_groups: int, num_classes: int) -> dict[str, Any]:
    """Per group (capsule) the dominant class of pred and its share; pooled over all groups too."""
    per = []
    for j in range(num_groups):
        counts = torch.bincount(pred[groups == j], minlength=num_classes)
        per.append({"class": int(counts.argmax()), "purity": float(counts.max() / counts.sum().clamp(min=1))})
    pooled = torch.bincount(pred, minlength=num_classes)
    return {"per_capsule": per, "mean": statistics.fmean(p["purity"] for p in per),
            "pooled": float(pooled.max() / pooled.sum()), "classes": len({p["class"] for p in per}),
            "class_shares": (pooled.float() / pooled.sum()).tolist()}


def _save_grid(images: torch.Tensor, folder: Path, name: str, ncol: int) -> str:
    from capsgen.report.figures import save_image_grid

    return str(save_image_grid(images, folder / "figures" / name, ncol=ncol, scale=2).relative_to(folder))


def _real_by_class(test: Any) -> dict[int, torch.Tensor]:
    return {int(k): test.images[test.labels == k][:REAL_PER_CLASS] for k in test.labels.unique()}


def measure_arm(s: Settings, arm: str, folder: Path, evaluator: Any, test: Any) -> dict[str, Any]:
    """:func:`measure_run` of the arm's run, ``runs/<arm>``."""
    return measure_run(s, folder / "runs" / arm, arm, folder, evaluator, test)


def measure_run(s: Settings, run_dir: Path, arm: str, folder: Path, evaluator: Any, test: Any) -> dict[str, Any]:
    """Errors, negatives, per-capsule purity and spread, sample metrics and grids of one poe run
    (figures named after ``arm``, under ``folder``). A twin run (``--twin``) is measured the same
    way, with its mixture components in the place of the code capsules: "capsule j" is then
    component j, so its purity is the share of component j's samples in their dominant class."""
    from capsgen.eval.report_metrics import evaluate_samples
    from capsgen.models.poe.nets import negative_mask
    from capsgen.models.poe.task import GRID_ROWS
    from capsgen.report.figures import to_uint8_hwc
    from capsgen.runs import open_run

    opened = open_run(run_dir, "last")
    task = opened.task
    if not task.decoder_ready():
        return {"no_decoder": f"the run stopped before U (a twin: its mixture) was trained (steps per stage "
                              f"{task.steps_done()})"}
    J, R = task.num_capsules(), s.per_capsule
    task.config.eval_n = min(TEST_IMAGES, len(test))     # in memory only: errors on more test images
    out: dict[str, Any] = {"errors": task.evaluate(test), "steps_done": task.steps_done()}
    images = {}
    for name, domain, negate in (("full", "full", False), ("restricted", "restricted", False),
                                 ("negated", "full", True)):
        g = torch.Generator().manual_seed(s.seed + 17)      # the same poses in every variant
        images[name] = task.capsule_grid(R, domain, g, negate)   # [R * J], row r, column j
    capsule = torch.arange(J).repeat(R)
    neg = {k: negative_mask(v) for k, v in images.items()}
    full_neg = neg["full"]
    out["negatives"] = {
        "full": float(full_neg.float().mean()), "restricted": float(neg["restricted"].float().mean()),
        "negated": float(neg["negated"].float().mean()),
        # of the full-sphere samples that are negatives, the share whose pose -g gives a positive
        "negation_fixes": float((~neg["negated"][full_neg]).float().mean()) if full_neg.any() else None,
        # of the positives, the share whose -g gives a negative
        "negation_breaks": float(neg["negated"][~full_neg].float().mean()) if (~full_neg).any() else None,
        "per_capsule_full": [float(full_neg[capsule == j].float().mean()) for j in range(J)],
        "n": len(full_neg)}
    real = _real_by_class(test)
    real_spread = {k: _pairwise_spread(v) for k, v in real.items()}
    for domain in ("full", "restricted"):
        x = images[domain]
        pred = evaluator.probs(x).argmax(1)
        purity = class_purity(pred, capsule, J, evaluator.num_classes)
        for j, p in enumerate(purity["per_capsule"]):
            own = _pairwise_spread(x[capsule == j])
            p["spread"] = own
            p["spread_ratio"] = own / real_spread[p["class"]] if real_spread.get(p["class"]) else None
        ratios = [p["spread_ratio"] for p in purity["per_capsule"] if p["spread_ratio"] is not None]
        purity["mean_spread_ratio"] = statistics.fmean(ratios) if ratios else None
        out[domain] = {"purity": purity,
                       "metrics": evaluate_samples(to_uint8_hwc(x), s.data, None, evaluator, data_dir=s.data_dir,
                                                   seed=s.seed, source=f"{arm} samples ({domain})")}
    rows = GRID_ROWS * J
    out["grids"] = {name: _save_grid(images[name][:rows], folder, f"{arm}_{name}.png", J) for name in images}
    picks = [int((test.labels == c).nonzero()[0]) for c in range(min(10, evaluator.num_classes))
             if (test.labels == c).any()]
    out["grids"]["reconstructions"] = _save_grid(task.reconstruction_rows(test.images[picks]), folder,
                                                 f"{arm}_reconstructions.png", len(picks))
    return out


def measure_baseline(s: Settings, folder: Path, evaluator: Any, n: int, J: int) -> dict[str, Any]:
    from capsgen.eval.report_metrics import evaluate_samples
    from capsgen.models.poe.nets import negative_mask
    from capsgen.report.figures import to_uint8_hwc
    from capsgen.runs import open_run
    from capsgen.sampling import require

    task = require(open_run(folder / "runs" / "baseline", "last"), "generate")
    x = task.sample(n, torch.Generator().manual_seed(s.seed + 17))
    pred = evaluator.probs(x).argmax(1)
    pooled = torch.bincount(pred, minlength=evaluator.num_classes)
    return {"negatives": float(negative_mask(x).float().mean()), "pooled": float(pooled.max() / pooled.sum()),
            "class_shares": (pooled.float() / pooled.sum()).tolist(),
            "metrics": evaluate_samples(to_uint8_hwc(x), s.data, None, evaluator, data_dir=s.data_dir, seed=s.seed,
                                        source=f"{s.baseline} samples"),
            "grid": _save_grid(x[:4 * J], folder, "baseline_samples.png", J)}


# ------------------------------------------------------------------------------ the whole experiment
def check_settings(s: Settings) -> None:
    from capsgen.models import FAMILIES

    if not s.budget > 0:
        raise CapsgenError(f"--budget must be a positive number of minutes, got {s.budget:g}")
    if s.seed < 0 or s.batch_size < 1 or s.per_capsule < 2:
        raise CapsgenError(f"--seed must be >= 0, --batch-size >= 1 and --per-capsule >= 2 "
                           f"(got {s.seed}, {s.batch_size}, {s.per_capsule})")
    bad = [a for a in s.arms if a not in ARM_CHOICES]
    if bad or not s.arms:
        raise CapsgenError(f"unknown --arms {','.join(bad) or '(none)'}; choose from: {', '.join(ARM_CHOICES)}")
    if s.baseline != "none":
        if s.baseline not in FAMILIES:
            raise CapsgenError(f"--baseline {s.baseline!r} is not a family; choose one of: "
                               f"{', '.join(sorted(FAMILIES))} or none")
        if "generate" not in FAMILIES[s.baseline].capabilities or s.baseline == "poe":
            have = [n for n, f in FAMILIES.items() if "generate" in f.capabilities and n != "poe"]
            raise CapsgenError(f"--baseline {s.baseline} is not another generative family; use one of: "
                               f"{', '.join(have)} or none")


def run(s: Settings) -> Path:
    """Every stage into ``s.out``; returns the path of report.md."""
    from capsgen import runs
    from capsgen.data import load_split
    from capsgen.eval.evaluator import get_evaluator
    from capsgen.reproduce.poe.report import write_reports

    check_settings(s)
    folder = open_report_folder(s)
    test = load_split(s.data, "test", s.data_dir)       # bad data fails before any folder is made
    if test.labels is None:
        raise CapsgenError(f"{s.data} has no class labels; the capsule purity and the sample metrics use "
                           "capsgen's classifier of the dataset")
    s.channels = int(test.images.shape[-1])
    check_extra(s.extra, ["poe"] + ([s.baseline] if s.baseline != "none" else []), OWN_FLAGS)
    info = runs.data_info(load_split(s.data, "train", s.data_dir))
    for arm in s.arms:                                   # every config (and the network) checked first
        tcfg, mcfg = arm_configs(s, arm, {"ae": 1, "stats": 1, "w": 1, "u": 1})
        runs.build_task(tcfg, mcfg, info, "cpu")
    if s.baseline != "none":
        baseline_configs(s, s.budget)
    folder.mkdir(parents=True, exist_ok=True)
    res = Results(folder, s)
    t_start = time.perf_counter()
    for arm in sorted(s.arms, key=lambda a: a == "twin"):      # the twin after the arm whose steps it takes
        cal = res.stage(f"calibrate/{arm}", lambda arm=arm: calibrate(s, arm))
        # the twin at its capsule arm's steps: the same autoencoder training, EM in W's and U's steps
        plan = res.get(f"calibrate/{TWIN_OF}")["plan"] if arm == "twin" and TWIN_OF in s.arms else cal["plan"]
        res.stage(f"train/{arm}", lambda arm=arm, plan=plan: train_run(folder, arm, lambda: arm_configs(s, arm, plan)))
    if s.baseline != "none":
        seconds = [res.get(f"train/{a}")["seconds"] for a in s.arms]
        minutes = statistics.fmean(seconds) / 60
        res.stage("train/baseline", lambda: train_run(folder, "baseline", lambda: baseline_configs(s, minutes)))
    evaluator = get_evaluator(s.data, s.data_dir)
    test_batch = test.to_batch()
    J = None
    for arm in s.arms:
        m = res.stage(f"measure/{arm}", lambda arm=arm: measure_arm(s, arm, folder, evaluator, test_batch))
        J = J or (len(m["full"]["purity"]["per_capsule"]) if "full" in m else None)
    if s.baseline != "none":
        from capsgen.models.poe.config import PoEConfig

        J = J or PoEConfig().code_capsules
        res.stage("measure/baseline", lambda: measure_baseline(s, folder, evaluator, J * s.per_capsule, J))
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "threads": torch.get_num_threads(),
           "processor": platform.processor() or platform.machine(),
           "this_invocation_seconds": round(time.perf_counter() - t_start, 1),
           "train_size": info.train_size, "test_size": len(test.images),
           "shape": tuple(test_batch.images.shape[1:]), "evaluator_accuracy": evaluator.accuracy}
    return write_reports(folder, s, res.data, env)
