"""Starting, resuming and reopening runs: glue between the CLI, data, families and the loop."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from capsgen import __version__
from capsgen.config import TrainConfig, apply_overrides, from_dict, to_dict
from capsgen.data import ImageData, load_split
from capsgen.errors import CapsgenError, ConfigError
from capsgen.models import get_family
from capsgen.report.run_report import write_run_report
from capsgen.train.checkpoint import atomic_write_text, load_checkpoint
from capsgen.train.loop import plan, run_training
from capsgen.train.rundir import RunDir
from capsgen.train.task import DataInfo, Task


def data_info(train: ImageData) -> DataInfo:
    n, h, w, c = train.images.shape
    k = len(train.class_names) if train.class_names else None
    return DataInfo(train.name, (c, h, w), k, train.class_names, n)


def load_data(cfg: TrainConfig) -> tuple[ImageData, ImageData]:
    return (load_split(cfg.data, "train", cfg.data_dir), load_split(cfg.data, "test", cfg.data_dir))


def build_task(cfg: TrainConfig, model_cfg: Any, info: DataInfo) -> Task:
    family = get_family(cfg.family)
    torch.manual_seed(cfg.seed)  # weight initialisation depends on the run seed only
    try:
        return family.task_cls()(model_cfg, info, torch.device("cpu"))
    except ValueError as exc:
        raise ConfigError(f"cannot build {cfg.family} for {info.name}: {exc}") from None


def make_configs(family: str, pairs: list[str], **train_fields: Any) -> tuple[TrainConfig, Any]:
    """TrainConfig + the family's config, with CLI fields and ``--set`` overrides applied."""
    fam = get_family(family)
    tcfg = TrainConfig(family=family, **{k: v for k, v in train_fields.items() if v is not None})
    mcfg = fam.config_cls()
    apply_overrides({"train": tcfg, "model": mcfg}, pairs)
    return tcfg, mcfg


def _set_threads(cfg: TrainConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


def train_new(tcfg: TrainConfig, mcfg: Any, out: str | Path, progress: bool = True) -> tuple[RunDir, dict]:
    """Validate everything, then create the run folder and train."""
    run = RunDir(out)
    run.check_new()
    _set_threads(tcfg)
    train, test = load_data(tcfg)            # bad data fails here, before any folder exists
    info = data_info(train)
    plan(tcfg, info.train_size)
    task = build_task(tcfg, mcfg, info)
    run.create({"capsgen": __version__, "train": to_dict(tcfg), "model": to_dict(mcfg),
                "data": dataclasses.asdict(info), "created": time.strftime("%Y-%m-%d %H:%M:%S")})
    return run, _train(run, task, tcfg, train, test, resume=False, progress=progress)


def _train(run: RunDir, task: Task, tcfg: TrainConfig, train: ImageData, test: ImageData,
           resume: bool, progress: bool) -> dict:
    try:
        final = run_training(run, task, tcfg, train.to_tensors(), test.to_tensors(),
                             resume=resume, progress=progress)
        x_test, y_test = test.to_tensors()
        task.write_figures(run.figures, x_test, y_test)
        write_run_report(run, final)
        return final
    finally:
        run.unlock()


def read_run(path: str | Path) -> tuple[RunDir, TrainConfig, Any]:
    run = RunDir(path)
    raw = run.read_config()
    try:
        tcfg = from_dict(TrainConfig, raw["train"])
        mcfg = from_dict(get_family(tcfg.family).config_cls, raw["model"])
    except (KeyError, TypeError) as exc:
        raise CapsgenError(f"{run.config_path}: incomplete run config ({exc})") from None
    return run, tcfg, mcfg


def resume(path: str | Path, steps: int | None = None, epochs: float | None = None,
           progress: bool = True, minutes: float | None = None) -> tuple[RunDir, dict]:
    """Continue a run from its last checkpoint (optionally with a larger step or time budget).

    A new ``steps``/``epochs`` replaces both of the old ones; a new ``minutes`` replaces the old
    time budget, which counts the run's whole training time, before and after the resume.
    """
    run, tcfg, mcfg = read_run(path)
    run.lock()
    if steps is not None or epochs is not None or minutes is not None:
        if steps is not None or epochs is not None:
            tcfg.steps, tcfg.epochs = steps, epochs
        if minutes is not None:
            tcfg.minutes = minutes
        raw = run.read_config()
        raw["train"] = to_dict(tcfg)
        atomic_write_text(run.config_path, json.dumps(raw, indent=2, sort_keys=True))
    _set_threads(tcfg)
    train, test = load_data(tcfg)
    task = build_task(tcfg, mcfg, data_info(train))
    return run, _train(run, task, tcfg, train, test, resume=True, progress=progress)


def open_run(path: str | Path, which: str = "best") -> tuple[RunDir, TrainConfig, Task, ImageData]:
    """Rebuild a run's task with its ``which`` checkpoint (falls back to 'last'); returns its test data."""
    run, tcfg, mcfg = read_run(path)
    train, test = load_data(tcfg)
    task = build_task(tcfg, mcfg, data_info(train))
    ckpt = run.checkpoint(which)
    if not ckpt.exists():
        ckpt = run.checkpoint("last")
    if not ckpt.exists():
        raise CapsgenError(f"{run.path} has no checkpoint yet; train it first")
    load_checkpoint(ckpt, task.modules, restore_rng=False)
    task.train_mode(False)
    return run, tcfg, task, test
