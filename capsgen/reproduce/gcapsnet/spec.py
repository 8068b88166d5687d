"""What ``capsgen reproduce gcapsnet`` trains and compares, its settings, and Chen et al.'s own numbers.

Kept apart from the stages (run.py) and the report (report.py) so both can import it; torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """One row of the table-2 analog.

    ``preset`` is the family preset on 1-channel (MNIST-like) and 3-channel (CIFAR-like) data
    (None: the family's defaults; "-": not trained on such data); ``paper`` / ``paper_color`` the
    extra ``--set`` pairs on top of it at ``--scale paper`` and ``cpu`` / ``cpu_color`` at
    ``--scale cpu``. ``paper_row`` names the row of Chen et al.'s table 2 to set beside it, on
    1-channel and on 3-channel data ("" = none).
    """

    name: str
    family: str
    label: str
    preset: tuple[str | None, str | None]
    paper_row: tuple[str, str]
    paper: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    cpu: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    def trains_on(self, channels: int) -> bool:
        return self.preset[self._i(channels)] != "-"

    def preset_for(self, channels: int) -> str | None:
        return self.preset[self._i(channels)]

    def pairs_for(self, channels: int, scale: str) -> tuple[str, ...]:
        return (self.cpu if scale == "cpu" else self.paper)[self._i(channels)]

    def paper_row_for(self, channels: int) -> str:
        return self.paper_row[self._i(channels)]

    @staticmethod
    def _i(channels: int) -> int:
        return 0 if channels == 1 else 1


# --scale cpu: the same architectures with fewer maps, so a model trains thousands of steps in a
# budget of minutes on one CPU thread. The primary-capsule convolution (256 -> 32 x 8 maps, 9x9)
# is ~95 % of the capsule networks' multiply-adds at paper size; 64 -> 8 x 8 maps cut it 16x.
_CPU_BODY = ("model.conv_channels=64", "model.primary_caps=8")
_CPU_CAPSNET = ("model.conv_channels=64", "model.primary_capsules=8")
_RECON = ("model.reconstruction=true",)

MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("baseline", "gcapsnet", "CNN baseline (Sabour et al.'s, as Chen et al. give it)",
              ("baseline", "cifar-baseline"), ("vanilla CNN", "vanilla CNN"),
              cpu=(("model.baseline_conv=32,32,16",), ("model.baseline_conv=32,64",))),
    ModelSpec("capsnet", "capsnet",
              "CapsNet (Sabour et al.: dynamic routing, 3 iterations, reconstruction)",
              (None, None), ("CapsNets**", "CapsNets**"),
              paper=((), ("model.conv_channels=64", "model.class_dim=8")),
              cpu=(_CPU_CAPSNET, (*_CPU_CAPSNET, "model.class_dim=8"))),
    ModelSpec("fc-recon", "gcapsnet", "FC G-CapsNet with reconstruction", ("fc-recon", "cifar-fc"),
              ("FC G-CapsNets", ""), paper=((), _RECON), cpu=(_CPU_BODY, (*_CPU_BODY, *_RECON))),
    ModelSpec("fc", "gcapsnet", "FC G-CapsNet, no reconstruction", ("fc", "cifar-fc"),
              ("FC G-CapsNets*", "FC G-CapsNets"), cpu=(_CPU_BODY, _CPU_BODY)),
    ModelSpec("conv-recon", "gcapsnet", "conv G-CapsNet with reconstruction", ("conv-recon", "cifar-conv"),
              ("Conv G-CapsNets", ""), paper=((), _RECON), cpu=(_CPU_BODY, (*_CPU_BODY, *_RECON))),
    ModelSpec("conv", "gcapsnet", "conv G-CapsNet, no reconstruction", ("conv", "cifar-conv"),
              ("Conv G-CapsNets*", "Conv G-CapsNets"), cpu=(_CPU_BODY, _CPU_BODY)),
    ModelSpec("multilayer", "gcapsnet", "multi-layer G-CapsNet (supplementary table 1)", ("-", "multilayer"),
              ("", "Multi G-CapsNets")),
)
MODEL_NAMES = tuple(m.name for m in MODELS)
# The classifiers Chen et al. test on AC-GAN digits (table 3) and attack (4.3, supplementary 6.2).
# The attacks also take CapsNet, so dynamic and trainable routing meet the same perturbed images,
# and white-box PGD beside Chen et al.'s two attacks (neither is in the paper; the report says so).
TABLE3_MODELS = ("baseline", "fc", "conv")
ATTACK_MODELS = ("baseline", "capsnet", "fc", "conv")
ATTACKS = ("fgsm", "pgd", "uap")
SCALES = ("cpu", "paper")

# Chen et al., table 2: test error (%) mean and sd, and parameter counts, "MNIST / CIFAR10".
# "*" = no reconstruction. Their CIFAR-10 G-CapsNets (2.67M) have no decoder although they sit in
# the rows without "*" (a decoder for 32x32x3 images alone has 3.7M parameters), so on 3-channel
# data the paper's "FC/Conv G-CapsNets" figures are set beside the models without reconstruction.
PAPER_TABLE2: dict[str, dict[str, Any]] = {
    "vanilla CNN": {"mnist": (0.91, 0.09), "cifar": (36.54, 0.78), "params": ("35.4M", "9.6M")},
    "CapsNets**": {"mnist": (1.24, 0.10), "cifar": (40.88, 0.67), "params": ("8.2M", "2.67M")},
    "FC G-CapsNets": {"mnist": (0.67, 0.05), "cifar": (32.70, 0.47), "params": ("8.2M", "2.67M")},
    "FC G-CapsNets*": {"mnist": (0.66, 0.03), "cifar": None, "params": ("6.8M", None)},
    "Conv G-CapsNets": {"mnist": (0.84, 0.09), "cifar": (33.53, 0.52), "params": ("6.9M", "2.67M")},
    "Conv G-CapsNets*": {"mnist": (0.86, 0.1317), "cifar": None, "params": ("5.5M", None)},
    "Multi G-CapsNets": {"mnist": None, "cifar": (34.29, 0.33), "params": (None, "716K")},
}
# Chen et al., table 3: error (%) on 4,000 AC-GAN digits (400 per class) after each epoch.
PAPER_TABLE3: dict[int, dict[str, float]] = {
    1: {"baseline": 19.800, "fc": 23.500, "conv": 19.725},
    2: {"baseline": 5.600, "fc": 3.250, "conv": 4.050},
    3: {"baseline": 0.725, "fc": 0.000, "conv": 0.700},
    4: {"baseline": 0.001, "fc": 0.000, "conv": 0.000},
    5: {"baseline": 0.003, "fc": 0.000, "conv": 0.001},
}
# Chen et al. 4.3: accuracy (%) on the 10,000 MNIST test images after black-box FGSM
# (L-inf <= 8 of 255, crafted on a LeNet substitute). The white-box UAP of supplementary 6.2 is
# a figure only: every network's accuracy "drop[s] sharply after 100 attacking iterations".
PAPER_FGSM_ACCURACY = {"baseline": 11.35, "fc": 8.92, "conv": 11.35}


@dataclass
class Settings:
    data: str
    budget: float                          # training minutes per model and seed
    out: str
    data_dir: str | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: float | None = None            # also stop each classifier after this many epochs
    scale: str = "cpu"
    batch_size: int = 100
    models: tuple[str, ...] = MODEL_NAMES
    gan_family: str = "acgan"
    gan_epochs: int = 5
    gan_minutes: float | None = None       # training minutes per AC-GAN epoch (None = budget)
    per_class: int = 400                   # AC-GAN images per class after each epoch
    attacks: tuple[str, ...] = ATTACKS
    attack_n: int = 1000
    uap_iters: int = 300
    substitute_steps: int = 2000
    extra: tuple[str, ...] = ()            # --set pairs, given to every model whose family has the field
    command: str = ""
    channels: int = field(default=0, compare=False)   # filled in from the data

    def identity(self) -> dict[str, Any]:
        """The settings that decide the results (a folder is only continued with the same ones)."""
        keys = ("data", "budget", "epochs", "scale", "batch_size", "gan_family", "gan_epochs", "gan_minutes",
                "per_class", "attack_n", "uap_iters", "substitute_steps")
        return {k: getattr(self, k) for k in keys} | {
            "seeds": list(self.seeds), "models": list(self.models), "attacks": list(self.attacks),
            "extra": list(self.extra)}

    def model_specs(self) -> list[ModelSpec]:
        """The models to train on this data, in table order."""
        return [m for m in MODELS if m.name in self.models and m.trains_on(self.channels)]
