"""``capsgen sample`` and ``capsgen interpolate``: pictures and sample files from a trained generative run.

Both reopen a run from its config and its 'last' checkpoint without reading the dataset (the
run's config.json records the image shape), so a run folder copied to another machine works.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from capsgen.errors import CapsgenError

MAX_GRID = 100   # images in a --grid picture


def open_generative(path: str | Path) -> tuple[Any, Any]:
    """(RunDir, task with its last weights, in eval mode) for a run whose family can sample."""
    from capsgen import runs
    from capsgen.models import get_family
    from capsgen.train.checkpoint import load_checkpoint
    from capsgen.train.task import DataInfo

    run, tcfg, mcfg = runs.read_run(path)
    family = get_family(tcfg.family)
    if not hasattr(family.task_cls(), "sample"):
        raise CapsgenError(f"{run.path} is a {tcfg.family} run, which cannot generate images; "
                           "use a dcgan or capsulegan run")
    try:
        d = run.read_config()["data"]
        info = DataInfo(d["name"], tuple(d["shape"]), d["num_classes"], d["class_names"], d["train_size"])
    except (KeyError, TypeError) as exc:
        raise CapsgenError(f"{run.config_path}: incomplete data facts ({exc})") from None
    ckpt = run.checkpoint("last")
    if not ckpt.exists():
        raise CapsgenError(f"{run.path} has no checkpoint yet; train it first")
    task = runs.build_task(tcfg, mcfg, info)
    load_checkpoint(ckpt, task.modules, restore_rng=False)
    task.train_mode(False)
    return run, task


def _writable(out: str | Path, suffix: str) -> Path:
    """``out`` as a Path if it has ``suffix`` and its folder exists and is writable."""
    out = Path(out)
    if out.suffix.lower() != suffix:
        raise CapsgenError(f"{out}: the output file must end in {suffix}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise CapsgenError(f"{out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise CapsgenError(f"{out}: not writable")
    if out.is_dir():
        raise CapsgenError(f"{out} is a folder; give a file name")
    return out


def _write(out: Path, payload: bytes) -> None:
    from capsgen.train.checkpoint import atomic_write_bytes

    try:
        atomic_write_bytes(out, payload)
    except OSError as exc:
        raise CapsgenError(f"{out}: cannot write ({exc.strerror or exc})") from None


def _png(images: torch.Tensor, ncol: int) -> bytes:
    from capsgen.report.figures import image_grid

    buf = io.BytesIO()
    image_grid(images, ncol, scale=2).save(buf, format="PNG")
    return buf.getvalue()


def sample(run_dir: str | Path, n: int, out: str | Path, grid: str | Path | None = None,
           seed: int = 0) -> dict[str, Any]:
    """Write ``n`` generated images as uint8 [n, H, W, C] under the key ``images`` of ``out`` (.npz).

    The latents come from a generator seeded by ``seed``: the same run, n and seed give the same
    file. ``grid`` (optional .png) shows the first images. Returns a summary for the CLI.
    """
    from capsgen.report.figures import to_uint8_hwc

    if n <= 0:
        raise CapsgenError(f"--n must be a positive number of images, got {n}")
    out = _writable(out, ".npz")
    grid_path = _writable(grid, ".png") if grid else None
    run, task = open_generative(run_dir)
    images = task.sample(n, torch.Generator().manual_seed(seed))
    arr = to_uint8_hwc(images)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=arr)
    _write(out, buf.getvalue())
    result = {"run": str(run.path), "out": str(out), "n": n, "shape": list(arr.shape), "seed": seed}
    if grid_path:
        first = images[:MAX_GRID]
        _write(grid_path, _png(first, math.ceil(math.sqrt(len(first)))))
        result["grid"] = str(grid_path)
    return result


def interpolate(run_dir: str | Path, out: str | Path, rows: int = 8, cols: int = 10,
                seed: int = 0) -> dict[str, Any]:
    """Write a rows x cols PNG; each row walks the latent great circle between two random z."""
    if rows <= 0 or cols < 2:
        raise CapsgenError(f"--rows must be >= 1 and --cols >= 2, got {rows} and {cols}")
    out = _writable(out, ".png")
    run, task = open_generative(run_dir)
    images = task.interpolate(rows, cols, torch.Generator().manual_seed(seed))
    _write(out, _png(images, cols))
    return {"run": str(run.path), "out": str(out), "rows": rows, "cols": cols, "seed": seed}
