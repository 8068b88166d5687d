"""``capsgen reproduce capsulegan``: Karmakar's and Jaiswal et al. 2018's comparisons, several seeds,
at equal wall clock and at equal iterations.

For every arm (``time``: ``--budget`` minutes each; ``steps``: ``--steps`` iterations each), model
(see :mod:`spec`) and seed, in stages kept in ``results.json`` once finished (re-running the
command resumes):

1. train in ``--curve-points`` segments (``runs.resume(run, steps=k)`` or ``minutes=m``; a resumed
   run is bit-identical to an uninterrupted one) and, between segments, the FID of ``--curve-n``
   samples of the run's last checkpoint: (steps, seconds, FID) along training;
2. sample metrics (FID, KID, IS, precision/recall, density/coverage) of ``--n`` samples;
3. GAM battles of each Jaiswal et al. pair, seed against seed;
4. Label Spreading with each Jaiswal et al. model's samples, and the labelled-only and
   real-unlabelled rows, per seed (the seed draws the labelled subsets);
5. report.md / report.html (report.py), verdicts on mean ± sd over seeds.

The seed of a run decides its initialisation, data order and training latents; the same seed
draws the latents of its samples and the labelled subsets.
"""
from __future__ import annotations

import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from capsgen.errors import CapsgenError
from capsgen.reproduce.capsulegan.spec import (JAISWAL, ModelSpec, Settings, arm_pairs, model_pairs, run_dir,
                                               segment_targets, train_fields)
from capsgen.reproduce.common import Results, open_report_folder

RESULTS_FORMAT = 2   # 1: one seed, one budget (before equal-iteration arms and seeds)


# ------------------------------------------------------------------------------- configurations
def configs(spec: ModelSpec, s: Settings, arm: str, seed: int) -> tuple[Any, Any]:
    """(TrainConfig, model config) of one run: paper preset, scale, lr treatment, --set; checked."""
    from capsgen.runs import make_configs

    return make_configs(spec.family, arm_pairs(arm) + model_pairs(spec, s), preset=spec.preset,
                        **train_fields(spec, s, arm, seed))


def paper_config(spec: ModelSpec) -> dict[str, Any]:
    """The model config of ``spec``'s bare paper preset (what the deviations are measured from)."""
    from capsgen.config import to_dict
    from capsgen.runs import make_configs

    return to_dict(make_configs(spec.family, [], preset=spec.preset, data="digits")[1])


def check_all(s: Settings) -> None:
    """Every model's configs and networks at this data's shape, before any folder is made."""
    from capsgen.data import load_split
    from capsgen.runs import build_task, data_info

    train = load_split(s.data, "train", s.data_dir)   # bad data fails here
    info = data_info(train)
    for spec in s.specs():
        for arm in s.arms():
            tcfg, mcfg = configs(spec, s, arm, s.seeds[0])
            if tcfg.batch_size > len(train):
                raise CapsgenError(f"batch size {tcfg.batch_size} of {spec.name} is larger than the "
                                   f"{len(train)} {s.data} training images; lower --batch-size")
        build_task(tcfg, mcfg, info, "cpu")          # a network that cannot fit the data fails here


# ------------------------------------------------------------------------------------ training
def _reached(path: Path) -> tuple[int, float]:
    from capsgen.train.checkpoint import read_checkpoint
    from capsgen.train.rundir import RunDir

    _, meta = read_checkpoint(RunDir(path).checkpoint("last"))
    return meta["state"]["step"], meta["state"]["elapsed"]


def train_to(spec: ModelSpec, s: Settings, arm: str, seed: int, folder: Path, target: float) -> dict[str, Any]:
    """Train (or continue) one run up to ``target`` (steps or minutes by arm)."""
    from capsgen import runs
    from capsgen.train.rundir import RunDir

    path = run_dir(folder, arm, spec.name, seed)
    budget = {"steps": int(target)} if arm == "steps" else {"minutes": target}
    if RunDir(path).is_run():
        _, final = runs.resume(path, **budget)
    else:
        tcfg, mcfg = configs(spec, s, arm, seed)
        tcfg.steps, tcfg.minutes = budget.get("steps"), budget.get("minutes")
        path.parent.mkdir(parents=True, exist_ok=True)
        _, final = runs.train_new(tcfg, mcfg, path)
    return final


class CurveFID:
    """FID of a run's current samples against real test images, on the evaluator's features.

    The real features are computed once per seed (the test subset is drawn by the seed); the
    samples' latents are drawn from the seed, so two runs of one seed are scored on the same
    latents and the same real images.
    """

    def __init__(self, s: Settings, evaluator: Any):
        self.s, self.ev = s, evaluator
        self._ref: dict[int, torch.Tensor] = {}

    def __call__(self, path: Path, seed: int) -> float:
        from capsgen.data import load_split
        from capsgen.eval.metrics import fid
        from capsgen.sampling import generate_images

        if seed not in self._ref:
            test = load_split(self.s.data, "test", self.s.data_dir)
            n = min(self.s.curve_n, len(test))
            idx = np.sort(np.random.default_rng(seed).permutation(len(test))[:n])
            self._ref[seed] = self.ev.features(test.images[idx])
        _, _, images = generate_images(str(path), self.s.curve_n, seed)
        return fid(self._ref[seed], self.ev.features(images))


def train_model(spec: ModelSpec, s: Settings, arm: str, seed: int, folder: Path, res: "Results",
                curve: CurveFID) -> dict[str, Any]:
    """Every segment of one run (each its own stage), then what the run reached."""
    from capsgen.train.rundir import RunDir

    total = s.steps if arm == "steps" else s.budget
    targets = segment_targets(total, s.curve_points, integer=arm == "steps")
    path = run_dir(folder, arm, spec.name, seed)
    points = []
    for i, target in enumerate(targets):
        def segment(target=target) -> dict[str, Any]:
            final = train_to(spec, s, arm, seed, folder, target)
            step, elapsed = _reached(path)
            point = {"steps": step, "seconds": round(elapsed, 1), "final": final}
            if s.curve_points:
                point["fid"] = curve(path, seed)
            return point
        points.append(res.stage(f"segment/{arm}/{spec.name}/seed{seed}/{i + 1}", segment))
    step, elapsed = _reached(path)
    cfg = RunDir(path).read_config()
    batch = cfg["train"]["batch_size"]
    per_step = batch / (cfg["model"]["n_dis"] + 1) * cfg["model"]["n_dis"] \
        if cfg["model"].get("schedule") == "alternate" else batch     # G steps of 'alternate' see no reals
    return {"run": str(path), "steps": step, "seconds": round(elapsed, 1), "real_images_seen": int(step * per_step),
            "final": points[-1]["final"], "model": cfg["model"], "train": cfg["train"],
            "params": _param_counts(path),
            "curve": [{k: p[k] for k in ("steps", "seconds", "fid") if k in p} for p in points if "fid" in p]}


def _param_counts(path: Path) -> dict[str, int]:
    from capsgen.runs import open_run

    modules = open_run(path).task.modules
    return {name: sum(p.numel() for p in modules[name].parameters()) for name in ("generator", "discriminator")}


# ---------------------------------------------------------------------------------- evaluation
def sample_metrics(path: Path, s: Settings, seed: int, evaluator: Any, name: str) -> dict[str, Any]:
    from capsgen.eval.report_metrics import evaluate_samples
    from capsgen.sampling import generate_images

    _, _, images = generate_images(str(path), s.n_metrics, seed)
    return evaluate_samples(images, s.data, evaluator=evaluator, data_dir=s.data_dir, seed=seed, source=name)


def real_unlabelled(s: Settings, seed: int) -> np.ndarray:
    """Up to ``generated`` real training images outside every labelled subset of ``seed`` (reference row).

    The labelled subsets of different sizes are drawn independently, so their union can exceed
    the largest one (10,906 images for 100/1,000/10,000 of Fashion-MNIST) and fewer than
    ``generated`` images may remain: then all that remain are used, and the report says how many.
    """
    from capsgen.data import load_split
    from capsgen.eval.semisup import labelled_subset

    train = load_split(s.data, "train", s.data_dir)
    used = np.zeros(len(train), bool)
    for n in s.labelled:
        used[labelled_subset(train.labels, n, seed, s.labelled_draw)] = True
    rest = np.flatnonzero(~used)
    pick = np.random.default_rng(seed).permutation(rest)[: s.generated]
    return train.images[np.sort(pick)]


def semisup_kw(s: Settings, seed: int) -> dict[str, Any]:
    return dict(labelled=tuple(s.labelled), seed=seed, data_dir=s.data_dir, test_n=s.semisup_test_n,
                draw=s.labelled_draw)


def semisup_real_row(s: Settings, seed: int) -> dict[str, Any]:
    """The reference row of the semi-supervised table: real images as the unlabelled data."""
    from capsgen.compare import semisup

    images = real_unlabelled(s, seed)
    return semisup(images, s.data, generated=len(images), **semisup_kw(s, seed))


def copy_figures(folder: Path, s: Settings) -> dict[str, dict[str, str]]:
    """Each model's sample grid and curves (first arm, first seed) into figures/ (report-relative)."""
    from capsgen.train.rundir import RunDir

    out = folder / "figures"
    out.mkdir(exist_ok=True)
    found: dict[str, dict[str, str]] = {}
    arm, seed = s.arms()[0], s.seeds[0]
    for spec in s.specs():
        src = RunDir(run_dir(folder, arm, spec.name, seed)).figures
        for kind in ("samples", "gan_curves", "interpolation"):
            if (src / f"{kind}.png").exists():
                dst = out / f"{spec.name}_{kind}.png"
                shutil.copyfile(src / f"{kind}.png", dst)
                found.setdefault(spec.name, {})[kind] = f"figures/{dst.name}"
    specs = s.specs()
    real = RunDir(run_dir(folder, arm, specs[0].name, seed)).figure("real.png") if specs else None
    if real is not None and real.exists():
        shutil.copyfile(real, out / "real.png")
        found["real"] = {"samples": "figures/real.png"}
    return found


def run(s: Settings) -> Path:
    """Every stage of the reproduction into ``s.out``; returns the path of report.md."""
    from capsgen.compare import battle, semisup
    from capsgen.eval.evaluator import get_evaluator
    from capsgen.reproduce.capsulegan.report import write_reports

    folder = open_report_folder(s)
    check_all(s)                                    # bad data, --set or network: before any folder
    if (folder / "results.json").is_file():
        Results(folder, s, fmt=RESULTS_FORMAT)      # other settings: refused before any work
    folder.mkdir(parents=True, exist_ok=True)
    res = Results(folder, s, fmt=RESULTS_FORMAT)
    t_start = time.perf_counter()
    ev = get_evaluator(s.data, s.data_dir)
    res.stage("evaluator", lambda: {"accuracy": ev.accuracy, "n_test": ev.n_test, "path": str(ev.path)})
    res.data["paper_configs"] = {spec.name: paper_config(spec) for spec in s.specs()}
    curve = CurveFID(s, ev)
    for arm in s.arms():
        for seed in s.seeds:
            for spec in s.specs():
                res.stage(f"train/{arm}/{spec.name}/seed{seed}",
                          lambda spec=spec, seed=seed, arm=arm: train_model(spec, s, arm, seed, folder, res, curve))
    for arm in s.arms():
        for seed in s.seeds:
            for spec in s.specs():
                res.stage(f"metrics/{arm}/{spec.name}/seed{seed}",
                          lambda spec=spec, seed=seed, arm=arm: sample_metrics(
                              run_dir(folder, arm, spec.name, seed), s, seed, ev, spec.name))
    jaiswal = [(a, b) for a, b, paper in s.pairs() if paper == JAISWAL]     # GAM and Label Spreading are theirs
    for arm in s.arms():
        for seed in s.seeds:
            for a, b in jaiswal:
                res.stage(f"battle/{arm}/{a}-vs-{b}/seed{seed}",
                          lambda a=a, b=b, seed=seed, arm=arm: battle(
                              run_dir(folder, arm, a, seed), run_dir(folder, arm, b, seed), n=s.n_battle,
                              seed=seed, tol=s.tol, data_dir=s.data_dir))
    if jaiswal:
        for seed in s.seeds:
            res.stage(f"semisup/labelled-only/seed{seed}",
                      lambda seed=seed: semisup(None, s.data, generated=0, **semisup_kw(s, seed)))
            res.stage(f"semisup/real-unlabelled/seed{seed}", lambda seed=seed: semisup_real_row(s, seed))
        for arm in s.arms():
            for seed in s.seeds:
                for name in sorted({m for pair in jaiswal for m in pair}):
                    res.stage(f"semisup/{arm}/{name}/seed{seed}",
                              lambda name=name, seed=seed, arm=arm: semisup(
                                  run_dir(folder, arm, name, seed), None, generated=s.generated,
                                  **semisup_kw(s, seed)))
    figures = copy_figures(folder, s)
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
           "this_invocation_seconds": round(time.perf_counter() - t_start, 1)}
    return write_reports(folder, s, res.data, figures, env)
