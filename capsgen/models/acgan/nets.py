"""AC-GAN networks and losses (Odena et al.; the sizes Chen et al. (G-CapsNets) give).

Conventions as in :mod:`capsgen.models.gan.nets`: latent z [B, latent_dim] (any distribution;
N(0, I) is the house convention, the Keras example draws U(-1, 1)), class labels y [B] int64,
generated images [B, C, H, W] in [-1, 1] (tanh), discriminator input in [-1, 1].

Generator (28x28x1, Chen et al.): condition(z, y) -> linear + ReLU -> 3x3x384
-> 5x5 transposed conv (valid, stride 1) -> 7x7x192 -> 5x5 transposed conv (stride 2) -> 14x14x96
-> 5x5 transposed conv (stride 2) -> 28x28x1 -> tanh; batch norm + ReLU after the two inner ones.
Other sizes with H and W divisible by 4 scale the same plan: the two strided layers double
H/4 to H, the first layer grows a (H/4 - 4)-wide map (at least 1) to H/4, e.g. 32x32x3:
4x4 -> 8x8 -> 16x16 -> 32x32x3; 8x8 digits: 1x1 -> 2x2 -> 4x4 -> 8x8. Other sizes get a ValueError.

Discriminator: 3x3 convs with ``channels`` maps and ``strides`` (paper: 32, 64, 128, 256; strides
2, 1, 2, 1, padding 1), each followed by leaky ReLU (0.2) and dropout (0.3), no batch norm, then
two linear heads on the flattened features: the source logit [B, 1] (real vs generated; "logit"
as in the GAN families) and the class logits [B, K].
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from capsgen.models.acgan.config import CONDITIONINGS, ACGANConfig

KERNEL = 5   # transposed-conv kernel of the generator (Keras AC-GAN MNIST example)


def _first_size(n: int) -> tuple[int, int]:
    """(size of the linear layer's map, kernel of the first transposed conv) for an image side n."""
    if n % 4:
        raise ValueError(f"the AC-GAN generator needs image sides divisible by 4 (28, 32, 8, ...), got {n}")
    quarter = n // 4
    start = max(quarter - (KERNEL - 1), 1)
    return start, quarter - start + 1


class ACGANGenerator(nn.Module):
    """(z [B, latent_dim], y [B]) -> images [B, C, H, W] in [-1, 1]; see the module docstring.

    ``conditioning="embedding"``: the linear layer reads z * E[y] (a learnt [K, latent_dim]
    table, initialised N(0, 1)); ``"onehot"``: it reads [z, onehot(y)] of latent_dim + K numbers.
    """

    def __init__(self, shape: tuple[int, int, int], num_classes: int, latent_dim: int = 100,
                 channels: tuple[int, int, int] = (384, 192, 96), conditioning: str = "embedding"):
        super().__init__()
        C, H, W = shape
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {conditioning!r}; choose one of {', '.join(CONDITIONINGS)}")
        if len(channels) != 3:
            raise ValueError(f"the AC-GAN generator needs three widths, got {channels}")
        (h0, kh), (w0, kw) = _first_size(H), _first_size(W)
        c0, c1, c2 = channels
        self.shape, self.num_classes, self.latent_dim = tuple(shape), num_classes, latent_dim
        self.conditioning = conditioning
        self.embed = nn.Embedding(num_classes, latent_dim) if conditioning == "embedding" else None
        n_in = latent_dim + (num_classes if conditioning == "onehot" else 0)
        pad = (KERNEL - 1) // 2   # with output_padding 1, a stride-2 layer exactly doubles the size
        self.net = nn.Sequential(
            nn.Linear(n_in, c0 * h0 * w0), nn.Unflatten(1, (c0, h0, w0)), nn.ReLU(inplace=True),
            # bias=False: a bias before batch norm is cancelled by its mean
            nn.ConvTranspose2d(c0, c1, (kh, kw), bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c1, c2, KERNEL, 2, pad, output_padding=1, bias=False), nn.BatchNorm2d(c2),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c2, C, KERNEL, 2, pad, output_padding=1), nn.Tanh())

    def condition(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z [B, latent_dim], y [B] -> the linear layer's input [B, latent_dim (+ K)]."""
        if z.shape[1:] != (self.latent_dim,) or y.shape != z.shape[:1]:
            raise ValueError(f"need z [B, {self.latent_dim}] and y [B], got {tuple(z.shape)} and {tuple(y.shape)}")
        if self.embed is not None:
            return z * self.embed(y)
        return torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], dim=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z [B, latent_dim], y [B] int64 -> images [B, C, H, W] in [-1, 1]."""
        return self.net(self.condition(z, y))


class ACGANDiscriminator(nn.Module):
    """images [B, C, H, W] in [-1, 1] -> (source logit [B, 1], class logits [B, K])."""

    kind = "logit"

    def __init__(self, shape: tuple[int, int, int], num_classes: int,
                 channels: tuple[int, ...] = (32, 64, 128, 256), strides: tuple[int, ...] = (2, 1, 2, 1),
                 slope: float = 0.2, dropout: float = 0.3):
        super().__init__()
        C, H, W = shape
        if not channels or len(channels) != len(strides):
            raise ValueError(f"channels {channels} and strides {strides} must be non-empty and of equal length")
        layers: list[nn.Module] = []
        c, h, w = C, H, W
        for width, stride in zip(channels, strides):
            layers += [nn.Conv2d(c, width, 3, stride, 1), nn.LeakyReLU(slope, inplace=True), nn.Dropout(dropout)]
            c, h, w = width, (h - 1) // stride + 1, (w - 1) // stride + 1
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.source = nn.Linear(c * h * w, 1)
        self.classes = nn.Linear(c * h * w, num_classes)
        self.shape, self.num_classes = tuple(shape), num_classes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, C, H, W] -> (source logits [B, 1], class logits [B, K])."""
        f = self.features(x)
        return self.source(f), self.classes(f)


def build_generator(cfg: ACGANConfig, shape: tuple[int, int, int], num_classes: int) -> ACGANGenerator:
    return ACGANGenerator(shape, num_classes, cfg.latent_dim, tuple(cfg.g_channels), cfg.conditioning)


def build_discriminator(cfg: ACGANConfig, shape: tuple[int, int, int], num_classes: int) -> ACGANDiscriminator:
    return ACGANDiscriminator(shape, num_classes, tuple(cfg.d_channels), tuple(cfg.d_strides), cfg.d_slope,
                              cfg.d_dropout)


# ------------------------------------------------------------------------------------ losses
def discriminator_loss(src_real: torch.Tensor, cls_real: torch.Tensor, y_real: torch.Tensor,
                       src_fake: torch.Tensor, cls_fake: torch.Tensor, y_fake: torch.Tensor,
                       real_target: float = 1.0, fake_class_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """The discriminator's AC-GAN loss (Odena et al.: D maximises L_S + L_C, written as a minimum).

    src_* [B, 1] (or [B]) source logits, cls_* [B, K] class logits, y_* [B] classes (y_fake: the
    classes G was asked for). Each term is a batch mean:
        source = BCE(src_real, real_target) + BCE(src_fake, 0)
        class  = CE(cls_real, y_real) + fake_class_weight * CE(cls_fake, y_fake)
        loss   = source + class
    Returns {"loss", "source", "class"}.
    """
    src_real, src_fake = src_real.reshape(-1), src_fake.reshape(-1)
    source = (F.binary_cross_entropy_with_logits(src_real, torch.full_like(src_real, real_target))
              + F.binary_cross_entropy_with_logits(src_fake, torch.zeros_like(src_fake)))
    klass = F.cross_entropy(cls_real, y_real)
    if fake_class_weight:
        klass = klass + fake_class_weight * F.cross_entropy(cls_fake, y_fake)
    return {"loss": source + klass, "source": source, "class": klass}


def generator_loss(src_fake: torch.Tensor, cls_fake: torch.Tensor, y_fake: torch.Tensor) -> dict[str, torch.Tensor]:
    """The generator's AC-GAN loss on its images: BCE(src_fake, 1) + CE(cls_fake, y_fake), batch means.

    Odena et al.'s G maximises L_C − L_S; the source part here is the non-saturating form
    (−log D(G(z)) rather than log(1 − D(G(z)))), Goodfellow et al.'s practical variant that the
    GAN families use too. Returns {"loss", "source", "class"}.
    """
    src_fake = src_fake.reshape(-1)
    source = F.binary_cross_entropy_with_logits(src_fake, torch.ones_like(src_fake))
    klass = F.cross_entropy(cls_fake, y_fake)
    return {"loss": source + klass, "source": source, "class": klass}
