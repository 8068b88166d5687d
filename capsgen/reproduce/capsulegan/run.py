"""``capsgen reproduce capsulegan``: DCGAN vs the two CapsuleGANs, with equal wall-clock budgets.

Models (one generator architecture for all three, so only the discriminator and objective differ):

- ``dcgan``: convolutional discriminator, non-saturating BCE (the baseline of both papers);
- ``capsulegan-bce``: CapsNet discriminator with a dense head and BCE (Karmakar);
- ``capsulegan-margin``: CapsNet discriminator whose single output capsule's length is P(real),
  margin-loss objective (Jaiswal et al. 2018, eq. 3).

``--scale cpu`` (default) keeps the families' CPU defaults (small capsule discriminators; the
capsule discriminators learn at lr 2e-5, see ``CapsuleGANConfig``); ``--scale paper`` uses the
paper presets (256-channel discriminators, equal learning rates).

Stages, each kept in ``results.json`` once finished (re-running the command resumes):
train (each model for ``budget`` minutes) -> samples + metrics -> GAM battles -> Label Spreading
-> report.md / report.html.
"""
from __future__ import annotations

import json
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from capsgen.errors import CapsgenError
from capsgen.reproduce.capsulegan.spec import BATTLES, MODELS, SCALES, ModelSpec, Settings
from capsgen.train.checkpoint import atomic_write_text


def say(msg: str) -> None:
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Results:
    """results.json of a reproduce folder: one entry per finished stage, written atomically."""

    def __init__(self, folder: Path, settings: Settings):
        self.path = folder / "results.json"
        self.data: dict[str, Any] = {"settings": settings.identity(), "stages": {}}
        if self.path.exists():
            try:
                old = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise CapsgenError(f"{self.path}: unreadable ({exc}); delete it or choose another --out") from None
            if old.get("settings") != settings.identity():
                diff = sorted(k for k in settings.identity() if old.get("settings", {}).get(k) != settings.identity()[k])
                raise CapsgenError(f"{folder} holds a reproduction with other settings ({', '.join(diff)}); "
                                   "repeat its command or choose another --out")
            self.data = old
        self.data.setdefault("timing", {})

    def get(self, stage: str) -> Any:
        return self.data["stages"].get(stage)

    def put(self, stage: str, value: Any, seconds: float) -> None:
        self.data["stages"][stage] = value
        self.data["timing"][stage] = round(seconds, 1)
        atomic_write_text(self.path, json.dumps(self.data, indent=1, default=float))

    def stage(self, name: str, fn: Callable[[], Any]) -> Any:
        """The stored result of ``name``, or run ``fn`` now and store it."""
        done = self.get(name)
        if done is not None:
            say(f"{name}: done before, kept")
            return done
        say(f"{name} …")
        t0 = time.perf_counter()
        value = fn()
        self.put(name, value, time.perf_counter() - t0)
        return value


def train_pairs(spec: ModelSpec, s: Settings) -> list[str]:
    if s.scale == "cpu":
        return list(spec.cpu)
    from capsgen.models import get_family

    return [*get_family(spec.family).config_cls.PRESETS[spec.preset], *spec.paper_extra]


def train_model(spec: ModelSpec, s: Settings, folder: Path) -> dict[str, Any]:
    """Train (or continue) one model until its time budget is spent; returns what it reached."""
    from capsgen import runs
    from capsgen.train.checkpoint import read_checkpoint
    from capsgen.train.rundir import RunDir

    run_dir = folder / "runs" / spec.name
    if RunDir(run_dir).is_run():
        say(f"{spec.name}: continuing {run_dir} up to {s.budget:g} minutes")
        _, final = runs.resume(run_dir, minutes=s.budget)
    else:
        pairs = train_pairs(spec, s) + ["train.batch_size=%d" % s.batch_size, *s.extra]
        tcfg, mcfg = runs.make_configs(spec.family, pairs, data=s.data, data_dir=s.data_dir,
                                       minutes=s.budget, seed=s.seed)
        say(f"{spec.name}: training for {s.budget:g} minutes into {run_dir}")
        _, final = runs.train_new(tcfg, mcfg, run_dir)
    _, meta = read_checkpoint(RunDir(run_dir).checkpoint("last"))
    step, elapsed = meta["state"]["step"], meta["state"]["elapsed"]
    cfg = RunDir(run_dir).read_config()
    per_step = s.batch_size if cfg["model"].get("schedule") != "alternate" else s.batch_size / 2
    return {"run": str(run_dir), "steps": step, "seconds": round(elapsed, 1),
            "real_images_seen": int(step * per_step), "final": final, "model": cfg["model"],
            "params": _param_counts(run_dir)}


def _param_counts(run_dir: Path) -> dict[str, int]:
    from capsgen.runs import open_run

    modules = open_run(run_dir).task.modules
    return {name: sum(p.numel() for p in modules[name].parameters()) for name in ("generator", "discriminator")}


def sample_metrics(spec: ModelSpec, s: Settings, folder: Path, evaluator: Any) -> dict[str, Any]:
    from capsgen.eval.report_metrics import evaluate_samples
    from capsgen.sampling import generate_images

    _, _, images = generate_images(str(folder / "runs" / spec.name), s.n_metrics, s.seed)
    (folder / "samples").mkdir(exist_ok=True)
    np.savez_compressed(folder / "samples" / f"{spec.name}.npz", images=images)
    return evaluate_samples(images, s.data, evaluator=evaluator, data_dir=s.data_dir, seed=s.seed,
                            source=spec.name)


def real_unlabelled(s: Settings) -> np.ndarray:
    """Up to ``generated`` real training images outside every labelled subset (the reference row).

    The labelled subsets of different sizes are drawn independently, so their union can exceed
    the largest one (10,906 images for 100/1,000/10,000 of Fashion-MNIST) and fewer than
    ``generated`` images may remain: then all that remain are used, and the report says how many.
    """
    from capsgen.data import load_split
    from capsgen.eval.semisup import stratified_labelled_subset

    train = load_split(s.data, "train", s.data_dir)
    used = np.zeros(len(train), bool)
    for n in s.labelled:
        used[stratified_labelled_subset(train.labels, n, s.seed)] = True
    rest = np.flatnonzero(~used)
    pick = np.random.default_rng(s.seed).permutation(rest)[: s.generated]
    return train.images[np.sort(pick)]


def semisup_real_row(s: Settings) -> dict[str, Any]:
    """The reference row of the semi-supervised table: real images as the unlabelled data."""
    from capsgen.compare import semisup

    images = real_unlabelled(s)
    return semisup(images, s.data, generated=len(images), labelled=tuple(s.labelled), seed=s.seed,
                   data_dir=s.data_dir, test_n=s.semisup_test_n)


def copy_figures(folder: Path) -> dict[str, dict[str, str]]:
    """Copy each run's sample grid, curves and interpolation into figures/ (report-relative paths)."""
    from capsgen.train.rundir import RunDir

    out = folder / "figures"
    out.mkdir(exist_ok=True)
    found: dict[str, dict[str, str]] = {}
    for spec in MODELS:
        src = RunDir(folder / "runs" / spec.name).figures
        for kind in ("samples", "gan_curves", "interpolation"):
            if (src / f"{kind}.png").exists():
                dst = out / f"{spec.name}_{kind}.png"
                shutil.copyfile(src / f"{kind}.png", dst)
                found.setdefault(spec.name, {})[kind] = f"figures/{dst.name}"
    real = RunDir(folder / "runs" / MODELS[0].name).figure("real.png")
    if real.exists():
        shutil.copyfile(real, out / "real.png")
        found["real"] = {"samples": "figures/real.png"}
    return found


def run(s: Settings) -> Path:
    """Every stage of the reproduction into ``s.out``; returns the path of report.md."""
    from capsgen.compare import battle, semisup
    from capsgen.data.registry import get_spec
    from capsgen.eval.evaluator import get_evaluator
    from capsgen.reproduce.capsulegan.report import write_reports

    if s.budget <= 0:
        raise CapsgenError(f"--budget must be a positive number of minutes, got {s.budget:g}")
    if s.scale not in SCALES:
        raise CapsgenError(f"unknown --scale {s.scale!r}; choose one of: {', '.join(SCALES)}")
    s.data = get_spec(s.data).name
    folder = Path(s.out)
    if folder.exists() and not folder.is_dir():
        raise CapsgenError(f"{folder} exists and is not a folder; choose another --out")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "results.json").is_file():
        raise CapsgenError(f"{folder} is a folder capsgen did not create and it is not empty; "
                           "choose another --out")
    from capsgen.data import load_split

    load_split(s.data, "test", s.data_dir)       # bad data fails before any folder is made
    folder.mkdir(parents=True, exist_ok=True)
    res = Results(folder, s)
    t_start = time.perf_counter()
    ev = get_evaluator(s.data, s.data_dir)
    res.stage("evaluator", lambda: {"accuracy": ev.accuracy, "n_test": ev.n_test, "path": str(ev.path)})
    for spec in MODELS:
        res.stage(f"train/{spec.name}", lambda spec=spec: train_model(spec, s, folder))
    for spec in MODELS:
        res.stage(f"metrics/{spec.name}", lambda spec=spec: sample_metrics(spec, s, folder, ev))
    for a, b in BATTLES:
        res.stage(f"battle/{a}-vs-{b}", lambda a=a, b=b: battle(folder / "runs" / a, folder / "runs" / b,
                                                                   n=s.n_battle, seed=s.seed, tol=s.tol,
                                                                   data_dir=s.data_dir))
    kw = dict(labelled=tuple(s.labelled), seed=s.seed, data_dir=s.data_dir, test_n=s.semisup_test_n)
    res.stage("semisup/labelled-only", lambda: semisup(None, s.data, generated=0, **kw))
    for spec in MODELS:
        res.stage(f"semisup/{spec.name}", lambda spec=spec: semisup(folder / "runs" / spec.name, None,
                                                                    generated=s.generated, **kw))
    res.stage("semisup/real-unlabelled", lambda: semisup_real_row(s))
    figures = copy_figures(folder)
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
           "this_invocation_seconds": round(time.perf_counter() - t_start, 1)}
    return write_reports(folder, s, res.data, figures, env)
