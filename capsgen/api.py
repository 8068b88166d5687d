"""The Python API: ``capsgen.load_run(path)`` and ``capsgen.train(family, data=..., **overrides)``.

A :class:`Run` is a trained run folder reopened in eval mode (no dataset is read). What it can
do is what its Task declares (:mod:`capsgen.train.capabilities`); asking for anything else gets
the same one-line :class:`~capsgen.errors.CapsgenError` as the command line. Images go in as a
float tensor [N, C, H, W] in [0, 1] or a uint8 array [N, H, W, C] (what sample files hold) and
come out as float tensors [N, C, H, W] in [0, 1] on the CPU.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from capsgen.errors import CapsgenError
from capsgen.models.common import batched
from capsgen.runs import OpenRun, make_configs, open_run, train_new
from capsgen.sampling import draw, parse_attributes, require
from capsgen.train.capabilities import capabilities_of

# capsgen.train's keywords that are TrainConfig fields given as command-line flags; any other
# keyword is a --set pair (a bare name resolves to model.* or train.* when unambiguous).
TRAIN_FLAGS = ("data_dir", "epochs", "steps", "minutes", "batch_size", "seed", "precision")


class Run:
    """A trained run: ``config``, ``model``, and ``sample`` / ``classify`` / ``encode`` / ``decode``
    where its family can."""

    def __init__(self, opened: OpenRun):
        self._opened = opened
        self.path: Path = opened.run.path
        self.task = opened.task
        self.capabilities: list[str] = capabilities_of(opened.task)

    def __repr__(self) -> str:
        return (f"Run('{self.path}', family={self.config['train']['family']!r}, "
                f"capabilities={self.capabilities})")

    @property
    def config(self) -> dict[str, Any]:
        """{"train": TrainConfig fields, "model": the family's config fields} as plain values."""
        from capsgen.config import to_dict

        return {"train": to_dict(self._opened.train_config), "model": to_dict(self._opened.model_config)}

    @property
    def model(self) -> torch.nn.Module:
        """The run's networks in eval mode: the family's one module, or a ModuleDict of its parts
        (e.g. generator and discriminator)."""
        modules = self.task.modules
        return next(iter(modules.values())) if len(modules) == 1 else torch.nn.ModuleDict(modules)

    def sample(self, n: int, cls: int | None = None, attributes: dict[str, int] | str | None = None,
               seed: int = 0) -> torch.Tensor:
        """n images [n, C, H, W] in [0, 1]: from the prior, of class ``cls``, or with ``attributes``
        ({"blue": 1, "striped": 0} or "blue=1,striped=0"; unnamed ones are 0). Same seed, same images."""
        attr = None
        if attributes is not None:
            require(self._opened, "attribute-conditional")
            text = attributes if isinstance(attributes, str) else ",".join(f"{k}={v}" for k, v in attributes.items())
            attr = parse_attributes(text, self._opened.info.attribute_names, str(self.path))
        return draw(self._opened, n, seed, cls, attr)

    def classify(self, images: Any) -> torch.Tensor:
        """Predicted classes [N] (int64) of images."""
        task = require(self._opened, "classify")
        with torch.no_grad():
            return batched(task.class_scores, self._images(images), task.device).argmax(1)

    def encode(self, images: Any) -> torch.Tensor:
        """The model's capsules [N, *caps, D] of images (families that encode: see capsgen models)."""
        return require(self._opened, "encode").encode_capsules(self._images(images))

    def decode(self, capsules: torch.Tensor) -> torch.Tensor:
        """Images [N, C, H, W] in [0, 1] from capsules laid out as :meth:`encode` returns them."""
        return require(self._opened, "encode").decode_capsules(capsules)

    def _images(self, images: Any) -> torch.Tensor:
        c, h, w = self._opened.info.shape
        if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape[1:] == (h, w, c):
            return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
        if isinstance(images, torch.Tensor) and images.is_floating_point() and tuple(images.shape[1:]) == (c, h, w):
            return images.float().cpu()
        got = f"{images.dtype} {list(images.shape)}" if hasattr(images, "shape") else type(images).__name__
        raise CapsgenError(f"{self.path} takes float tensors [N, {c}, {h}, {w}] in [0, 1] or uint8 arrays "
                           f"[N, {h}, {w}, {c}], got {got}")


def load_run(path: str | Path, checkpoint: str = "last", device: str | None = "cpu") -> Run:
    """Reopen the run folder ``path`` with its ``checkpoint`` ('last' or 'best') on ``device``."""
    return Run(open_run(path, checkpoint, device))


def train(family: str, data: str, out: str | Path, preset: str | None = None, progress: bool = False,
          device: str | None = "auto", **overrides: Any) -> Run:
    """Train a new run of ``family`` on ``data`` into ``out`` (new or empty) and return it reopened.

    ``overrides``: the loop's budget and settings (``steps``, ``epochs``, ``minutes``,
    ``batch_size``, ``seed``, ``data_dir``, ``precision``) and any config field as ``name=value``
    (``lr=1e-3``, ``routing_iterations=2``; tuples as tuples), exactly as ``capsgen train`` takes
    them. Everything is checked before anything is written. Like every run, it seeds torch's,
    numpy's and Python's global generators from its seed.
    """
    flags = {k: overrides.pop(k) for k in TRAIN_FLAGS if k in overrides}
    pairs = [f"{k}={_as_text(v)}" for k, v in overrides.items()]
    tcfg, mcfg = make_configs(family, pairs, preset=preset, data=data, **flags)
    run, _ = train_new(tcfg, mcfg, out, progress=progress, device=device, preset=preset)
    return load_run(run.path, device=device)


def _as_text(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
