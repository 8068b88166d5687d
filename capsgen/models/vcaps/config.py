"""Settings of the variational capsule family (Huang et al.); torch-free, so the CLI can read it
without importing torch.

Defaults are sized for a CPU; the presets ``huang-mnist`` and ``huang-celeba`` hold the paper's
networks. Presets are named bundles of ``--set`` values applied before the user's own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from capsgen.errors import ConfigError

MODES = ("auto", "class", "attributes")
NETWORKS = ("auto", "conv", "residual")
MASKS = ("label", "min-kl")           # the same names as capsgen.nn.variational.MASKS
RECONS = ("mse", "bce")
D_NORMS = ("batch", "none")

# §4.2: C5s1-256, C5s2-256, C5s2-256, F320 (10 capsules x 16-D x (mean, log-variance)); F512, F1024, F784.
_HUANG_MNIST = ("model.mode=class", "model.network=conv", "model.caps_dim=16",
                "model.enc_channels=256,256,256", "model.enc_strides=1,2,2", "model.enc_kernel=5",
                "model.dec_hidden=512,1024")
# §4.1: 32-D capsules, the residual networks at the paper's widths, a 3-scale LSGAN discriminator,
# alpha = 0.025 (reconstruction) and beta = 10 (adversarial), batch 64, learning rate 2e-4.
_HUANG_CELEBA = ("model.mode=attributes", "model.network=residual", "model.caps_dim=32",
                 "model.res_base=16", "model.res_max_channels=512", "model.res_group_width=256",
                 "model.alpha=0.025", "model.beta=10", "model.d_scales=3", "model.d_width=64",
                 "model.d_layers=3", "model.lr=2e-4", "train.batch_size=64")


@dataclass
class VCapsConfig:
    """``vcaps``: encoder -> Gaussian capsules -> mask -> decoder (+ optional LSGAN discriminator).

    Loss (eq. 6): L_c (KL margin loss, eq. 3) + alpha * reconstruction + beta * adversarial.
    """

    preset: str = ""                  # the preset these values came from (informational)
    # "class": one capsule per class (needs labels); "attributes": a (absent, present) pair per
    # binary attribute (needs attributes); "auto": attributes when the data has them, else class.
    mode: str = "auto"
    # "conv": §4.2's digit networks; "residual": §4.1's face networks; "auto": conv in class
    # mode, residual in attribute mode.
    network: str = "auto"
    caps_dim: int = 16                # D of every capsule (paper: 16 digits, 32 faces)
    # KL margin loss, eq. 3; the paper gives no values. Measured on mnist-5k (300 steps of batch
    # 64, the CPU-default conv networks, alpha = 1; accuracy of least-KL prediction on 500 test
    # images, one seed): m = 4 -> 95.4 %, m = 16 -> 97.8 %, m = 64 -> 98.0 % with the inactive
    # capsules' KL running off to ~450 nats (~50 at m = 16). Active capsules settled at ~2.7 nats.
    kl_margin: float = 16.0           # m
    kl_lambda: float = 0.5            # lambda, Sabour et al.'s down-weighting of absent entities
    # The decoder's mask while training: "min-kl" (paper §3.2: the capsule of least KL, right or
    # wrong) or "label" (the true class / attributes, as Sabour et al. mask by the label). The
    # same runs measured min-kl 97.8 % / label 98.0 % on mnist-5k and 83.3 % / 83.2 % mean
    # attribute accuracy on shapes-attributes (300 steps): no difference, so the paper's rule is
    # the default. Test-time reconstructions always use min-kl, i.e. the prediction.
    train_mask: str = "min-kl"
    recon: str = "mse"                # mse (eq. 4: 1/2 sum of squares per image) | bce
    # weight of the reconstruction loss. On mnist-5k alpha = 0.1 gave 98.2 % and prior samples
    # that re-encode as their class 85 % of the time (70 % at alpha = 1), but a reconstruction
    # error of 30.6 instead of 18.4 per image: 1 keeps the autoencoder an autoencoder.
    alpha: float = 1.0
    beta: float = 0.0                 # weight of the LSGAN loss (eq. 5); 0 = no discriminator
    # conv networks (§4.2); the paper's widths are 256, 256, 256
    enc_channels: tuple[int, ...] = (64, 64, 64)
    enc_strides: tuple[int, ...] = (1, 2, 2)
    enc_kernel: int = 5
    enc_padding: int = 2              # "same" 5x5: 28 -> 28 -> 14 -> 7 (the paper does not say)
    dec_hidden: tuple[int, ...] = (512, 1024)
    # residual networks (§4.1); the paper's widths are 16, 512, 256
    res_base: int = 16                # channels of the first stage (C5s1-16d), doubled per halving
    res_max_channels: int = 128       # cap on those channels (paper: 512, reached at 4x4 from 256x256)
    res_group_width: int = 32         # channels per attribute before the grouped capsule conv (paper: 256)
    # LSGAN discriminator (used when beta > 0)
    d_scales: int = 1                 # image scales (paper: a multi-scale discriminator; we use 3)
    d_width: int = 32
    d_layers: int = 3
    d_norm: str = "batch"
    # optimisation: Adam for the autoencoder and the discriminator (paper: lr 2e-4)
    lr: float = 2e-4
    lr_d: float | None = None         # discriminator learning rate; None = lr
    beta1: float = 0.5
    beta2: float = 0.999
    # pictures and evaluation
    sample_every: int = 200           # steps between sample / reconstruction grids; 0 = off
    n_fixed: int = 64                 # images in a fixed-noise grid
    fixed_seed: int = 1234
    eval_n: int = 1000                # test images for evaluate()

    PRESETS: ClassVar[dict[str, tuple[str, ...]]] = {
        "huang-mnist": ("model.preset=huang-mnist", *_HUANG_MNIST),
        "huang-celeba": ("model.preset=huang-celeba", *_HUANG_CELEBA),
    }

    def check(self) -> None:
        """ConfigError (one line) for a value no network or loss can use."""
        for name, allowed in (("mode", MODES), ("network", NETWORKS), ("train_mask", MASKS),
                              ("recon", RECONS), ("d_norm", D_NORMS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"model.{name}={getattr(self, name)!r} is not one of: {', '.join(allowed)}")
        for name in ("caps_dim", "enc_kernel", "res_base", "res_max_channels", "res_group_width",
                     "d_scales", "d_width", "d_layers", "n_fixed", "eval_n"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("kl_margin", "lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"model.{name} must be > 0, got {getattr(self, name)}")
        for name in ("kl_lambda", "alpha", "beta", "enc_padding", "sample_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr_d is not None and not self.lr_d > 0:
            raise ConfigError(f"model.lr_d must be > 0 or none, got {self.lr_d}")
        if not self.enc_channels or len(self.enc_channels) != len(self.enc_strides):
            raise ConfigError(f"model.enc_channels {self.enc_channels} and model.enc_strides "
                              f"{self.enc_strides} must be non-empty and of equal length")
        if min(self.enc_channels) < 1 or min(self.enc_strides) < 1 or min(self.dec_hidden, default=1) < 1:
            raise ConfigError("model.enc_channels, model.enc_strides and model.dec_hidden must be positive")

    def resolve(self, has_labels: bool, has_attributes: bool) -> tuple[str, str]:
        """(mode, network) after "auto", or ConfigError if the data lacks what the mode needs."""
        mode = self.mode
        if mode == "auto":
            mode = "attributes" if has_attributes else "class"
        if mode == "class" and not has_labels:
            raise ConfigError("model.mode=class needs class labels, and this dataset has none; "
                              "use model.mode=attributes or a labelled dataset")
        if mode == "attributes" and not has_attributes:
            raise ConfigError("model.mode=attributes needs binary attributes, and this dataset has "
                              "none; use model.mode=class or e.g. --data shapes-attributes")
        network = self.network
        if network == "auto":
            network = "residual" if mode == "attributes" else "conv"
        return mode, network
