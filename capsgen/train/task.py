"""The contract between the generic loop and a model family.

A family (CapsNet, CapsuleGAN, G-CapsNet, PoE capsules, variational capsules, …) subclasses
:class:`Task`: it builds its modules and optimizers and owns ``train_step``; the loop in
:mod:`capsgen.train.loop` handles data order, logging, checkpoints, resume and interruption
the same way for all of them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class DataInfo:
    """What a family needs to know about its data to build itself."""

    name: str
    shape: tuple[int, int, int]   # (C, H, W)
    num_classes: int | None
    class_names: list[str] | None
    train_size: int


@dataclass
class StepContext:
    """Per-step facts handed to ``train_step``.

    ``generator`` is seeded from (run seed, step), so the randomness a step draws through it
    (augmentation, latent noise) is the same whether or not the run was interrupted before it.
    """

    step: int
    epoch: float
    steps_per_epoch: int
    generator: torch.Generator


class Task(ABC):
    """A model family's trainable unit. Subclasses set ``modules`` and ``optimizers``."""

    #: name of the metric that selects the 'best' checkpoint, and whether lower is better
    best_metric: str = "test_error"
    best_mode: str = "min"

    def __init__(self, config: Any, info: DataInfo, device: torch.device):
        self.config = config
        self.info = info
        self.device = device
        self.modules: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    @abstractmethod
    def train_step(self, images: torch.Tensor, labels: torch.Tensor | None,
                   ctx: StepContext) -> dict[str, float]:
        """One optimisation step on a batch: images [B, C, H, W] in [0, 1], labels [B] or None.

        Returns scalar figures to log (e.g. loss, accuracy).
        """

    @abstractmethod
    def evaluate(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
        """Figures on held-out data (images [N, C, H, W]); must not change any state."""

    def write_figures(self, out_dir: Path, images: torch.Tensor,
                      labels: torch.Tensor | None) -> list[Path]:
        """Write the family's pictures (PNG) from held-out data; returns their paths."""
        return []

    def check_figures(self, figures: dict[str, float]) -> str | None:
        """Optional: a reason to stop the run after a step (e.g. "g_loss 3e5 exceeded 1e4"), or None.

        The loop already stops on non-finite figures; this lets a family add its own limits.
        """
        return None

    def after_step(self, step: int, run: Any, writer: Any = None) -> None:
        """Optional: called after ``step`` steps have finished (e.g. to write progress pictures).

        ``run`` is the :class:`~capsgen.train.rundir.RunDir`, ``writer`` the TensorBoard
        SummaryWriter. It must not change training state or draw from the global RNG, so a
        resumed run stays identical to an uninterrupted one.
        """

    def train_mode(self, flag: bool = True) -> None:
        for m in self.modules.values():
            m.train(flag)
