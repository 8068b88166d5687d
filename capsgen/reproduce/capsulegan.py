"""``capsgen reproduce capsulegan``: DCGAN vs the two CapsuleGANs, with equal wall-clock budgets.

Models (one generator architecture for all three, so only the discriminator and objective differ):

- ``dcgan``: convolutional discriminator, non-saturating BCE (the baseline of both papers);
- ``capsulegan-bce``: CapsNet discriminator with a dense head and BCE (Karmakar, paper 000);
- ``capsulegan-margin``: CapsNet discriminator whose single output capsule's length is P(real),
  margin-loss objective (Jaiswal et al., paper 001, eq. 3).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from capsgen.errors import CapsgenError
from capsgen.train.checkpoint import atomic_write_text


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    label: str
    cpu: tuple[str, ...]        # --set pairs at --scale cpu
    preset: str                 # --preset at --scale paper
    paper_extra: tuple[str, ...] = ()


MODELS = (
    ModelSpec("dcgan", "dcgan", "convolutional GAN (DCGAN discriminator, BCE)", (), "jaiswal"),
    ModelSpec("capsulegan-bce", "capsulegan", "CapsuleGAN, BCE (paper 000 discriminator head)",
              ("model.discriminator=caps-dense", "model.objective=bce"), "jaiswal",
              ("model.discriminator=caps-dense", "model.objective=bce")),
    ModelSpec("capsulegan-margin", "capsulegan", "CapsuleGAN, margin loss (paper 001, one capsule)",
              ("model.discriminator=caps1", "model.objective=margin"), "jaiswal"),
)
BATTLES = (("capsulegan-margin", "dcgan"), ("capsulegan-bce", "dcgan"))
SCALES = ("cpu", "paper")

# The papers' own numbers (paper 001, section 5.3 and tables 1-2; MNIST and CIFAR-10).
PAPER_GAM = {"MNIST": {"r_samples": 0.79, "r_test": 1.0, "verdict": "CapsuleGAN wins"},
             "CIFAR-10": {"r_samples": 1.0, "r_test": 0.72, "verdict": "tie"}}
PAPER_SEMISUP = {
    "MNIST": {"convolutional GAN": {100: 0.2900, 1000: 0.1539, 10000: 0.0702},
              "CapsuleGAN": {100: 0.2724, 1000: 0.1142, 10000: 0.0531}},
    "CIFAR-10": {"convolutional GAN": {100: 0.8305, 1000: 0.7587, 10000: 0.7209},
                 "CapsuleGAN": {100: 0.7983, 1000: 0.7496, 10000: 0.7102}},
}


@dataclass
class Settings:
    data: str
    budget: float                  # training minutes per model
    out: str
    data_dir: str | None = None
    scale: str = "cpu"
    batch_size: int = 64
    seed: int = 0
    n_metrics: int = 10_000        # samples per model for FID & co.
    n_battle: int = 1000
    tol: float = 0.05
    labelled: tuple[int, ...] = (100, 1000, 10000)
    generated: int = 50_000
    semisup_test_n: int | None = None
    extra: tuple[str, ...] = ()    # --set pairs applied to every model after its own
    command: str = ""

    def identity(self) -> dict[str, Any]:
        """The settings that decide the results (a folder is only continued with the same ones)."""
        return {k: getattr(self, k) for k in ("data", "budget", "scale", "batch_size", "seed", "n_metrics",
                                             "n_battle", "tol", "generated", "semisup_test_n")} | {
            "labelled": list(self.labelled), "extra": list(self.extra)}


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


def train_command(spec: ModelSpec, s: Settings, folder: Path) -> str:
    """The ``capsgen train`` command line equivalent to how the reproduction trains ``spec``."""
    args = ["train", spec.family, "--data", s.data, "--minutes", f"{s.budget:g}", "--batch-size",
            str(s.batch_size), "--seed", str(s.seed), "--out", str(folder / "runs" / spec.name)]
    if s.data_dir:
        args += ["--data-dir", s.data_dir]
    if s.scale == "paper":
        args += ["--preset", spec.preset]
        pairs = list(spec.paper_extra) + list(s.extra)
    else:
        pairs = list(spec.cpu) + list(s.extra)
    for pair in pairs:
        args += ["--set", pair]
    return "capsgen " + " ".join(shlex.quote(a) for a in args)


def train_model(spec: ModelSpec, s: Settings, folder: Path) -> dict[str, Any]:
    """Train (or continue) one model until its time budget is spent; returns what it reached."""
    from capsgen import runs
    from capsgen.train.checkpoint import read_checkpoint

    run_dir = folder / "runs" / spec.name
    if (run_dir / "config.json").exists():
        say(f"{spec.name}: continuing {run_dir} up to {s.budget:g} minutes")
        _, final = runs.resume(run_dir, minutes=s.budget)
    else:
        pairs = train_pairs(spec, s) + ["train.batch_size=%d" % s.batch_size, *s.extra]
        tcfg, mcfg = runs.make_configs(spec.family, pairs, data=s.data, data_dir=s.data_dir,
                                       minutes=s.budget, seed=s.seed)
        say(f"{spec.name}: training for {s.budget:g} minutes into {run_dir}")
        _, final = runs.train_new(tcfg, mcfg, run_dir)
    _, meta = read_checkpoint(run_dir / "checkpoints" / "last.safetensors")
    step, elapsed = meta["state"]["step"], meta["state"]["elapsed"]
    cfg = json.loads((run_dir / "config.json").read_text())
    per_step = s.batch_size if cfg["model"].get("schedule") != "alternate" else s.batch_size / 2
    return {"run": str(run_dir), "steps": step, "seconds": round(elapsed, 1),
            "real_images_seen": int(step * per_step), "final": final, "model": cfg["model"],
            "params": _param_counts(run_dir)}


def _param_counts(run_dir: Path) -> dict[str, int]:
    from capsgen.gan_cli import open_generative

    _, task = open_generative(run_dir)
    return {"generator": sum(p.numel() for p in task.G.parameters()),
            "discriminator": sum(p.numel() for p in task.D.parameters())}


def sample_metrics(spec: ModelSpec, s: Settings, folder: Path, evaluator: Any) -> dict[str, Any]:
    from capsgen.eval.report_metrics import evaluate_samples
    from capsgen.eval_cli import generate_images

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
    out = folder / "figures"
    out.mkdir(exist_ok=True)
    found: dict[str, dict[str, str]] = {}
    for spec in MODELS:
        src = folder / "runs" / spec.name / "figures"
        for kind in ("samples", "gan_curves", "interpolation"):
            if (src / f"{kind}.png").exists():
                dst = out / f"{spec.name}_{kind}.png"
                shutil.copyfile(src / f"{kind}.png", dst)
                found.setdefault(spec.name, {})[kind] = f"figures/{dst.name}"
    real = folder / "runs" / MODELS[0].name / "figures" / "real.png"
    if real.exists():
        shutil.copyfile(real, out / "real.png")
        found["real"] = {"samples": "figures/real.png"}
    return found


def run(s: Settings) -> Path:
    """Every stage of the reproduction into ``s.out``; returns the path of report.md."""
    from capsgen.compare import battle, semisup
    from capsgen.data.registry import get_spec
    from capsgen.eval.evaluator import get_evaluator
    from capsgen.reproduce.report import write_reports

    if s.budget <= 0:
        raise CapsgenError(f"--budget must be a positive number of minutes, got {s.budget:g}")
    if s.scale not in SCALES:
        raise CapsgenError(f"unknown --scale {s.scale!r}; choose one of: {', '.join(SCALES)}")
    s.data = get_spec(s.data).name
    folder = Path(s.out)
    if folder.exists() and not folder.is_dir():
        raise CapsgenError(f"{folder} exists and is not a folder; choose another --out")
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


def command_line(argv: list[str] | None) -> str:
    return "capsgen " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
