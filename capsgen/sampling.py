"""Images from trained runs: samples, class- or attribute-conditioned samples, interpolations, and
the files they go to. Library code: the CLI, comparisons and experiments all draw through here.

A run is reopened from config.json and a checkpoint (no dataset is read); what it can do is
asked of its declared capabilities (:mod:`capsgen.train.capabilities`). A run lacking what is
asked gets one line naming what it can do.
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
from capsgen.lists import comma_items
from capsgen.runs import OpenRun, open_run
from capsgen.train.capabilities import CapsuleSampling, capabilities_of

MAX_GRID = 100   # images in a --grid picture

_VERBS = {"generate": "generate images", "class-conditional": "generate images of a chosen class",
          "attribute-conditional": "generate images with chosen attributes", "classify": "classify images",
          "attributes": "predict attributes", "discriminate": "tell real from generated images",
          "encode": "encode images into capsules"}


def require(opened: OpenRun, capability: str) -> Any:
    """The run's task if it has ``capability``; else one line saying what the run can do."""
    caps = capabilities_of(opened.task)
    if capability not in caps:
        can = ", ".join(caps) if caps else "nothing beyond training"
        raise CapsgenError(f"{opened.run.path} is a {opened.train_config.family} run, which cannot "
                           f"{_VERBS[capability]}; it can: {can}")
    return opened.task


def open_for(path: str | Path, capability: str, which: str = "last", device: str | None = "cpu") -> OpenRun:
    opened = open_run(path, which, device)
    require(opened, capability)
    return opened


def parse_attributes(text: str, names: list[str] | None, run: str) -> torch.Tensor:
    """"name=1,name=0" -> attributes [A] in {0, 1}; unnamed attributes are 0. One-line errors."""
    if not names:
        raise CapsgenError(f"{run} was trained without attributes; use --class or plain sampling")
    vec = torch.zeros(len(names))
    for part in comma_items(text, "--attributes blue=1,striped=0"):
        if "=" not in part:
            raise CapsgenError(f"--attributes expects name=0|1 pairs, got {part!r}")
        key, val = (t.strip() for t in part.split("=", 1))
        if key not in names:
            raise CapsgenError(f"unknown attribute {key!r}; this run has: {', '.join(names)}")
        if val not in ("0", "1"):
            raise CapsgenError(f"attribute {key}={val}: the value must be 0 or 1")
        vec[names.index(key)] = float(val)
    return vec


def capsule_task(opened: OpenRun, capsule: int | None) -> Any:
    """The run's task if it samples by code capsule (:class:`CapsuleSampling`), the index checked;
    else one line naming the families that do."""
    task = require(opened, "generate")
    if not isinstance(task, CapsuleSampling):
        from capsgen.models import FAMILIES

        have = [f.name for f in FAMILIES.values() if issubclass(f.task(), CapsuleSampling)]
        raise CapsgenError(f"{opened.run.path} is a {opened.train_config.family} run, which has no code capsules "
                           f"to choose from; --capsule and --domain need a run of: {', '.join(have) or 'none'}")
    if capsule is not None and not 0 <= capsule < task.num_capsules():
        raise CapsgenError(f"--capsule {capsule} is out of range; {opened.run.path} has capsules "
                           f"0..{task.num_capsules() - 1}")
    return task


def draw(opened: OpenRun, n: int, seed: int = 0, label: int | None = None,
         attributes: torch.Tensor | None = None, capsule: int | None = None,
         domain: str | None = None) -> torch.Tensor:
    """n images [n, C, H, W] in [0, 1]: from the prior, of class ``label``, with ``attributes`` [A],
    or from code ``capsule`` and/or pose ``domain`` ("full" | "restricted") of a capsule model."""
    if n < 1:
        raise CapsgenError(f"--n must be a positive number of images, got {n}")
    g = torch.Generator().manual_seed(seed)
    if sum(v is not None for v in (label, attributes, capsule)) > 1:
        raise CapsgenError("give one of --class, --attributes and --capsule, not several")
    if capsule is not None or domain is not None:
        if label is not None or attributes is not None:
            raise CapsgenError("--domain goes with --capsule or plain sampling, not with --class or --attributes")
        return capsule_task(opened, capsule).sample_capsules(n, capsule, domain, g)
    if label is not None:
        task = require(opened, "class-conditional")
        k = opened.info.num_classes or 0
        if not 0 <= label < k:
            raise CapsgenError(f"--class {label} is out of range; {opened.run.path} has classes 0..{k - 1}")
        return task.sample_classes(torch.full((n,), label, dtype=torch.long), g)
    if attributes is not None:
        task = require(opened, "attribute-conditional")
        return task.sample_attributes(attributes.expand(n, -1).clone(), g)
    return require(opened, "generate").sample(n, g)


def generate_images(run_dir: str | Path, n: int, seed: int, device: str | None = "cpu"
                    ) -> tuple[str, str | None, np.ndarray]:
    """(dataset, data_dir, uint8 [n, H, W, C]) drawn from a generative run's 'last' weights."""
    from capsgen.report.figures import to_uint8_hwc

    opened = open_for(run_dir, "generate", device=device)
    images = draw(opened, n, seed)
    return opened.train_config.data, opened.train_config.data_dir, to_uint8_hwc(images)


def is_sample_file(target: str | Path) -> bool:
    """A .npz path or an existing file (not a run folder)."""
    return str(target).lower().endswith(".npz") or Path(target).is_file()


def writable(out: str | Path, suffix: str, force: bool = False, option: str = "--out") -> Path:
    """``out`` as a Path if it has ``suffix``, its folder exists and is writable, and it is a new
    file (an existing one only with ``force``: capsgen never replaces a file it was not asked to)."""
    out = Path(out)
    if out.suffix.lower() != suffix:
        raise CapsgenError(f"{option} {out}: the output file must end in {suffix}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise CapsgenError(f"{out}: folder {parent} does not exist")
    if out.is_dir():
        raise CapsgenError(f"{out} is a folder; give a file name")
    if (out.exists() or out.is_symlink()) and not force:
        raise CapsgenError(f"{option} {out} already exists; give a new name, or add --force to replace it")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise CapsgenError(f"{out}: not writable")
    return out


def write_file(out: Path, payload: bytes) -> None:
    from capsgen.train.checkpoint import atomic_write_bytes

    try:
        atomic_write_bytes(out, payload)
    except OSError as exc:
        raise CapsgenError(f"{out}: cannot write ({exc.strerror or exc})") from None


def png_bytes(images: torch.Tensor, ncol: int, caption: str | None = None) -> bytes:
    """A PNG grid of images [N, C, H, W]; ``caption`` is drawn above it and stored as its
    Description text (readable without looking at the pixels)."""
    from PIL.PngImagePlugin import PngInfo

    from capsgen.report.figures import captioned, image_grid

    img = image_grid(images, ncol, scale=2)
    info = None
    if caption:
        img = captioned(img, caption)
        info = PngInfo()
        info.add_text("Description", caption)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def grid_caption(opened: OpenRun, what: str, seed: int) -> str:
    """"<family> <run>, step N: <what>, seed S" for a picture of ``opened``'s images."""
    from capsgen.train.checkpoint import read_checkpoint

    step = read_checkpoint(opened.checkpoint)[1]["state"]["step"]
    return f"{opened.train_config.family} {opened.run.path.name}, step {step}: {what}, seed {seed}"


def what_was_drawn(opened: OpenRun, label: int | None, attributes: str | None, capsule: int | None,
                   domain: str | None) -> str:
    names = opened.info.class_names
    if label is not None:
        return f"class {label}" + (f" ({names[label]})" if names and label < len(names) else "")
    if attributes:
        return f"attributes {attributes}"
    if capsule is not None or domain is not None:
        return (f"capsule {capsule}" if capsule is not None else "all capsules") + (f", {domain} poses" if domain else "")
    return "samples from the prior"


def sample_to_files(run_dir: str | Path, n: int, out: str | Path, grid: str | Path | None = None,
                    seed: int = 0, label: int | None = None, attributes: str | None = None,
                    device: str | None = "cpu", capsule: int | None = None,
                    domain: str | None = None, force: bool = False) -> dict[str, Any]:
    """Write ``n`` generated images as uint8 [n, H, W, C] under the key ``images`` of ``out`` (.npz).

    The same run, n, seed (and class or attributes) give the same file. ``grid`` (optional .png)
    shows the first images. Every argument is checked before anything is written; an existing
    ``out`` or ``grid`` is replaced only with ``force``.
    """
    from capsgen.report.figures import to_uint8_hwc

    if n < 1:
        raise CapsgenError(f"--n must be a positive number of images, got {n}")
    out = writable(out, ".npz", force)
    grid_path = writable(grid, ".png", force, "--grid") if grid else None
    if attributes:
        comma_items(attributes, "--attributes blue=1,striped=0")   # the form first: no run is opened for a typo
    opened = open_for(run_dir, "generate", device=device)
    if attributes:   # what the run can do comes first, then whether the names are its own
        require(opened, "attribute-conditional")
    attr = parse_attributes(attributes, opened.info.attribute_names, str(opened.run.path)) if attributes else None
    images = draw(opened, n, seed, label, attr, capsule, domain)
    arr = to_uint8_hwc(images)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=arr)
    write_file(out, buf.getvalue())
    result = {"run": str(opened.run.path), "out": str(out), "n": n, "shape": list(arr.shape), "seed": seed}
    if label is not None:
        result["class"] = label
    if attributes:
        result["attributes"] = attributes
    if capsule is not None:
        result["capsule"] = capsule
    if domain is not None:
        result["domain"] = domain
    if grid_path:
        first = images[:MAX_GRID]
        caption = grid_caption(opened, what_was_drawn(opened, label, attributes, capsule, domain), seed)
        write_file(grid_path, png_bytes(first, math.ceil(math.sqrt(len(first))), caption))
        result["grid"] = str(grid_path)
    return result


def interpolate_to_file(run_dir: str | Path, out: str | Path, rows: int = 8, cols: int = 10,
                        seed: int = 0, device: str | None = "cpu", force: bool = False) -> dict[str, Any]:
    """Write a rows x cols PNG; each row walks between two latents (or encodings). An existing
    ``out`` is replaced only with ``force``."""
    if rows <= 0 or cols < 2:
        raise CapsgenError(f"--rows must be >= 1 and --cols >= 2, got {rows} and {cols}")
    out = writable(out, ".png", force)
    opened = open_for(run_dir, "generate", device=device)
    images = opened.task.interpolate(rows, cols, torch.Generator().manual_seed(seed))
    caption = grid_caption(opened, f"{rows} interpolations (rows) of {cols} steps", seed)
    write_file(out, png_bytes(images, cols, caption))
    return {"run": str(opened.run.path), "out": str(out), "rows": rows, "cols": cols, "seed": seed}
