"""``capsgen reproduce twins``: every capsule model against its matched twin, over seeds.

Stages, each kept in ``results.json`` once finished (the same command continues an interrupted
reproduction, also inside an interrupted training run):

1. ``train/<pair>/s<seed>/<arm>`` for arm in :data:`~.spec.ARMS`, in the order capsule,
   twin-time, twin-steps for each seed, so the two arms of a seed train minutes apart on the same
   machine. What each reached: steps, seconds, ms per step (the step cost, measured in this run),
   parameters per module.
2. ``eval/<pair>/s<seed>/<arm>``: :func:`capsgen.eval.run_eval.evaluate_run` on the last weights
   (``n`` test images and samples), reduced to the headline metric of every capability
   (:data:`~.spec.METRICS`), and for generative runs a grid of seed-0 samples.
3. report.md / report.html (report.py): per pair, mean ± sd over seeds of each arm, and the
   verdict of :func:`~capsgen.reproduce.common.compare` for capsule vs twin at equal time and at
   equal steps.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from capsgen.errors import CapsgenError
from capsgen.reproduce.common import Results, open_report_folder, say
from capsgen.reproduce.overrides import applicable, check_extra
from capsgen.reproduce.twins.spec import ARMS, Settings, headline, split_pair

GRID_N = 64


def twin_pairs() -> tuple[str, ...]:
    """The default pairs: those of PAIRS whose family has a twin."""
    from capsgen.models import FAMILIES
    from capsgen.reproduce.twins.spec import PAIRS

    return tuple(p for p in PAIRS if split_pair(p)[0] in FAMILIES and FAMILIES[split_pair(p)[0]].config_cls.TWIN)


def configs(pair: str, s: Settings, seed: int, twin: bool, steps: int | None,
            minutes: float | None = None) -> tuple[Any, Any]:
    """The run configs of one arm: exactly ``steps`` steps, or else ``minutes`` (default ``s.budget``)
    of wall clock alone."""
    from capsgen import runs

    family, preset = split_pair(pair)
    own = ["model.twin=true"] if twin else []
    base = [*runs.preset_pairs(family, preset), *own]
    tcfg, mcfg = runs.make_configs(family, [*own, *applicable(family, base, s.extra)], preset=preset,
                                   data=s.data, data_dir=s.data_dir, seed=seed)
    if mcfg.fixed_steps() is None:
        # a preset's own length (karmakar's 10,000 steps) gives way to the experiment's budget
        tcfg.epochs = None
        tcfg.steps, tcfg.minutes = (steps, None) if steps is not None else (None, minutes or s.budget)
    return tcfg, mcfg


def check_all(s: Settings, info: Any) -> None:
    """Every pair's family, twin, config and network (built on the meta device: shapes only, for
    the data ``info``) checked before anything is written."""
    from capsgen import runs
    from capsgen.models import FAMILIES

    if (s.budget is None) == (s.steps is None):
        raise CapsgenError("give --budget MINUTES or --steps N (the capsule run's length), not both")
    if s.budget is not None and not s.budget > 0:
        raise CapsgenError(f"--budget must be a positive number of minutes, got {s.budget:g}")
    if s.steps is not None and s.steps < 1:
        raise CapsgenError(f"--steps must be a positive number of steps, got {s.steps}")
    if s.n < 10:
        raise CapsgenError(f"--n must be at least 10 (test images and samples per evaluation), got {s.n}")
    if not s.pairs:
        raise CapsgenError("no pair to compare: no registered family has a twin")
    for pair in s.pairs:
        family, _ = split_pair(pair)
        if family not in FAMILIES:
            raise CapsgenError(f"--pairs {pair}: unknown family {family!r}; choose from {', '.join(twin_pairs())}")
        if not FAMILIES[family].config_cls.TWIN:
            raise CapsgenError(f"--pairs {pair}: {family} has no twin (capsgen models lists the families that do)")
    check_extra(s.extra, sorted({split_pair(p)[0] for p in s.pairs}))
    for pair in s.pairs:
        for twin in (False, True):
            tcfg, mcfg = configs(pair, s, s.seeds[0], twin, s.steps, 1.0)
            runs.build_task(tcfg, mcfg, info, "meta")


def run_dir_of(folder: Path, pair: str, seed: int, arm: str) -> Path:
    return folder / "runs" / pair.replace(":", "-") / f"s{seed}-{arm}"


def train_arm(folder: Path, pair: str, s: Settings, seed: int, arm: str, steps: int | None,
              minutes: float | None = None) -> dict[str, Any]:
    """Train (or continue) one arm's run for ``steps``, or else ``minutes`` (default the budget); what it reached."""
    from capsgen import runs
    from capsgen.runs import open_run
    from capsgen.train.checkpoint import read_checkpoint
    from capsgen.train.rundir import RunDir

    path = run_dir_of(folder, pair, seed, arm)
    if RunDir(path).is_run():
        say(f"{pair} seed {seed} {arm}: continuing {path}")
        if steps is None:
            runs.resume(path, minutes=minutes or s.budget, progress=False)
        else:
            runs.resume(path, steps=steps, progress=False)
    else:
        tcfg, mcfg = configs(pair, s, seed, arm != "capsule", steps, minutes)
        budget = f"{tcfg.steps} steps" if tcfg.minutes is None else f"{tcfg.minutes:.4g} minutes"
        say(f"{pair} seed {seed} {arm}: training for {budget} into {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        runs.train_new(tcfg, mcfg, path, progress=False)
    _, meta = read_checkpoint(RunDir(path).checkpoint("last"))
    done, secs = meta["state"]["step"], meta["state"]["elapsed"]
    modules = open_run(path, "last").task.modules
    return {"run": str(path.relative_to(folder)), "steps": done, "seconds": round(secs, 1),
            "ms_per_step": round(1000 * secs / max(done, 1), 2),
            "params": {k: sum(p.numel() for p in m.parameters()) for k, m in modules.items()
                       if k != "generator_ema"}}


def evaluate_arm(folder: Path, pair: str, s: Settings, seed: int, arm: str) -> dict[str, Any]:
    from capsgen.eval.run_eval import evaluate_run
    from capsgen.sampling import generate_images

    path = run_dir_of(folder, pair, seed, arm)
    res = evaluate_run(str(path), n=s.n, seed=seed, which="last", data_dir=s.data_dir)
    out: dict[str, Any] = {"metrics": headline(res), "capabilities": res["capabilities"]}
    if s.grids and seed == s.seeds[0] and "generate" in res["capabilities"]:
        from capsgen.report.figures import save_image_grid

        _, _, images = generate_images(str(path), GRID_N, seed)
        grid = folder / "figures" / f"{pair.replace(':', '-')}-{arm}.png"
        grid.parent.mkdir(exist_ok=True)
        save_image_grid(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, grid, ncol=8)
        out["grid"] = str(grid.relative_to(folder))
    return out


def arm_length(res: Results, s: Settings, pair: str, seed: int, arm: str) -> tuple[int | None, float | None]:
    """(steps, minutes) of one arm: the capsule run's own; twin-steps its steps; twin-time the budget,
    or with --steps the wall clock the capsule run took."""
    cap = res.get(f"train/{pair}/s{seed}/capsule")
    if arm == "capsule":
        return s.steps, None
    if arm == "twin-steps":
        return cap["steps"], None
    return None, (cap["seconds"] / 60 if s.steps is not None else None)


def run(s: Settings) -> Path:
    """Every stage into ``s.out``; returns the path of report.md."""
    from capsgen.data import load_split
    from capsgen.reproduce.twins.report import write_reports

    if not s.pairs:
        s.pairs = twin_pairs()
    from capsgen import runs

    folder = open_report_folder(s)
    load_split(s.data, "test", s.data_dir)        # bad data fails before any folder is made
    check_all(s, runs.data_info(load_split(s.data, "train", s.data_dir)))
    folder.mkdir(parents=True, exist_ok=True)
    res = Results(folder, s)
    for seed in s.seeds:
        for pair in s.pairs:
            family_fixed = configs(pair, s, seed, False, None)[1].fixed_steps() is not None
            for arm in ARMS:
                if arm == "twin-steps" and family_fixed:
                    continue          # the config fixes the length: twin-time is already equal steps
                res.stage(f"train/{pair}/s{seed}/{arm}",
                          lambda pair=pair, arm=arm: train_arm(folder, pair, s, seed, arm,
                                                               *arm_length(res, s, pair, seed, arm)))
                res.stage(f"eval/{pair}/s{seed}/{arm}",
                          lambda pair=pair, arm=arm: evaluate_arm(folder, pair, s, seed, arm))
    return write_reports(folder, s, res.data)

