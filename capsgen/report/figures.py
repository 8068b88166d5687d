"""Pictures: image grids and training curves, written as PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """Float images [N, C, H, W] in [0, 1] -> uint8 [N, H, W, C]."""
    arr = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


CAPTION_LINE = 12   # pixels per caption line: PIL's default 10-pixel font plus spacing


def captioned(img: Image.Image, caption: str) -> Image.Image:
    """``img`` under a white strip holding ``caption``, wrapped to the picture's width, in RGB."""
    from PIL import ImageDraw

    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    for word in caption.split():
        if lines and measure.textlength(f"{lines[-1]} {word}") <= img.width - 4:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    top = CAPTION_LINE * len(lines) + 2
    out = Image.new("RGB", (img.width, img.height + top), "white")
    out.paste(img.convert("RGB"), (0, top))
    draw = ImageDraw.Draw(out)
    for k, line in enumerate(lines):
        draw.text((2, 1 + CAPTION_LINE * k), line, fill="black")
    return out


def image_grid(images: torch.Tensor, ncol: int, pad: int = 2, scale: int = 1) -> Image.Image:
    """Tile float images [N, C, H, W] in [0, 1] into one picture, ``ncol`` per row."""
    arr = to_uint8_hwc(images)
    n, h, w, c = arr.shape
    nrow = (n + ncol - 1) // ncol
    canvas = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
    for k in range(n):
        r, q = divmod(k, ncol)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        canvas[y:y + h, x:x + w] = arr[k]
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def save_image_grid(images: torch.Tensor, path: str | Path, ncol: int, scale: int = 2) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, ncol, scale=scale).save(path)
    return path


def plot_curves(rows: Sequence[dict], keys: Sequence[tuple[str, str]], path: str | Path,
                title: str = "") -> Path:
    """Plot ``(split, metric)`` series from metrics rows against step; one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, (split, key) in zip(axes[0], keys):
        pts = [(r["step"], r[key]) for r in rows if r.get("split") == split and key in r]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None)
        ax.set_title(f"{split} {key}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
