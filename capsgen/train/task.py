"""The contract between the generic loop and a model family.

A family (CapsNet, CapsuleGAN, G-CapsNet, PoE capsules, variational capsules, …) subclasses
:class:`Task`: it builds its modules and optimizers and owns ``train_step``; the loop in
:mod:`capsgen.train.loop` handles data order, devices, processes, logging, checkpoints, resume
and interruption the same way for all of them.

The contract, stated once:

- ``train_step(batch, ctx)`` does one whole optimisation step on a :class:`Batch` already on
  ``self.device`` (images [B, C, H, W] in [0, 1], labels [B] or None, attributes [B, A] or
  None) and returns scalar figures to log. All randomness it draws goes through
  ``ctx.generator`` (seeded by run seed and step), so a resumed run repeats the same draws.
  Under torchrun the batch is this process's slice of the global batch: draw per-example
  randomness for ``ctx.global_batch`` examples and keep ``ctx.rank_slice`` of it, and update
  through :meth:`Task.optimizer_step` (or :meth:`Task.all_mean` for hand-written rules), which
  averages across processes.
- The loop only ever stops, checkpoints or evaluates *between* steps: a checkpoint's step
  always matches its weights, its optimizer moments and its :meth:`extra_state`.
- ``evaluate(batch)`` must not change any state (it runs in eval mode under ``no_grad``).
- State that is neither a module nor an optimizer (persistent Markov chains, a momentum buffer of
  a hand-written update rule, …) is returned by :meth:`extra_state` as named tensors and given
  back by :meth:`load_extra_state`; it is saved pickle-free beside the weights.
- What a run can *do* besides training — generate, classify, discriminate — is declared by
  inheriting the capability classes of :mod:`capsgen.train.capabilities`, never guessed.
- A family with a matched non-capsule twin (its config's ``TWIN``, built when ``config.twin``)
  names in ``TWIN_PARTS`` the module paths (``"discriminator.caps"``: module ``discriminator``'s
  submodule ``caps``) where the twin differs. Everything outside them — every other submodule's
  name, type and parameter shapes, the optimizers, the capabilities — is the same for both, and
  tests/test_twins.py checks exactly that for every family that has a twin.
- ``activation_bytes(batch_size)`` estimates, from the built networks' shapes alone, the bytes of
  activations one ``train_step`` of ``batch_size`` examples (this process's rows) keeps alive at
  its peak: the family lists its forward passes and :mod:`capsgen.train.memory` applies one rule
  per kind of layer (votes [B, I, J, D] and routing intermediates for capsule layers, each
  layer's output otherwise). It must work on a task built on the ``meta`` device, because the
  estimate (:meth:`memory_estimate`, plus weights, gradients and optimizer state) is checked
  against the device's free memory before the real task is built. ``MEMORY_OPTIONS`` names the
  options that shrink it, for the refusal's one line. A family that states no activations
  (``None``, the default) is checked on its weights and optimizer state alone.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from capsgen.data.batch import Batch
from capsgen.train.distributed import Distributed, SINGLE
from capsgen.train.memory import state_bytes


@dataclass
class DataInfo:
    """What a family needs to know about its data to build itself (kept in config.json)."""

    name: str
    shape: tuple[int, int, int]   # (C, H, W)
    num_classes: int | None
    class_names: list[str] | None
    train_size: int
    attribute_names: list[str] | None = None

    @property
    def num_attributes(self) -> int | None:
        return None if self.attribute_names is None else len(self.attribute_names)


@dataclass
class StepContext:
    """Per-step facts handed to ``train_step``.

    ``generator`` is seeded from (run seed, step), so the randomness a step draws through it
    (augmentation, latent noise) is the same whether or not the run was interrupted before it,
    and the same in every process of a multi-process run.
    """

    step: int
    epoch: float
    steps_per_epoch: int
    generator: torch.Generator
    global_batch: int = 0                  # examples in the whole step, over all processes
    rank_slice: slice = field(default_factory=lambda: slice(None))   # this process's rows of it


class Task(ABC):
    """A model family's trainable unit. Subclasses set ``modules`` and ``optimizers``."""

    #: name of the metric that selects the 'best' checkpoint ("" = keep only 'last'), and whether
    #: lower is better
    best_metric: str = "test_error"
    best_mode: str = "min"
    #: module paths where the family's twin differs from the capsule model (see the contract)
    TWIN_PARTS: tuple[str, ...] = ()
    #: options that shrink :meth:`memory_estimate`, named when a run is refused for memory
    MEMORY_OPTIONS: tuple[str, ...] = ("--batch-size",)

    def __init__(self, config: Any, info: DataInfo, device: torch.device,
                 dist: Distributed = SINGLE):
        self.config = config
        self.info = info
        self.device = torch.device(device)
        self.dist = dist
        self.modules: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    @abstractmethod
    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        """One optimisation step on ``batch`` (on ``self.device``); returns scalar figures to log."""

    @abstractmethod
    def evaluate(self, batch: Batch) -> dict[str, float]:
        """Figures on held-out data (a CPU batch; move slices to ``self.device``); no state changes."""

    def activation_bytes(self, batch_size: int) -> int | None:
        """Peak activation bytes of one ``train_step`` on ``batch_size`` examples (see the contract);
        None: the family states none, and only its weights and optimizer state are counted."""
        return None

    def memory_estimate(self, batch_size: int) -> int:
        """Bytes one ``train_step`` of ``batch_size`` examples needs at its peak on this process:
        weights, gradients and optimizer state (exact) plus :meth:`activation_bytes` (estimated)."""
        return state_bytes(self.modules, self.optimizers) + (self.activation_bytes(batch_size) or 0)

    def write_figures(self, out_dir: Path, batch: Batch) -> list[Path]:
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
        resumed run stays identical to an uninterrupted one. Called in process 0 only.
        """

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Training state beyond modules and optimizers, as named tensors (saved in checkpoints)."""
        return {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`extra_state` returned (tensors arrive on the CPU)."""

    def disabled_capabilities(self) -> tuple[str, ...]:
        """Capabilities this run's config turns off although the class inherits them (default none)."""
        return ()

    def train_mode(self, flag: bool = True) -> None:
        for m in self.modules.values():
            m.train(flag)

    # -- helpers every family's step uses ------------------------------------------------------
    def optimizer_step(self, name: str, loss: torch.Tensor, skip_nonfinite: bool = False) -> float:
        """zero_grad, backward, average gradients over processes, step; returns the gradient norm.

        With ``skip_nonfinite`` a non-finite loss or gradient leaves the weights as they were
        (every process takes the same decision: the norm is taken after averaging).
        """
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in opt.param_groups for p in g["params"]]
        grads = [p.grad for p in params if p.grad is not None]
        self.dist.mean_(grads)
        norm = torch.nn.utils.get_total_norm(grads).item() if grads else 0.0
        if not skip_nonfinite or (math.isfinite(norm) and math.isfinite(loss.item())):
            opt.step()
        return norm

    def all_mean(self, tensors: list[torch.Tensor]) -> None:
        """Average tensors (e.g. a hand-derived update) over processes, in place; no-op alone."""
        self.dist.mean_(tensors)
