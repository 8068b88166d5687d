"""CapsNet settings (Sabour et al. 2017 defaults)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from capsgen.config import FamilyConfig, opt


@dataclass
class CapsNetConfig(FamilyConfig):
    conv_channels: int = opt(256, min=1)
    conv_kernel: int = opt(9, min=1)
    primary_capsules: int = opt(32, min=1)
    primary_dim: int = opt(8, min=1)
    primary_kernel: int = opt(9, min=1)
    primary_stride: int = opt(2, min=1)
    class_dim: int = opt(16, min=1)
    routing_iterations: int = opt(3, min=1)
    grad_through_routing: bool = True
    squash: str = opt("sabour", choices=("sabour", "exp"))
    decoder_hidden: tuple[int, ...] = opt((512, 1024), min=1)
    recon_weight: float = opt(0.0005, min=0)
    m_pos: float = opt(0.9, min=0, max=1)
    m_neg: float = opt(0.1, min=0, max=1)
    lam: float = opt(0.5, min=0)
    shift_pixels: int = opt(2, min=0)
    lr: float = opt(1e-3, gt=0)
    lr_decay: float = opt(1.0, gt=0, max=1)   # multiply the learning rate by this every epoch,
    lr_decay_steps: int | None = opt(None, min=1)   # or, when set, continuously every this many steps

    # The twin (capsgen.models.capsnet.nets says why it is the fair counterpart); it has no squash
    # and no routing, so the fields that only those read conflict with --twin.
    TWIN: ClassVar[str] = ("the primary capsules become the same convolution with LeakyReLU instead of the squash, "
                           "the routed class capsules one dense layer of the same width (1152 x 8 -> K x 16 on "
                           "28x28, LeakyReLU), a class's capsule length a sigmoid score of its 16-D vector; conv, "
                           "margin loss, masking, decoder, shifts, batch and rates unchanged")
    CAPSULE_FIELDS: ClassVar[tuple[str, ...]] = ("routing_iterations", "grad_through_routing", "squash")

    # ``sabour``: the schedule of Sabour et al.'s own code (github.com/Sarasra/models,
    # research/capsules: experiment.py default_hparams learning_rate=0.001, decay_rate=0.96,
    # decay_steps=2000, training batches of 128; models/model.py feeds them to
    # tf.train.exponential_decay without staircase, i.e. lr = 1e-3 x 0.96^(step / 2000), under Adam).
    # Their floor of 1e-6 binds only after 338,000 steps and is left out. The defaults above
    # (constant 1e-3, batch 100) stay as they were, so earlier runs reproduce.
    PRESETS = {"sabour": ("model.lr=1e-3", "model.lr_decay=0.96", "model.lr_decay_steps=2000",
                          "train.batch_size=128")}

    def ineffective(self) -> dict[str, str]:
        if self.lr_decay == 1.0:
            return {"model.lr_decay_steps": "model.lr_decay is 1 (no decay); set it below 1, e.g. 0.96"}
        return {}
