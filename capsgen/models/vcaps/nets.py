"""Networks of the variational capsule models (Huang et al.).

Capsule layouts (see :mod:`capsgen.nn.variational`): ``caps = (K,)`` in class mode, ``(A, 2)``
in attribute mode (per attribute: index 0 = absent, 1 = present). Encoders return
``(mu, logvar)``, each ``[B, *caps, D]``; decoders take masked capsules ``[B, *caps, D]`` and
return images ``[B, C, H, W]`` in [0, 1] (sigmoid), the range the data arrives in.

Two families, both from the paper:

- §4.2 (digits): :class:`ConvCapsuleEncoder` C5s1-256, C5s2-256, C5s2-256, F(2 K D) and
  :class:`FCDecoder` F512, F1024, F(C H W). F320 = 2 x 10 x 16 is the *whole* encoder output:
  the first half the means, the second half the log-variances of 10 16-D capsules.
- §4.1 (faces): :class:`ResidualCapsuleEncoder` C5s1-16d, R32d, R64d, R128d, R256d, R512d,
  C1s1-10240, C4s1g40-5120 and :class:`ResidualCapsuleDecoder` F8192, R512u, R256u, R128u,
  R64u, R32u, R16u, R16, c5s1-3; an LSGAN :class:`MultiScaleDiscriminator` beside them.

Our reading of the paper's layer notation (§4.1): ``C5s1-k`` is a 5x5 convolution, stride 1,
k filters, then batch norm and ReLU; ``d`` a 2x2 average pool of stride 2 *after* the layer it
follows; ``u`` a x2 (nearest) upsampling after its block; ``Rk`` two 3x3 Conv-BN-ReLU layers of
k filters added to the input (through a 1x1 convolution when the channel count changes);
``Fk`` a fully-connected layer; ``gk`` splits a convolution into k groups. Layers that produce
the output (the capsule layer, F320, F784, c5s1-3 — lower-case c: no BN/ReLU) are plain.
At 256x256 the encoder halves six times to 4x4 (C5s1-16d and five R..d), C1s1-10240 gives each
of the 40 attributes 256 channels, and the grouped 4x4 convolution (no padding) turns each
attribute's group into 128 = 2 capsules x (mean, log-variance) x 32 numbers at 1x1 — so an
attribute's capsules see only its own group. At other sizes the same pattern halves while the
size stays even and >= 4 (64 -> 4 after four halvings: C5s1-16d, R32d, R64d, R128d), with
channels base * 2^i capped at ``max_channels``; the last convolution spans what is left.
The decoder mirrors the encoder: F(c * s * s) to the encoder's last (c, s, s), one R..u per
halving with halving channels, R(base), then c5s1-C.

The capsule part, and the twin (``twin=True``, ``capsgen train vcaps --twin``): each encoder ends
in an ordinary head (F(2 P D), or the grouped convolution) and a parameter-free
:class:`~capsgen.nn.variational.VariationalCapsules` that reads the head's numbers as P capsules'
(mu, logvar); the decoders read the masked capsules. The twin is a conditional VAE with the same
encoder and decoder: its :class:`~capsgen.nn.twins_vcaps.GaussianLatent` reads the same head as
ONE Gaussian latent of P * D dimensions and adds a class head on the head's input (Linear(F, K)
for the digit encoder; for the face encoder a grouped convolution of the same grouping and
kernel as the capsule head, one logit per group), so the encoder returns (mu, logvar [B, P D],
logits [B, G]); the decoders take [latent, condition] [B, P D + G] (G = K one-hot classes or A
attribute bits) through their first layer unchanged on the latent plus a ``condition`` Linear
(G -> that layer's width, no bias). Why this is the fair counterpart and the least change: the
encoder body and head, the decoder and their shapes are the capsule model's; only the reading
of the head (capsules with a KL each vs one latent), the class read-out (least KL vs a class
head) and how the class reaches the decoder (which capsule is unmasked vs a one-hot input) differ.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from capsgen.nn.twins_vcaps import GaussianLatent, conditioned_first_layer
from capsgen.nn.variational import (VariationalCapsules, capsule_kl, mask_capsules, reparameterize,
                                    training_mask)


def halvings(h: int, w: int, min_size: int = 4) -> int:
    """How many times (h, w) can be halved exactly while staying >= ``min_size`` (28 -> 2, 64 -> 4)."""
    n = 0
    while h % 2 == 0 and w % 2 == 0 and h // 2 >= min_size and w // 2 >= min_size:
        h, w, n = h // 2, w // 2, n + 1
    return n


def _check_caps(caps: Sequence[int], caps_dim: int) -> tuple[int, ...]:
    caps = tuple(int(c) for c in caps)
    if not caps or min(caps) < 1 or caps_dim < 1:
        raise ValueError(f"capsule layout {caps} and dimension {caps_dim} must be positive")
    return caps


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
                 batch_norm: bool = True) -> nn.Sequential:
    """``C{kernel}s{stride}-{cout}``: convolution, batch norm, ReLU (bias only without BN)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, padding, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- §4.2 digits
class ConvCapsuleEncoder(nn.Module):
    """Images [B, C, H, W] -> (mu, logvar), each [B, *caps, D] (paper: C5s1-256, C5s2-256,
    C5s2-256, F320 for 10 16-D capsules).

    ``padding`` 2 keeps 5x5 convolutions "same", so the size halves exactly at each stride 2
    (28 -> 28 -> 14 -> 7, 8 -> 8 -> 4 -> 2); the paper does not say (padding 0 gives
    28 -> 24 -> 10 -> 3 and fails below 13x13). ``twin``: (mu, logvar [B, P D], class logits
    [B, caps[0]]) from the same layers plus a class head Linear(F, caps[0]) (see the module doc).
    """

    def __init__(self, shape: tuple[int, int, int], caps: Sequence[int] = (10,), caps_dim: int = 16,
                 channels: Sequence[int] = (256, 256, 256), kernel: int = 5,
                 strides: Sequence[int] = (1, 2, 2), padding: int = 2, batch_norm: bool = True,
                 twin: bool = False):
        super().__init__()
        self.caps, self.caps_dim = _check_caps(caps, caps_dim), caps_dim
        if len(channels) != len(strides):
            raise ValueError(f"{len(channels)} conv widths but {len(strides)} strides")
        c, h, w = shape
        layers = []
        for width, stride in zip(channels, strides):
            layers.append(conv_bn_relu(c, width, kernel, stride, padding, batch_norm))
            c = width
            h = (h + 2 * padding - kernel) // stride + 1
            w = (w + 2 * padding - kernel) // stride + 1
            if h < 1 or w < 1:
                raise ValueError(f"image {shape} is too small for the encoder's convolutions")
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c * h * w, 2 * math.prod(self.caps) * caps_dim)
        # the head's 2 P D numbers, means first, then log-variances, read as capsules or the twin's latent
        self.posterior = (GaussianLatent(self.caps, caps_dim, nn.Linear(c * h * w, self.caps[0])) if twin
                          else VariationalCapsules(self.caps, caps_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.features(x).flatten(1)
        return self.posterior(self.fc(h), h)


class FCDecoder(nn.Module):
    """Masked capsules [B, *caps, D] -> images [B, C, H, W] in [0, 1] (paper: F512, F1024, F784).

    With ``condition_dim`` G (the twin): inputs [B, P D + G] = [latent, condition], the condition
    entering the first layer through ``condition`` (Linear(G, width), no bias)."""

    def __init__(self, shape: tuple[int, int, int], caps: Sequence[int] = (10,), caps_dim: int = 16,
                 hidden: Sequence[int] = (512, 1024), condition_dim: int = 0):
        super().__init__()
        self.shape = tuple(shape)
        n_in = math.prod(_check_caps(caps, caps_dim)) * caps_dim
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(n_in, width), nn.ReLU(inplace=True)]
            n_in = width
        layers += [nn.Linear(n_in, math.prod(self.shape)), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)
        self.condition = (nn.Linear(condition_dim, self.net[0].out_features, bias=False)
                          if condition_dim else None)

    def forward(self, capsules: torch.Tensor) -> torch.Tensor:
        if self.condition is None:
            return self.net(capsules.flatten(1)).view(capsules.shape[0], *self.shape)
        h = conditioned_first_layer(self.net[0], self.condition, capsules)
        return self.net[1:](h).view(capsules.shape[0], *self.shape)


# ----------------------------------------------------------------------------- §4.1 faces
class ResidualBlock(nn.Module):
    """``Rk``: two 3x3 Conv-BN-ReLU layers of k filters plus the input (1x1 conv if C != k)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(cin, cout, 3, 1, 1), conv_bn_relu(cout, cout, 3, 1, 1))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


def residual_widths(shape: tuple[int, int, int], base: int, max_channels: int) -> tuple[list[int], int]:
    """Channels after each halving of the residual encoder, and the final spatial size.

    256x256, base 16, cap 512 -> ([16, 32, 64, 128, 256, 512], 4); 64x64 -> ([16, 32, 64, 128], 4).
    """
    _, h, w = shape
    if h != w:
        raise ValueError(f"the residual networks need square images, got {h}x{w}")
    n = halvings(h, w)
    if n < 1:
        raise ValueError(f"image size {h} is too small for the residual networks (need an even size >= 8)")
    return [min(base * 2 ** i, max_channels) for i in range(n)], h >> n


class ResidualCapsuleEncoder(nn.Module):
    """Images [B, C, S, S] -> (mu, logvar), each [B, *caps, D] (paper §4.1; see the module doc).

    The capsules come from one grouped convolution with one group per ``caps[0]`` (per
    attribute): each group outputs, in order, (mean, log-variance) x caps[1:] x D numbers.
    ``twin``: (mu, logvar [B, P D], logits [B, caps[0]]), the logits from a second grouped
    convolution of the same groups and kernel with one output per group (see the module doc).
    """

    def __init__(self, shape: tuple[int, int, int], caps: Sequence[int] = (40, 2), caps_dim: int = 32,
                 base: int = 16, max_channels: int = 512, group_width: int = 256, twin: bool = False):
        super().__init__()
        self.caps, self.caps_dim = _check_caps(caps, caps_dim), caps_dim
        widths, final = residual_widths(shape, base, max_channels)
        layers: list[nn.Module] = [conv_bn_relu(shape[0], widths[0], 5, 1, 2), nn.AvgPool2d(2)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [ResidualBlock(cin, cout), nn.AvgPool2d(2)]
        groups = self.caps[0]
        per_group = 2 * math.prod(self.caps[1:]) * caps_dim
        layers += [conv_bn_relu(widths[-1], groups * group_width, 1),
                   nn.Conv2d(groups * group_width, groups * per_group, final, groups=groups)]
        self.net = nn.Sequential(*layers)
        self.posterior = (GaussianLatent(self.caps, caps_dim, nn.Conv2d(groups * group_width, groups, final,
                                                                       groups=groups), grouped=True) if twin
                          else VariationalCapsules(self.caps, caps_dim, grouped=True))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *body, head = self.net     # the same layers as self.net(x), keeping the head's input
        h = x
        for layer in body:
            h = layer(h)
        return self.posterior(head(h), h)


class ResidualCapsuleDecoder(nn.Module):
    """Masked capsules [B, *caps, D] -> images [B, C, S, S] in [0, 1] (paper §4.1, mirrored encoder).

    ``condition_dim``: as for :class:`FCDecoder` (the twin's [latent, condition] inputs)."""

    def __init__(self, shape: tuple[int, int, int], caps: Sequence[int] = (40, 2), caps_dim: int = 32,
                 base: int = 16, max_channels: int = 512, upsample: str = "nearest", condition_dim: int = 0):
        super().__init__()
        widths, final = residual_widths(shape, base, max_channels)
        widths = widths[::-1]
        n_in = math.prod(_check_caps(caps, caps_dim)) * caps_dim
        self.start = (widths[0], final, final)
        # Fk then ReLU, like the hidden F layers of the digit decoder (the paper does not say).
        self.fc = nn.Sequential(nn.Linear(n_in, math.prod(self.start)), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        c = widths[0]
        for width in widths:
            layers += [ResidualBlock(c, width), nn.Upsample(scale_factor=2, mode=upsample)]
            c = width
        layers += [ResidualBlock(c, base), nn.Conv2d(base, shape[0], 5, 1, 2), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)
        self.condition = nn.Linear(condition_dim, self.fc[0].out_features, bias=False) if condition_dim else None

    def forward(self, capsules: torch.Tensor) -> torch.Tensor:
        if self.condition is None:
            h = self.fc(capsules.flatten(1))
        else:
            h = self.fc[1](conditioned_first_layer(self.fc[0], self.condition, capsules))
        return self.net(h.view(capsules.shape[0], *self.start))


# ----------------------------------------------------------------------------- discriminators
def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown discriminator norm {kind!r}; choose batch or none")


class PatchDiscriminator(nn.Module):
    """Images [B, C, H, W] -> LSGAN scores [B, 1, h, w], one per patch (no sigmoid).

    C4s2-width + LeakyReLU(0.2), then up to ``layers - 1`` more C4s2 layers doubling the width
    (norm + LeakyReLU), then a 3x3 convolution to one score map. Only as many stride-2 layers as
    keep the map >= 1x1 are built, so 7x7 (the coarsest scale of a 28x28 image) works.
    """

    def __init__(self, shape: tuple[int, int, int], width: int = 64, layers: int = 3, norm: str = "batch"):
        super().__init__()
        c, h, w = shape
        n = max(1, min(layers, int(math.log2(max(1, min(h, w))))))
        mods: list[nn.Module] = [nn.Conv2d(c, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        ch = width
        for _ in range(n - 1):
            mods += [nn.Conv2d(ch, ch * 2, 4, 2, 1), _norm(norm, ch * 2), nn.LeakyReLU(0.2, inplace=True)]
            ch *= 2
        mods.append(nn.Conv2d(ch, 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultiScaleDiscriminator(nn.Module):
    """``scales`` patch discriminators on the image and its x1/2, x1/4 ... average-pooled copies
    (the multi-scale discriminator of Wang et al.'s pix2pixHD, which the paper cites; its exact
    layers are not given). Returns a list of score maps, finest first; with ``scales = 1`` it is
    the small single discriminator of the digit models. Scores feed
    :func:`capsgen.nn.variational.lsgan_d_loss` / ``lsgan_g_loss``.
    """

    def __init__(self, shape: tuple[int, int, int], scales: int = 3, width: int = 64, layers: int = 3,
                 norm: str = "batch"):
        super().__init__()
        if scales < 1:
            raise ValueError(f"scales must be >= 1, got {scales}")
        c, h, w = shape
        ds = []
        for _ in range(scales):
            ds.append(PatchDiscriminator((c, h, w), width, layers, norm))
            h, w = (h + 1) // 2, (w + 1) // 2   # AvgPool2d(3, 2, 1) output size
        self.discriminators = nn.ModuleList(ds)
        self.down = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, d in enumerate(self.discriminators):
            if i:
                x = self.down(x)
            outs.append(d(x))
        return outs


# ----------------------------------------------------------------------------- the autoencoder
class VariationalCapsuleAutoencoder(nn.Module):
    """Encoder -> capsules -> mask -> decoder, the VCN of Figure 1 (no discriminator).

    ``forward(x, targets, mask, generator)`` returns a dict with mu, logvar [B, *caps, D],
    kl [B, *caps], mask [B, *caps], capsules (masked, reparameterised) [B, *caps, D] and
    recon [B, C, H, W]. ``mask`` is "min-kl" (paper), "label" (needs ``targets``) or, at test
    time, the same "min-kl"; ``sample=False`` decodes the means instead of a draw.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, presence: tuple[int, ...] | None = None):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        # ``presence`` = (*caps, D): a learned vector per capsule, added to it when it is active.
        # A prior draw has mean 0 in whichever capsule is on, so without it the decoder can tell
        # which capsule of a pair the mask chose only from the spread of its input; this makes the
        # choice a mean shift. Drawn from N(0, I), the prior's own scale: Adam moves a parameter
        # by about lr per step, so from zeros at the paper's 2e-4 it was still < 0.05 after the
        # 220 steps of a 6-minute run, too small to show against unit-variance capsules.
        self.presence = nn.Parameter(torch.randn(presence)) if presence else None

    def masked(self, capsules: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The decoder's input: capsules [B, *caps, D] (+ the presence vectors) zeroed where mask
        [B, *caps] is 0."""
        if self.presence is not None:
            capsules = capsules + self.presence.to(capsules.device, capsules.dtype)
        return mask_capsules(capsules, mask)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None, mask: str = "min-kl",
                generator: torch.Generator | None = None, sample: bool = True) -> dict[str, torch.Tensor]:
        if isinstance(self.encoder.posterior, GaussianLatent):
            raise ValueError("forward is the capsule model's pass (Figure 1); a twin is driven by "
                             "capsgen.models.vcaps.codes.TwinCode")
        mu, logvar = self.encoder(x)
        kl = capsule_kl(mu, logvar)
        m = training_mask(kl, targets, mask)
        c = reparameterize(mu, logvar, generator) if sample else mu
        caps = self.masked(c, m)
        return {"mu": mu, "logvar": logvar, "kl": kl, "mask": m, "capsules": caps,
                "recon": self.decoder(caps)}


def capsule_layout(mode: str, num_classes: int | None = None, num_attributes: int | None = None) -> tuple[int, ...]:
    """``(K,)`` for class mode, ``(A, 2)`` for attribute mode."""
    if mode == "class":
        if not num_classes:
            raise ValueError("class mode needs the number of classes")
        return (int(num_classes),)
    if mode == "attributes":
        if not num_attributes:
            raise ValueError("attribute mode needs the number of attributes")
        return (int(num_attributes), 2)
    raise ValueError(f"unknown mode {mode!r}; choose class or attributes")


def build_networks(cfg, shape: tuple[int, int, int], caps: Sequence[int],
                   network: str) -> tuple[VariationalCapsuleAutoencoder, MultiScaleDiscriminator | None]:
    """The autoencoder for ``network`` ("conv" or "residual", resolved by ``VCapsConfig.resolve``)
    and, when ``cfg.beta > 0``, the LSGAN discriminator (else None). ``cfg`` is a VCapsConfig;
    ``cfg.twin`` builds the conditional-VAE twin (module doc), which has no presence vectors."""
    D, twin = cfg.caps_dim, cfg.twin
    condition = caps[0] if twin else 0
    if network == "conv":
        enc = ConvCapsuleEncoder(shape, caps, D, cfg.enc_channels, cfg.enc_kernel, cfg.enc_strides,
                                 cfg.enc_padding, twin=twin)
        dec = FCDecoder(shape, caps, D, cfg.dec_hidden, condition_dim=condition)
    elif network == "residual":
        enc = ResidualCapsuleEncoder(shape, caps, D, cfg.res_base, cfg.res_max_channels, cfg.res_group_width,
                                     twin=twin)
        dec = ResidualCapsuleDecoder(shape, caps, D, cfg.res_base, cfg.res_max_channels, condition_dim=condition)
    else:
        raise ValueError(f"unknown network {network!r}; choose conv or residual")
    disc = (MultiScaleDiscriminator(shape, cfg.d_scales, cfg.d_width, cfg.d_layers, cfg.d_norm)
            if cfg.beta > 0 else None)
    presence = (*caps, D) if cfg.presence_vectors and not twin else None
    return VariationalCapsuleAutoencoder(enc, dec, presence), disc
