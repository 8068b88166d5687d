"""Settings of the small CNN classifier (the evaluator network's recipe)."""
from __future__ import annotations

from dataclasses import dataclass

from capsgen.config import FamilyConfig, opt


@dataclass
class ClassifierConfig(FamilyConfig):
    channels: tuple[int, ...] = opt((32, 64, 128), min=1)   # one 3x3 conv (padding 1) per entry
    pool_after: tuple[int, ...] = opt((0, 1), min=0)        # 2x2 max-pool after these convs (0-based)
    hidden: int = opt(256, min=1)                           # penultimate width = feature dimension
    dropout: float = opt(0.3, min=0, max=0.99)
    lr: float = opt(2e-3, gt=0)
    lr_decay: float = opt(0.6, gt=0, max=1)   # multiply the learning rate by this every epoch
    weight_decay: float = opt(0.0, min=0)
    label_smoothing: float = opt(0.0, min=0, max=0.99)
    shift_pixels: int = opt(0, min=0)         # random translation by up to this many pixels (augmentation)
    hflip: bool = False                       # random horizontal flips (fine for clothes, wrong for digits)
