"""``capsgen reproduce gcapsnet``: Chen et al.'s (G-CapsNets) experiments at a chosen scale.

Stages, each kept in ``results.json`` once finished (running the same command again resumes,
also inside an interrupted training run):

1. ``train/<model>/seed<k>``: every model of :data:`~.spec.MODELS` that fits the data (the
   multi-layer G-CapsNet on 3-channel data only) for every seed, ``budget`` minutes each (and at
   most ``epochs``); its test error is then measured on the whole test split with the last
   weights, and its parameters counted (table 2).
2. ``table3/epoch<e>``: one class-conditional GAN (the ``acgan`` family by default) trained one
   epoch further; ``per_class`` images of every class drawn from it (its ``ClassConditional``
   capability) and the error of the baseline, FC and conv G-CapsNets of every seed on them
   (table 3).
3. ``attack/<model>/<method>``: :func:`capsgen.eval.attack_runs.attack_run` on the seed-0
   baseline, CapsNet, FC and conv G-CapsNets, all on the same test images — black-box FGSM at
   8/255 through a LeNet substitute (4.3), white-box PGD, and the white-box universal
   perturbation generator (supplementary 6.2).
4. report.md / report.html (report.py).
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
from capsgen.reproduce.gcapsnet.spec import ATTACK_MODELS, MODELS, TABLE3_MODELS, ModelSpec, Settings
from capsgen.reproduce.common import Results, open_report_folder, say
from capsgen.reproduce.overrides import applicable, check_extra

EVAL_BATCH = 500


# ------------------------------------------------------------------------------ configs
# Train fields the reproduction sets from its own options (a --set of them would undo the
# settings results.json records).
OWN_FLAGS = {"data": "--data", "data_dir": "--data-dir", "seed": "--seeds", "batch_size": "--batch-size",
             "minutes": "--budget", "epochs": "--epochs", "steps": "--budget / --epochs"}


def model_configs(spec: ModelSpec, s: Settings, seed: int) -> tuple[Any, Any]:
    from capsgen import runs

    preset = spec.preset_for(s.channels)
    base = [*runs.preset_pairs(spec.family, preset), *spec.pairs_for(s.channels, s.scale)]
    pairs = [*spec.pairs_for(s.channels, s.scale), *applicable(spec.family, base, s.extra)]
    return runs.make_configs(spec.family, pairs, preset=preset, data=s.data, data_dir=s.data_dir,
                             minutes=s.budget, epochs=s.epochs, seed=seed, batch_size=s.batch_size)


# ------------------------------------------------------------------------------ stages
def _scores(task: Any, images: torch.Tensor) -> torch.Tensor:
    """Class scores [N, K] on the CPU, in chunks, without gradients."""
    with torch.no_grad():
        return torch.cat([task.class_scores(images[k:k + EVAL_BATCH].to(task.device)).float().cpu()
                          for k in range(0, len(images), EVAL_BATCH)])


def error_of(run_dir: Path, images: torch.Tensor, labels: torch.Tensor) -> float:
    from capsgen.runs import open_run

    task = open_run(run_dir, "last").task
    return (_scores(task, images).argmax(1) != labels).float().mean().item()


def run_dir_of(folder: Path, model: str, seed: int) -> Path:
    return folder / "runs" / f"{model}-s{seed}"


def train_model(spec: ModelSpec, s: Settings, seed: int, folder: Path, test: Any) -> dict[str, Any]:
    """Train (or continue) one model and seed; its test error with the last weights and its size."""
    from capsgen import runs
    from capsgen.runs import open_run
    from capsgen.train.checkpoint import read_checkpoint
    from capsgen.train.rundir import RunDir

    run_dir = run_dir_of(folder, spec.name, seed)
    if RunDir(run_dir).is_run():
        say(f"{spec.name} seed {seed}: continuing {run_dir}")
        runs.resume(run_dir, minutes=s.budget, epochs=s.epochs, progress=False)
    else:
        tcfg, mcfg = model_configs(spec, s, seed)
        say(f"{spec.name} seed {seed}: training for {s.budget:g} minutes"
            + (f" (at most {s.epochs:g} epochs)" if s.epochs else "") + f" into {run_dir}")
        runs.train_new(tcfg, mcfg, run_dir, progress=False)
    _, meta = read_checkpoint(RunDir(run_dir).checkpoint("last"))
    cfg = RunDir(run_dir).read_config()
    task = open_run(run_dir, "last").task
    x, y = test
    error = (_scores(task, x).argmax(1) != y).float().mean().item()
    out = {"run": str(run_dir.relative_to(folder)), "steps": meta["state"]["step"], "seconds": round(meta["state"]["elapsed"], 1),
           "epochs": round(meta["state"]["step"] * cfg["train"]["batch_size"] / cfg["data"]["train_size"], 3),
           "test_error": error, "test_n": len(y),
           "params": sum(p.numel() for m in task.modules.values() for p in m.parameters()),
           "preset": spec.preset_for(s.channels), "model": cfg["model"]}
    if hasattr(task, "describe"):
        out["describe"] = task.describe()
    return out


def gan_epoch(s: Settings, epoch: int, folder: Path, classifiers: dict[str, list[Path]]) -> dict[str, Any]:
    """Train the class-conditional GAN to ``epoch`` epochs, draw per_class images of every class,
    save them, and measure each classifier's error on them (table 3)."""
    from capsgen import runs
    from capsgen.models import get_family
    from capsgen.report.figures import save_image_grid, to_uint8_hwc
    from capsgen.runs import open_run
    from capsgen.sampling import require
    from capsgen.train.checkpoint import read_checkpoint
    from capsgen.train.rundir import RunDir

    run_dir = folder / "runs" / s.gan_family
    minutes = (s.gan_minutes or s.budget) * epoch   # the time budget counts the run's whole training
    if RunDir(run_dir).is_run():
        runs.resume(run_dir, epochs=epoch, minutes=minutes, progress=False)
    else:
        preset = "chen" if "chen" in get_family(s.gan_family).config_cls.PRESETS else None
        base = runs.preset_pairs(s.gan_family, preset)
        tcfg, mcfg = runs.make_configs(s.gan_family, applicable(s.gan_family, base, s.extra), preset=preset,
                                       data=s.data, data_dir=s.data_dir, minutes=minutes, epochs=epoch,
                                       seed=s.seeds[0])
        runs.train_new(tcfg, mcfg, run_dir, progress=False)
    _, meta = read_checkpoint(RunDir(run_dir).checkpoint("last"))
    opened = open_run(run_dir, "last")
    task = require(opened, "class-conditional")
    k = opened.info.num_classes
    labels = torch.arange(k).repeat_interleave(s.per_class)
    g = torch.Generator().manual_seed(1000 * s.seeds[0] + epoch)
    with torch.no_grad():
        images = torch.cat([task.sample_classes(labels[i:i + EVAL_BATCH], g) for i in range(0, len(labels), EVAL_BATCH)])
    pixels = to_uint8_hwc(images)                       # what the .npz holds; the classifiers see the same
    (folder / "acgan").mkdir(exist_ok=True)
    np.savez_compressed(folder / "acgan" / f"epoch-{epoch}.npz", images=pixels, labels=labels.numpy())
    # the first (up to) 10 images of every class, one class per row, as Chen et al.'s figure 2
    cols = min(10, s.per_class)
    picks = torch.arange(len(labels)).view(k, s.per_class)[:, :cols].reshape(-1)
    picture = save_image_grid(images[picks], folder / "figures" / f"acgan_epoch{epoch}.png", ncol=cols, scale=2)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    errors = {name: [error_of(r, x, labels) for r in paths] for name, paths in classifiers.items()}
    spe = opened.info.train_size // opened.train_config.batch_size
    return {"run": str(run_dir.relative_to(folder)), "steps": meta["state"]["step"], "epochs_done": round(meta["state"]["step"] / spe, 3),
            "images": len(labels), "per_class": s.per_class, "errors": errors,
            "grid": f"figures/{picture.name}"}


def attack(s: Settings, name: str, method: str, run_dir: Path, folder: Path) -> dict[str, Any]:
    from capsgen.eval.attack_runs import attack_run

    out = folder / "attacks" / f"{name}-{method}"
    if out.exists():     # left by an interrupted attempt of this very stage: ours to replace
        shutil.rmtree(out)
    out.parent.mkdir(exist_ok=True)
    kw: dict[str, Any] = ({"iters": s.uap_iters} if method == "uap" else
                          {"substitute_steps": s.substitute_steps} if method == "fgsm" else {})
    res = attack_run(run_dir, method, n=s.attack_n, out=out, seed=s.seeds[0], which="last",
                     data_dir=s.data_dir, **kw)
    res["files"] = {k: f"attacks/{out.name}/{k}" for k in res["files"]}     # relative to the report
    return res


# ------------------------------------------------------------------------------ the whole experiment
def check_settings(s: Settings) -> None:
    from capsgen.models import FAMILIES
    from capsgen.reproduce.gcapsnet.spec import ATTACKS, MODEL_NAMES, SCALES

    if not s.budget > 0:
        raise CapsgenError(f"--budget must be a positive number of minutes, got {s.budget:g}")
    if s.epochs is not None and not s.epochs > 0:
        raise CapsgenError(f"--epochs must be positive, got {s.epochs:g}")
    if s.scale not in SCALES:
        raise CapsgenError(f"unknown --scale {s.scale!r}; choose one of: {', '.join(SCALES)}")
    if not s.seeds or min(s.seeds) < 0 or len(set(s.seeds)) != len(s.seeds):
        raise CapsgenError(f"--seeds must be distinct non-negative integers, got {','.join(map(str, s.seeds))}")
    bad = [m for m in s.models if m not in MODEL_NAMES]
    if bad or not s.models:
        raise CapsgenError(f"unknown --models {','.join(bad) or '(none)'}; choose from: {', '.join(MODEL_NAMES)}")
    bad = [a for a in s.attacks if a not in ATTACKS]
    if bad:
        raise CapsgenError(f"unknown --attacks {','.join(bad)}; choose from: {', '.join(ATTACKS)} (or none)")
    for name in ("batch_size", "per_class", "attack_n", "uap_iters", "substitute_steps"):
        if getattr(s, name) < 1:
            raise CapsgenError(f"--{name.replace('_', '-')} must be positive, got {getattr(s, name)}")
    if s.gan_epochs < 0:
        raise CapsgenError(f"--gan-epochs must be >= 0, got {s.gan_epochs}")
    if s.gan_minutes is not None and not s.gan_minutes > 0:
        raise CapsgenError(f"--gan-minutes must be positive, got {s.gan_minutes:g}")
    if s.gan_epochs:
        if s.gan_family not in FAMILIES:
            raise CapsgenError(f"--gan-family {s.gan_family!r} is not a family; choose one of: "
                               f"{', '.join(sorted(FAMILIES))}")
        if "class-conditional" not in FAMILIES[s.gan_family].capabilities:
            have = [n for n, f in FAMILIES.items() if "class-conditional" in f.capabilities]
            raise CapsgenError(f"--gan-family {s.gan_family} cannot draw images of a chosen class; "
                               f"use one of: {', '.join(have) or 'none is registered'}")


def run(s: Settings) -> Path:
    """Every stage into ``s.out``; returns the path of report.md."""
    from capsgen.data import load_split
    from capsgen.reproduce.gcapsnet.report import write_reports

    check_settings(s)
    folder = open_report_folder(s)
    test = load_split(s.data, "test", s.data_dir)       # bad data fails before any folder is made
    if test.labels is None:
        raise CapsgenError(f"{s.data} has no class labels; the G-CapsNet experiments classify")
    s.channels = int(test.images.shape[-1])
    specs = s.model_specs()
    if not specs:
        raise CapsgenError(f"none of --models {','.join(s.models)} trains on {s.channels}-channel data "
                           "(multilayer: 3-channel only)")
    # against every family the experiment can use, so one --set list serves any --models choice
    check_extra(s.extra, sorted({m.family for m in MODELS} | ({s.gan_family} if s.gan_epochs else set())), OWN_FLAGS)
    for spec in specs:                                  # every config checked before anything runs
        model_configs(spec, s, s.seeds[0])
    folder.mkdir(parents=True, exist_ok=True)
    res = Results(folder, s)
    t_start = time.perf_counter()
    x_test, y_test = test.to_tensors()
    for spec in specs:
        for seed in s.seeds:
            res.stage(f"train/{spec.name}/seed{seed}",
                      lambda spec=spec, seed=seed: train_model(spec, s, seed, folder, (x_test, y_test)))
    runs_of = {m.name: [run_dir_of(folder, m.name, k) for k in s.seeds] for m in specs}
    classifiers = {name: runs_of[name] for name in TABLE3_MODELS if name in runs_of}
    if classifiers:
        for epoch in range(1, s.gan_epochs + 1):
            res.stage(f"table3/epoch{epoch}", lambda epoch=epoch: gan_epoch(s, epoch, folder, classifiers))
    for name in ATTACK_MODELS:
        for method in s.attacks:
            if name in runs_of:
                res.stage(f"attack/{name}/{method}",
                          lambda name=name, method=method: attack(s, name, method, runs_of[name][0], folder))
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "threads": torch.get_num_threads(),
           "processor": platform.processor() or platform.machine(),
           "this_invocation_seconds": round(time.perf_counter() - t_start, 1),
           "train_size": len(load_split(s.data, "train", s.data_dir).images), "test_size": len(y_test),
           "shape": tuple(x_test.shape[1:])}
    return write_reports(folder, s, res.data, env)
