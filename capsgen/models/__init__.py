"""Model families: each pairs a config dataclass with a Task subclass that owns its step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capsgen.errors import ConfigError


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    config_cls: type
    task_path: str          # "module:Class", imported lazily so `capsgen --help` stays fast

    def task_cls(self) -> Any:
        import importlib

        module, cls = self.task_path.split(":")
        return getattr(importlib.import_module(module), cls)


def _families() -> dict[str, Family]:
    from capsgen.models.capsnet import CapsNetConfig
    from capsgen.models.classifier import ClassifierConfig
    from capsgen.models.gan_task import CapsuleGANConfig, DCGANConfig

    return {
        "capsnet": Family("capsnet", "CapsNet classifier (Sabour et al. 2017)", CapsNetConfig,
                          "capsgen.models.capsnet_task:CapsNetTask"),
        "classifier": Family("classifier", "small CNN classifier; the evaluator network of the sample metrics",
                             ClassifierConfig, "capsgen.models.classifier_task:ClassifierTask"),
        "dcgan": Family("dcgan", "DCGAN: convolutional generator and discriminator (Radford et al. 2015)",
                        DCGANConfig, "capsgen.models.gan_task:GANTask"),
        "capsulegan": Family("capsulegan", "CapsuleGAN: CapsNet discriminator (Jaiswal et al. 2018; Karmakar)",
                             CapsuleGANConfig, "capsgen.models.gan_task:GANTask"),
    }


FAMILIES = _families()


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(sorted(FAMILIES))}") from None
