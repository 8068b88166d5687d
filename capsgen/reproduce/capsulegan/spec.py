"""What ``capsgen reproduce capsulegan`` compares, its settings, and the papers' own numbers.

Kept apart from the stages (run.py) and the report (report.py) so both can import it.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    label: str
    cpu: tuple[str, ...]        # --set pairs at --scale cpu
    preset: str                 # --preset at --scale paper
    paper_extra: tuple[str, ...] = ()


MODELS = (
    ModelSpec("dcgan", "dcgan", "convolutional GAN (DCGAN discriminator, BCE)", (), "jaiswal"),
    ModelSpec("capsulegan-bce", "capsulegan", "CapsuleGAN, BCE (Karmakar's dense discriminator head)",
              ("model.discriminator=caps-dense", "model.objective=bce"), "jaiswal",
              ("model.discriminator=caps-dense", "model.objective=bce")),
    ModelSpec("capsulegan-margin", "capsulegan", "CapsuleGAN, margin loss (Jaiswal et al. 2018, one capsule)",
              ("model.discriminator=caps1", "model.objective=margin"), "jaiswal"),
)
BATTLES = (("capsulegan-margin", "dcgan"), ("capsulegan-bce", "dcgan"))
SCALES = ("cpu", "paper")

# The papers' own numbers (Jaiswal et al. 2018, section 5.3 and tables 1-2; MNIST and CIFAR-10).
PAPER_GAM = {"MNIST": {"r_samples": 0.79, "r_test": 1.0, "verdict": "CapsuleGAN wins"},
             "CIFAR-10": {"r_samples": 1.0, "r_test": 0.72, "verdict": "tie"}}
PAPER_SEMISUP = {
    "MNIST": {"convolutional GAN": {100: 0.2900, 1000: 0.1539, 10000: 0.0702},
              "CapsuleGAN": {100: 0.2724, 1000: 0.1142, 10000: 0.0531}},
    "CIFAR-10": {"convolutional GAN": {100: 0.8305, 1000: 0.7587, 10000: 0.7209},
                 "CapsuleGAN": {100: 0.7983, 1000: 0.7496, 10000: 0.7102}},
}


@dataclass
class Settings:
    data: str
    budget: float                  # training minutes per model
    out: str
    data_dir: str | None = None
    scale: str = "cpu"
    batch_size: int = 64
    seed: int = 0
    n_metrics: int = 10_000        # samples per model for FID & co.
    n_battle: int = 1000
    tol: float = 0.05
    labelled: tuple[int, ...] = (100, 1000, 10000)
    generated: int = 50_000
    semisup_test_n: int | None = None
    extra: tuple[str, ...] = ()    # --set pairs applied to every model after its own
    command: str = ""

    def identity(self) -> dict[str, Any]:
        """The settings that decide the results (a folder is only continued with the same ones)."""
        return {k: getattr(self, k) for k in ("data", "budget", "scale", "batch_size", "seed", "n_metrics",
                                             "n_battle", "tol", "generated", "semisup_test_n")} | {
            "labelled": list(self.labelled), "extra": list(self.extra)}


def train_command(spec: ModelSpec, s: Settings, folder: Path) -> str:
    """The ``capsgen train`` command line equivalent to how the reproduction trains ``spec``."""
    args = ["train", spec.family, "--data", s.data, "--minutes", f"{s.budget:g}", "--batch-size",
            str(s.batch_size), "--seed", str(s.seed), "--out", str(folder / "runs" / spec.name)]
    if s.data_dir:
        args += ["--data-dir", s.data_dir]
    if s.scale == "paper":
        args += ["--preset", spec.preset]
        pairs = list(spec.paper_extra) + list(s.extra)
    else:
        pairs = list(spec.cpu) + list(s.extra)
    for pair in pairs:
        args += ["--set", pair]
    return "capsgen " + " ".join(shlex.quote(a) for a in args)


