"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training")
for the GAN discriminator: translation and cutout, applied to real *and* generated images.

The discriminator only ever sees augmented images, in its own step and in the generator's, so it
cannot learn the augmentation as a sign of "real" or "fake", and the generator's gradient passes
through the (differentiable) augmentation of its samples. Both operations are index arithmetic
and a ``torch.where``: vectorised over the batch, any device, gradients flow to the kept pixels.

- ``translation``: shift each image by (ty, tx), each uniform in [-s, s] with
  s = int(side / 8 + 0.5) (DiffAugment's ratio 1/8: 4 pixels on 28x28, 1 on 8x8);
- ``cutout``: blank a square of int(side / 2 + 0.5) pixels whose centre is uniform over the image
  (partly outside at the borders, as in DiffAugment).

Vacated and blanked pixels take ``fill``: -1, the data's zero (black) in the generators' [-1, 1]
range, where DiffAugment's reference code fills 0 (mid-grey there). On MNIST-like data a black
fill is the background; a grey square would be an edge the generator cannot make, though both
real and fake images get one, so the choice matters little to what D can tell apart.

Every offset is drawn from the ``generator`` passed in (the step's), never from torch's global
RNG, for ``total`` images, and the rows ``rows`` of those are this process's (the same
convention as the latents: a multi-process run draws for the global batch).
"""
from __future__ import annotations

import torch

TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5
POLICIES = ("translation", "cutout")


def translate(x: torch.Tensor, ty: torch.Tensor, tx: torch.Tensor, fill: float = -1.0) -> torch.Tensor:
    """out[b, :, i, j] = x[b, :, i - ty[b], j - tx[b]], or ``fill`` where that is outside the image.

    x [B, C, H, W]; ty, tx [B] integer shifts (positive moves the content down / right).
    """
    B, C, H, W = x.shape
    rows = torch.arange(H, device=x.device)[None, :] - ty.to(x.device)[:, None]     # [B, H]
    cols = torch.arange(W, device=x.device)[None, :] - tx.to(x.device)[:, None]     # [B, W]
    inside = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]   # [B, H, W]
    b = torch.arange(B, device=x.device)[:, None, None]
    moved = x.permute(0, 2, 3, 1)[b, rows.clamp(0, H - 1)[:, :, None], cols.clamp(0, W - 1)[:, None, :]]
    moved = moved.permute(0, 3, 1, 2)                                                # [B, C, H, W]
    return torch.where(inside[:, None], moved, torch.full((), fill, dtype=x.dtype, device=x.device))


def cutout(x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: tuple[int, int],
           fill: float = -1.0) -> torch.Tensor:
    """``x`` [B, C, H, W] with rows [cy - sh // 2, cy - sh // 2 + sh) x the same for columns set to ``fill``.

    cy, cx [B] integer centres; size = (sh, sw). The square may reach past the border.
    """
    B, C, H, W = x.shape
    sh, sw = size
    top = cy.to(x.device)[:, None] - sh // 2
    left = cx.to(x.device)[:, None] - sw // 2
    r = torch.arange(H, device=x.device)[None, :]
    c = torch.arange(W, device=x.device)[None, :]
    hit = ((r >= top) & (r < top + sh))[:, :, None] & ((c >= left) & (c < left + sw))[:, None, :]
    return torch.where(hit[:, None], torch.full((), fill, dtype=x.dtype, device=x.device), x)


def translation_range(side: int) -> int:
    return int(side * TRANSLATION_RATIO + 0.5)


def cutout_size(side: int) -> int:
    return int(side * CUTOUT_RATIO + 0.5)


def diff_augment(x: torch.Tensor, policy: str, generator: torch.Generator, total: int | None = None,
                 rows: slice = slice(None), fill: float = -1.0) -> torch.Tensor:
    """Apply ``policy`` ("none", "translation", "cutout" or "translation,cutout", in that order) to x.

    Draws, per operation and in this order, from ``generator`` for ``total`` images (default
    len(x)) and keeps ``rows``: translation ty then tx, each uniform in [-s, s]; cutout cy
    uniform in [0, H + (1 - sh % 2)) then cx likewise (DiffAugment's ranges).
    """
    if policy in ("", "none"):
        return x
    parts = policy.split(",")
    unknown = [p for p in parts if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown DiffAugment operation {unknown[0]!r}; choose from: {', '.join(POLICIES)}")
    B, _, H, W = x.shape
    n = B if total is None else total
    for part in parts:
        if part == "translation":
            sy, sx = translation_range(H), translation_range(W)
            ty = torch.randint(-sy, sy + 1, (n,), generator=generator)[rows]
            tx = torch.randint(-sx, sx + 1, (n,), generator=generator)[rows]
            x = translate(x, ty, tx, fill)
        else:
            sh, sw = cutout_size(H), cutout_size(W)
            cy = torch.randint(0, H + (1 - sh % 2), (n,), generator=generator)[rows]
            cx = torch.randint(0, W + (1 - sw % 2), (n,), generator=generator)[rows]
            x = cutout(x, cy, cx, (sh, sw), fill)
    return x
