"""Pieces several families share: augmentation drawn per global batch, label checks, lr decay,
and batched scoring. Written once here so every family does them the same way."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from capsgen.train.capabilities import PoseDecoding, PoseEncoding, PoseLayout
from capsgen.train.task import DataInfo, StepContext


def require_labels(info: DataInfo, family: str) -> int:
    """The number of classes, or a ValueError naming the dataset (the CLI shows it as one line)."""
    if not info.num_classes:
        raise ValueError(f"{family} needs class labels; dataset {info.name} has none")
    return info.num_classes


def set_step_lr(opt: torch.optim.Optimizer, base_lr: float, decay: float, ctx: StepContext,
                every_steps: int | None = None) -> None:
    """lr = base_lr x decay^epoch, or with ``every_steps`` base_lr x decay^(step / every_steps)
    (continuous, TensorFlow's ``exponential_decay`` without staircase). A function of the step,
    so resuming needs no scheduler state."""
    power = ctx.step // ctx.steps_per_epoch if every_steps is None else ctx.step / every_steps
    for group in opt.param_groups:
        group["lr"] = base_lr * decay ** power


def _rows(ctx: StepContext | None, n: int) -> tuple[int, slice]:
    """How many examples to draw randomness for, and which of them are this process's."""
    if ctx is None or not ctx.global_batch:
        return n, slice(None)
    return ctx.global_batch, ctx.rank_slice


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator,
                 ctx: StepContext | None = None) -> torch.Tensor:
    """Shift each image [B, C, H, W] by up to ``max_shift`` pixels per axis, zero-filled.

    The shifts are drawn for the whole global batch of ``ctx`` and sliced to this process's rows,
    so a multi-process run augments every example exactly as a one-process run does.
    """
    if max_shift <= 0:
        return x
    B, C, H, W = x.shape
    total, rows = _rows(ctx, B)
    d = torch.randint(-max_shift, max_shift + 1, (2, total), generator=generator)[:, rows].to(x.device)
    padded = F.pad(x, (max_shift,) * 4)
    ar_h, ar_w = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
    r = (ar_h + max_shift - d[0][:, None])[:, :, None]   # [B, H, 1]
    c = (ar_w + max_shift - d[1][:, None])[:, None, :]   # [B, 1, W]
    b = torch.arange(B, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[b, r, c].permute(0, 3, 1, 2).contiguous()


def random_hflip(x: torch.Tensor, generator: torch.Generator, ctx: StepContext | None = None) -> torch.Tensor:
    """Flip each image [B, C, H, W] left-right with probability 1/2 (drawn per global batch)."""
    total, rows = _rows(ctx, len(x))
    flip = (torch.rand(total, generator=generator) < 0.5)[rows].to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


@contextlib.contextmanager
def step_dropout_rng(generator: torch.Generator, device: torch.device, rank: int = 0) -> Iterator[None]:
    """Fork torch's global RNG (CPU, and ``device`` if CUDA), seeded from the step's ``generator``.

    ``nn.Dropout`` draws from the global RNG; seeding it from the step makes a step depend only on
    (run seed, step), so a resumed run repeats it, and the caller's RNG is left as it was. The seed
    is offset by the rank: every process draws its own masks (dropout cannot draw a global batch's
    masks and slice them as latents are).
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator)) + rank
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, device: torch.device,
            batch: int = 500) -> torch.Tensor:
    """fn over images [N, ...] in chunks of ``batch`` on ``device``; results concatenated on the CPU."""
    return torch.cat([fn(images[k:k + batch].to(device)).float().cpu() for k in range(0, len(images), batch)])


def classification_figures(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """test_error and n from class scores [N, K] and labels [N]."""
    return {"test_error": (scores.argmax(1) != labels).float().mean().item(), "n": len(labels)}


class ClassCapsulePoses(PoseDecoding, PoseEncoding):
    """Pose decoding and encoding for a classifier with Sabour's masked decoder: the task's
    ``predict(images) -> (poses [N, K, D], lengths [N, K])`` on the CPU and its ``model.decode(
    poses, labels)`` reconstructing from capsule ``labels[n]`` alone. The active capsule is the
    longest, as at test time in Sabour et al.; values are squashed, so each lies in (-1, 1)."""

    def pose_layout(self) -> PoseLayout:
        k = self.info.num_classes
        names = tuple(self.info.class_names or [str(c) for c in range(k)])
        return PoseLayout(names, self.model.decoder[0].in_features // k, bound=1.0)

    @torch.no_grad()
    def decode_poses(self, poses: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        self.pose_layout().check(poses, active)
        winner = active.long().argmax(1)
        return self.model.decode(poses.to(self.device), winner.to(self.device)).float().cpu()

    @torch.no_grad()
    def encode_poses(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        poses, lengths = self.predict(images)
        return poses, lengths, F.one_hot(lengths.argmax(1), lengths.shape[1]).bool()
