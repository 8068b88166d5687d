"""Settings of the AC-GAN family (Odena et al., as Chen et al. (G-CapsNets) specify it); torch-free,
so the CLI can read it without importing torch.

Chen et al. give the shapes (generator 100-D latent -> 3x3x384 -> 7x7x192 -> 14x14x96 -> 28x28x1;
discriminator four conv layers of 32, 64, 128, 256 maps, each followed by leaky ReLU and
dropout) and Radford et al.'s Adam settings (2e-4, beta1 0.5). What they leave open is taken from
the Keras AC-GAN MNIST example, the public implementation with exactly those shapes: 5x5
transposed convolutions, 3x3 discriminator convolutions with strides 2, 1, 2, 1, leaky-ReLU slope
0.2, dropout 0.3, batch 100 (``train.batch_size``, the generic loop's default; the ``chen``
preset sets it explicitly) and a class embedding multiplied into the latent.

Chen et al.'s use: train on MNIST, and after each of epochs 1..5 draw 4,000 digits (400 per class)
on which the classifiers are tested (their table 3).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from capsgen.config import FamilyConfig, opt

CONDITIONINGS = ("embedding", "onehot")


@dataclass
class ACGANConfig(FamilyConfig):
    """``acgan``: class-conditional generator vs a discriminator with source and class heads.

    Losses (see :func:`capsgen.models.acgan.nets.discriminator_loss`): D minimises
    BCE(source) on real and fake + CE(class) on real + ``fake_class_weight`` x CE(class) on fake;
    G minimises the non-saturating BCE(source, real) + CE(class) on its own images.
    """

    preset: str = ""                                  # the preset these values came from (informational)
    latent_dim: int = opt(100, min=1)                 # Chen et al.: a 100-D latent
    # How the class enters G: "embedding" multiplies z elementwise by a learnt per-class vector
    # (the Keras AC-GAN MNIST example); "onehot" appends a one-hot code to z (the conditioning
    # Odena et al. describe). Either way the result goes through one linear layer.
    conditioning: str = opt("embedding", choices=CONDITIONINGS)
    g_channels: tuple[int, ...] = opt((384, 192, 96), min=1)   # maps at H/4-4, H/4, H/2 (28x28: 3, 7, 14)
    d_channels: tuple[int, ...] = opt((32, 64, 128, 256), min=1)
    d_strides: tuple[int, ...] = opt((2, 1, 2, 1), min=1)      # one per d_channels entry (3x3 kernels)
    d_slope: float = opt(0.2, min=0)                  # leaky ReLU negative slope
    d_dropout: float = opt(0.3, min=0, max=0.99)      # after every discriminator conv
    lr: float = opt(2e-4, gt=0)                       # Adam rate of G (and of D unless lr_d)
    lr_d: float | None = opt(None, gt=0)              # discriminator rate; None = lr
    beta1: float = opt(0.5, min=0, max=0.9999)
    beta2: float = opt(0.999, min=0, max=0.9999)
    # Target of "real" in D's source loss: 1 = plain BCE; the Keras example uses 0.95
    # (one-sided label smoothing, Salimans et al.).
    real_target: float = opt(1.0, gt=0, max=1)
    # Weight of D's class loss on generated images: 1 = Odena et al. (L_C over real and fake);
    # the Keras example uses 0 so that D's classifier never learns from G's mistakes.
    fake_class_weight: float = opt(1.0, min=0)
    # Pictures and evaluation (what the Task needs beyond the networks).
    sample_every: int = opt(100, min=0)       # steps between class grids in figures/samples/; 0 = off
    n_fixed: int = opt(10, min=1)             # latents per class row of a class grid (the same in every row)
    fixed_seed: int = opt(1234, min=0)        # seed of the grids' latents and of evaluate()'s fakes
    eval_n: int = opt(1000, min=1)            # test images (and as many fakes) for evaluate()
    explode_limit: float = opt(1e4, min=0)    # stop when a loss exceeds this; 0 = only NaN / inf stop

    PRESETS: ClassVar[dict[str, tuple[str, ...]]] = {
        "chen": ("model.preset=chen", "model.latent_dim=100", "model.conditioning=embedding",
                 "model.g_channels=384,192,96", "model.d_channels=32,64,128,256", "model.d_strides=2,1,2,1",
                 "model.lr=2e-4", "model.lr_d=none", "model.beta1=0.5", "model.beta2=0.999",
                 "train.batch_size=100"),
    }

    def validate(self) -> None:
        if len(self.g_channels) != 3:
            raise ValueError(f"g_channels needs three widths (before the three transposed convolutions, "
                             f"paper 384,192,96), got {self.g_channels}")
        if not self.d_channels or len(self.d_channels) != len(self.d_strides):
            raise ValueError(f"d_channels {self.d_channels} and d_strides {self.d_strides} must be "
                             "non-empty and of equal length")
