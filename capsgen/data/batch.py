"""The one thing that travels from a reader to a family's step: a :class:`Batch`.

Readers return :class:`~capsgen.data.base.ImageData` (uint8, numpy); ``ImageData.to_batch()``
turns a split into one float Batch, the loop indexes it per step, moves the slice to the run's
device and hands it to ``Task.train_step`` / ``Task.evaluate``. Every field a dataset has
survives the trip: class labels *and* binary attributes (CelebA, ``shapes-attributes``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """images float32 [B, C, H, W] in [0, 1]; labels int64 [B] or None; attributes float32 [B, A]
    in {0, 1} or None."""

    images: torch.Tensor
    labels: torch.Tensor | None = None
    attributes: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        for name in ("labels", "attributes"):
            t = getattr(self, name)
            if t is not None and len(t) != n:
                raise ValueError(f"batch {name} has {len(t)} rows for {n} images")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx) -> Batch:
        """The rows ``idx`` (a slice, or an index tensor) of every field."""
        def pick(t):
            return None if t is None else t[idx]

        return Batch(self.images[idx], pick(self.labels), pick(self.attributes))

    def to(self, device: torch.device | str) -> Batch:
        def move(t):
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(move(self.images), move(self.labels), move(self.attributes))
