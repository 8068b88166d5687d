"""A model family's registry entry: torch-free, so listing families costs no torch import."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    config_cls: type                      # a capsgen.config.FamilyConfig dataclass
    task: Callable[[], type]              # imports and returns the Task class (torch) when called
    capabilities: tuple[str, ...]         # names from capsgen.train.capabilities.CAPABILITIES
    paper: str = ""                       # who to cite, by first author

    @property
    def presets(self) -> list[str]:
        return sorted(self.config_cls.PRESETS)
