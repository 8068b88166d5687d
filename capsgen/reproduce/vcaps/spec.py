"""What ``capsgen reproduce vcaps`` trains and compares, its settings, and Huang et al.'s numbers.

Kept apart from the stages (run.py) and the report (report.py) so both can import it; torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """One trained model. ``paper`` / ``cpu`` are the ``--set`` pairs at ``--scale paper`` / ``cpu``
    on class data and on attribute data; ``preset`` the family preset at ``--scale paper`` (same
    two cases). ``roles``: what it is measured for — "classify" (test error beside the VCN),
    "generate" (sample quality at equal wall clock), "vcn" (the paper's model: everything)."""

    name: str
    family: str
    label: str
    roles: tuple[str, ...]
    preset: tuple[str | None, str | None] = (None, None)
    paper: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    cpu: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    def pairs(self, attributes: bool, scale: str) -> tuple[str, ...]:
        return (self.paper if scale == "paper" else self.cpu)[int(attributes)]

    def preset_for(self, attributes: bool, scale: str) -> str | None:
        return self.preset[int(attributes)] if scale == "paper" else None

    def trains_on(self, attributes: bool) -> bool:
        # the CapsNet comparison is one of test error: class data only
        return not (attributes and "classify" in self.roles and "vcn" not in self.roles)


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("vcaps", "vcaps", "variational capsule network (Huang et al.)", ("vcn",),
              preset=("huang-mnist", "huang-celeba"),
              # attribute mode at CPU widths: the residual networks with their CPU defaults, the
              # paper's loss weights (alpha 0.025 for 256x256x3 images, beta 10) and rate (2e-4), a
              # single-scale discriminator, and presence vectors (not in the paper). Attribute-
              # conditioned fidelity on shapes-attributes: alpha unscaled 51.2 % (chance; 15 min, 2
              # seeds), scaled 52.1 %, scaled + presence vectors 79.7 % (6 min, seed 0 each).
              cpu=(("model.mode=class",),
                   ("model.mode=attributes", "model.alpha=0.025", "model.alpha_pixels=196608", "model.beta=10",
                    "model.lr=2e-4", "model.presence_vectors=true"))),
    ModelSpec("capsnet", "capsnet", "CapsNet (Sabour et al.: dynamic routing, reconstruction)", ("classify",),
              # 64 conv maps, 8 primary capsule types: the primary-capsule convolution is ~95 % of
              # CapsNet's multiply-adds at Sabour et al.'s 256 / 32
              cpu=(("model.conv_channels=64", "model.primary_capsules=8"), ())),
    ModelSpec("dcgan", "dcgan", "DCGAN (Radford et al.; capsgen's defaults)", ("generate",)),
    ModelSpec("capsulegan", "capsulegan", "CapsuleGAN (capsule discriminator; capsgen's defaults)", ("generate",)),
)
MODEL_NAMES = tuple(m.name for m in MODELS)
SCALES = ("cpu", "paper")

# Huang et al. §4.2: MNIST test error (%) of the VCN encoder alone and with the reconstruction
# loss; Sabour et al.'s CapsNet as the paper quotes it (0.35 without, 0.25 with reconstruction).
PAPER_MNIST_ERROR = {"vcaps": {"no reconstruction": 0.36, "reconstruction": 0.30},
                     "capsnet": {"no reconstruction": 0.35, "reconstruction": 0.25}}
# Huang et al. §4.1.1: mean attribute accuracy (%) on CelebA's 40 attributes. The text says
# 91.36; the "Avg" column of their table 1 says 91.53 (91.42 without reconstruction).
PAPER_CELEBA_MEAN = 91.36
PAPER_CELEBA_TABLE_AVG = {"reconstruction": 91.53, "no reconstruction": 91.42}


@dataclass
class Settings:
    data: str
    budget: float                          # training minutes per model and seed
    out: str
    data_dir: str | None = None
    seeds: tuple[int, ...] = (0,)
    scale: str = "cpu"
    models: tuple[str, ...] = MODEL_NAMES
    n_metrics: int = 2000                  # samples for FID / precision / recall and fidelity
    extra: tuple[str, ...] = ()            # --set pairs, given to every model whose family has the field
    command: str = ""
    attributes: bool = field(default=False, compare=False)   # filled in from the data

    def identity(self) -> dict[str, Any]:
        """The settings that decide the results (a folder is only continued with the same ones)."""
        return {"data": self.data, "budget": self.budget, "seeds": list(self.seeds), "scale": self.scale,
                "models": list(self.models), "n_metrics": self.n_metrics, "extra": list(self.extra)}

    def specs(self) -> list[ModelSpec]:
        return [m for m in MODELS if m.name in self.models and m.trains_on(self.attributes)]
