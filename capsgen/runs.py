"""Starting, resuming and reopening runs: glue between data, families and the loop.

Everything is validated before anything is written: configs (types and ranges), the dataset, the
step plan, the network (built once), the device and, for a resume, the last checkpoint. Only then
is a run folder created or changed, so a mistake never leaves a half-made folder behind nor
persists a bad budget into a run's config.json.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from capsgen import __version__
from capsgen.config import (TrainConfig, apply_overrides, check_config, fit_train_budget, from_dict, to_dict,
                            twin_conflicts)
from capsgen.data import ImageData, load_split
from capsgen.data.batch import Batch
from capsgen.errors import CapsgenError, ConfigError
from capsgen.models import get_family
from capsgen.train.run_report import write_run_report
from capsgen.train.checkpoint import load_checkpoint, read_checkpoint
from capsgen.train.device import resolve_device
from capsgen.train.distributed import SINGLE, Distributed, init_from_env
from capsgen.train.loop import Interrupted, plan, run_training
from capsgen.train.memory import check_step_memory
from capsgen.train.rundir import RunDir
from capsgen.train.task import DataInfo, Task

CHECKPOINTS = ("last", "best")


def data_info(train: ImageData) -> DataInfo:
    n, h, w, c = train.images.shape
    k = len(train.class_names) if train.class_names else None
    return DataInfo(train.name, (c, h, w), k, train.class_names, n, train.attribute_names)


def info_from_config(run: RunDir, raw: dict) -> DataInfo:
    """The DataInfo a run recorded in config.json (no dataset is read)."""
    try:
        d = dict(raw["data"])
        d["shape"] = tuple(d["shape"])
        info = DataInfo(**d)
        if len(info.shape) != 3 or not all(isinstance(v, int) and v > 0 for v in info.shape):
            raise ValueError(f"shape {info.shape}")
        if not isinstance(info.train_size, int) or info.train_size < 1:
            raise ValueError(f"train_size {info.train_size!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise CapsgenError(f"{run.config_path}: bad data facts ({exc})") from None
    return info


def load_data(cfg: TrainConfig) -> tuple[ImageData, ImageData]:
    return tuple(load_split(cfg.data, split, cfg.data_dir, image_size=cfg.image_size)
                 for split in ("train", "test"))


def build_task(cfg: TrainConfig, model_cfg: Any, info: DataInfo, device: torch.device | str = "cpu",
               dist: Distributed = SINGLE) -> Task:
    """The family's Task with fresh weights; initialisation depends on the run seed only."""
    family = get_family(cfg.family)
    device = torch.device(device)
    # On the meta device every tensor is made there (shapes only): without the context, modules
    # would initialise their weights in CPU memory before moving to meta.
    where = device if device.type == "meta" else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), where:
        torch.manual_seed(cfg.seed)
        try:
            return family.task()(model_cfg, info, device, dist)
        except ValueError as exc:
            raise ConfigError(f"cannot build {cfg.family} for {info.name}: {exc}") from None


def seed_global_rngs(seed: int) -> None:
    """Seed torch's, numpy's and Python's global generators from the run seed.

    Training never draws from them (data order and per-step noise come from (seed, step)
    generators, weights from a forked seeded RNG: two runs of a seed have bit-equal weights
    whatever the global states), but every checkpoint stores them as ``rng.*`` and torch 2.13
    seeds its default generator from the OS at start-up, numpy and Python always did. Seeding
    them makes those stored tensors equal between runs of a seed too; a resume restores them.
    """
    import random

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def check_memory(tcfg: TrainConfig, mcfg: Any, info: DataInfo, device: torch.device) -> None:
    """Refuse (one line) a run whose estimated step does not fit the device, before its task exists:
    the estimate comes from a task built on the meta device (shapes, no storage)."""
    task = build_task(tcfg, mcfg, info, "meta")
    need = task.memory_estimate(tcfg.batch_size // tcfg.world_size)
    check_step_memory(need, device, tcfg.max_memory_gb, ", ".join(type(task).MEMORY_OPTIONS))


def preset_pairs(family: str, preset: str | None, flags: set[str] = frozenset()) -> list[str]:
    """The ``--set`` pairs of ``preset`` (dropping train fields the user gave as flags, so they win)."""
    if not preset:
        return []
    presets = get_family(family).config_cls.PRESETS
    if preset not in presets:
        have = f"choose one of: {', '.join(sorted(presets))}" if presets else "it has no presets"
        raise ConfigError(f"unknown preset {preset!r} for {family}; {have}")
    return [pair for pair in presets[preset] if pair.split("=", 1)[0] not in flags]


def make_configs(family: str, pairs: list[str], preset: str | None = None,
                 **train_fields: Any) -> tuple[TrainConfig, Any]:
    """TrainConfig + the family's config: preset, then CLI fields and ``--set`` overrides; checked.

    A user's ``--set`` of a field that cannot take effect with the other values (the family's
    ``ineffective()``) is refused with the reason.
    """
    fam = get_family(family)
    given = {k: v for k, v in train_fields.items() if v is not None}
    tcfg = TrainConfig(family=family, **given)
    mcfg = fam.config_cls()
    ppairs = preset_pairs(family, preset, {f"train.{k}" for k in given})
    apply_overrides({"train": tcfg, "model": mcfg}, ppairs + list(pairs))
    check_config(tcfg, "train")
    check_config(mcfg, "model")
    fit_train_budget(tcfg, mcfg)
    user_keys = {p.split("=", 1)[0].strip() for p in pairs}
    twin_conflicts(mcfg, user_keys)
    for key, why in mcfg.ineffective().items():
        if key in user_keys or key.split(".", 1)[1] in user_keys:
            raise ConfigError(f"--set {key} cannot take effect: {why}")
    return tcfg, mcfg


def _set_threads(cfg: TrainConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


def _config_record(tcfg: TrainConfig, mcfg: Any, info: DataInfo, preset: str | None = None) -> dict:
    return {"capsgen": __version__, "train": to_dict(tcfg), "model": to_dict(mcfg),
            "data": dataclasses.asdict(info), "preset": preset, "created": time.strftime("%Y-%m-%d %H:%M:%S")}


def train_new(tcfg: TrainConfig, mcfg: Any, out: str | Path, progress: bool = True,
              device: str | None = "auto", preset: str | None = None) -> tuple[RunDir, dict]:
    """Validate everything, then create the run folder and train (any process of a torchrun).
    ``preset`` (the name the configs were made with, if any) is recorded in config.json."""
    run = RunDir(out)
    dev = resolve_device(device)
    dist = init_from_env(dev)
    tcfg = dataclasses.replace(tcfg, world_size=dist.world_size)
    check_config(tcfg, "train")
    check_config(mcfg, "model")
    fit_train_budget(tcfg, mcfg)
    if dist.is_main:
        run.check_new()
    _set_threads(tcfg)
    train, test = load_data(tcfg)            # bad data fails here, before any folder exists
    info = data_info(train)
    plan(tcfg, info.train_size)
    seed_global_rngs(tcfg.seed)
    check_memory(tcfg, mcfg, info, dev)
    task = build_task(tcfg, mcfg, info, dev, dist)
    if dist.is_main:
        existed = run.path.exists()
        run.create(_config_record(tcfg, mcfg, info, preset))
    dist.barrier()
    try:
        return run, _train(run, task, tcfg, train, test, resume=False, progress=progress)
    except BaseException:
        # A run stopped before its first checkpoint is no run: remove what this call made.
        if dist.is_main and not run.checkpoint("last").exists():
            run.unlock()
            if existed:
                for child in run.path.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            else:
                shutil.rmtree(run.path, ignore_errors=True)
        raise


def _train(run: RunDir, task: Task, tcfg: TrainConfig, train: ImageData, test: ImageData,
           resume: bool, progress: bool) -> dict:
    try:
        test_batch = test.to_batch()
        final = run_training(run, task, tcfg, train.to_batch(), test_batch, resume=resume, progress=progress)
        if task.dist.is_main:
            task.train_mode(False)
            if progress:
                print(f"capsgen: writing figures and report into {run.path} ...", file=sys.stderr, flush=True)
            try:
                with torch.no_grad():
                    task.write_figures(run.figures, test_batch)
                write_run_report(run, final)
            except KeyboardInterrupt:
                # Outside the loop's step-boundary handling (vcaps' and poe's figures take seconds):
                # the training is saved, only the pictures and report are missing, and a resume
                # trains nothing and writes them.
                raise Interrupted(f"interrupted while writing the figures and report; the training is saved. "
                                  f"Write them with: capsgen train --resume {run.path}") from None
        return final
    except KeyboardInterrupt:
        # Between the folder's creation and the loop's signal handling (TensorBoard's import, the
        # first checkpoint): a run with a checkpoint can be continued, so say how.
        if run.checkpoint("last").exists():
            raise Interrupted(f"interrupted; continue with: capsgen train --resume {run.path}") from None
        raise
    finally:
        if task.dist.is_main and run.path.is_dir():
            run.secure()   # an interrupted run's files are private too (TensorBoard uses the umask)
        run.unlock()


def read_run(path: str | Path) -> tuple[RunDir, TrainConfig, Any]:
    """A run's folder and configs, checked (types, ranges, known family) — no data, no weights."""
    run = RunDir(path)
    raw = run.read_config()
    try:
        tcfg = from_dict(TrainConfig, raw["train"])
        mcfg = from_dict(get_family(tcfg.family).config_cls, raw["model"])
    except KeyError as exc:
        raise CapsgenError(f"{run.config_path}: incomplete run config (no {exc})") from None
    except (TypeError, CapsgenError) as exc:
        raise CapsgenError(f"{run.config_path}: {str(exc).splitlines()[0]}") from None
    return run, tcfg, mcfg


def resume(path: str | Path, steps: int | None = None, epochs: float | None = None,
           progress: bool = True, minutes: float | None = None,
           device: str | None = "auto") -> tuple[RunDir, dict]:
    """Continue a run from its last checkpoint (optionally with a larger step or time budget).

    A new ``steps``/``epochs`` replaces both of the old ones; a new ``minutes`` replaces the old
    time budget, which counts the run's whole training time, before and after the resume. The
    new budget is checked, and so are the data and the last checkpoint, before config.json is
    rewritten.
    """
    run, old, mcfg = read_run(path)
    dev = resolve_device(device)
    dist = init_from_env(dev)
    if dist.world_size != old.world_size:
        raise CapsgenError(f"{run.path} was trained by {old.world_size} process(es); resume it with as many "
                           f"(got {dist.world_size}): " + ("capsgen train --resume …" if old.world_size == 1 else
                                                           f"torchrun --nproc_per_node={old.world_size} -m capsgen "
                                                           "train --resume …"))
    tcfg = copy.deepcopy(old)
    if steps is not None or epochs is not None:
        tcfg.steps, tcfg.epochs = steps, epochs
    if minutes is not None:
        tcfg.minutes = minutes
    check_config(tcfg, "train")
    fit_train_budget(tcfg, mcfg)
    info = info_from_config(run, run.read_config())
    plan(tcfg, info.train_size)
    last = run.checkpoint("last")
    if not last.is_file():
        raise CapsgenError(f"{run.path}: its last checkpoint ({last}) is missing, so it cannot be resumed; "
                           "nothing was changed — start a new run with another --out")
    read_checkpoint(last)                    # a corrupt checkpoint fails here, before any change
    _set_threads(tcfg)
    train, test = load_data(tcfg)
    if data_info(train) != info:
        raise CapsgenError(f"{tcfg.data}: the dataset differs from the one {run.path} was trained on "
                           f"(recorded {info.shape}, {info.train_size} images); point --data-dir at the same files")
    check_memory(tcfg, mcfg, info, dev)
    task = build_task(tcfg, mcfg, info, dev, dist)
    if dist.is_main:
        run.lock()
        if tcfg != old:
            raw = run.read_config()
            raw["train"] = to_dict(tcfg)
            run.write_config(raw)
    dist.barrier()
    return run, _train(run, task, tcfg, train, test, resume=True, progress=progress)


@dataclass
class OpenRun:
    """A trained run, rebuilt from config.json and one checkpoint, in eval mode."""

    run: RunDir
    train_config: TrainConfig
    model_config: Any
    info: DataInfo
    task: Task
    checkpoint: Path

    def split(self, name: str = "test", data_dir: str | None = None) -> ImageData:
        """Read the run's dataset split (only when asked: reopening reads no data)."""
        return load_split(self.train_config.data, name, data_dir or self.train_config.data_dir,
                          image_size=self.train_config.image_size)

    def test_batch(self, n: int | None = None, data_dir: str | None = None) -> Batch:
        batch = self.split("test", data_dir).to_batch()
        return batch if n is None else batch[:n]


def open_run(path: str | Path, which: str = "last", device: str | None = "cpu",
             fallback: bool = True) -> OpenRun:
    """Rebuild a run's task with its ``which`` checkpoint ('last' or 'best').

    The DataInfo comes from config.json, so no dataset is read and a run folder copied to another
    machine opens. A missing 'best' (families that keep only 'last') falls back to 'last' when
    ``fallback``.
    """
    if which not in CHECKPOINTS:
        raise CapsgenError(f"checkpoint {which!r}: choose one of {', '.join(CHECKPOINTS)}")
    run, tcfg, mcfg = read_run(path)
    info = info_from_config(run, run.read_config())
    ckpt = run.checkpoint(which)
    if not ckpt.is_file() and fallback:
        ckpt = run.checkpoint("last")
    if not ckpt.is_file():
        raise CapsgenError(f"{run.path} has no '{which}' checkpoint; train it first")
    task = build_task(tcfg, mcfg, info, resolve_device(device))
    load_checkpoint(ckpt, task.modules, restore_rng=False)
    task.train_mode(False)
    return OpenRun(run, tcfg, mcfg, info, task, ckpt)
