"""The example family's settings: torch-free, every field with its range."""
from __future__ import annotations

from dataclasses import dataclass

from capsgen.config import FamilyConfig, opt


@dataclass
class ExampleConfig(FamilyConfig):
    lr: float = opt(0.1, gt=0)
    momentum: float = opt(0.9, min=0, max=0.999)
    mean_decay: float = opt(0.9, min=0, max=1)

    PRESETS = {"slow": ("model.lr=0.01",)}
