"""Generators and discriminators of the GAN families (DCGAN and CapsuleGAN).

Conventions shared by every network here:

- latent noise ``z`` is [B, latent_dim], drawn from N(0, I);
- generators output images [B, C, H, W] in [-1, 1] (tanh), the GAN convention; the task maps
  data from [0, 1] to [-1, 1] before the discriminator sees it and back for pictures;
- discriminators take images [B, C, H, W] in [-1, 1] and return a tensor [B, K] together with a
  class attribute ``kind`` saying what it holds:
    * ``"logit"`` (K = 1): an unbounded score, D(x) = sigmoid(logit);
    * ``"length"`` (K = 1 or 2): capsule lengths in [0, 1). With one capsule its length is
      P(real) (Jaiswal et al.); with two capsules (real, fake) see :mod:`gan_losses` for how
      they give P(real).

Spatial sizes: DCGAN-style networks double (or halve) the image size by factors of two from a
base size of at least 4, e.g. 7 -> 14 -> 28, 4 -> 8 -> 16 -> 32 (-> 64), 4 -> 8 for 8x8 digits.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from capsgen.nn import PrimaryCapsules, dense_capsules, safe_norm
from capsgen.nn.twins import DenseTwin, GroupScore, PrimaryFeatures


def halvings(h: int, w: int, min_size: int = 4) -> int:
    """How many times (h, w) can be halved exactly while staying >= ``min_size`` (28 -> 2, 32 -> 3)."""
    n = 0
    while h % 2 == 0 and w % 2 == 0 and h // 2 >= min_size and w // 2 >= min_size:
        h, w, n = h // 2, w // 2, n + 1
    return n


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose batch or none")


def _activation(kind: str, channels: int) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "prelu":
        return nn.PReLU(channels)     # one learnt slope per channel
    if kind == "leaky":
        return nn.LeakyReLU(0.2, inplace=True)
    raise ValueError(f"unknown activation {kind!r}; choose relu, prelu or leaky")


def spectral_normed(module: nn.Module) -> nn.Module:
    """``module`` with spectral normalisation (Miyato et al. 2018) on every Conv2d and Linear.

    Each weight is divided by an estimate of its largest singular value, refreshed by one power
    iteration per training-mode forward (u, v are buffers, so they are checkpointed and a resumed
    run continues them). Other parameters (capsule transforms, PReLU slopes, batch norm) are left
    as they are. Returns ``module`` itself, changed in place.
    """
    from torch.nn.utils.parametrizations import spectral_norm

    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            spectral_norm(m)
    return module


def minibatch_spread(y: torch.Tensor, group: int) -> torch.Tensor:
    """[B, C, H, W] -> [B]: Karras et al. 2018's "minibatch standard deviation" statistic.

    The batch is split into groups of ``group`` images (sample b goes to group b % (B / group):
    strided groups, as theirs); each group's number is the standard deviation of every feature
    over the group, averaged over features and positions, and every image of the group gets it.
    A discriminator that sees only single images cannot tell one mode repeated from varied
    samples; with this number it can. A batch that ``group`` does not divide is one group; a
    batch of one gets ~0.
    """
    B, C, H, W = y.shape
    g = min(group, B)
    if B % g:
        g = B
    groups = y.reshape(g, B // g, C, H, W)
    # (x - mean)^2 averaged by hand: torch.var over this outer dimension took 16 ms for a
    # [64, 64, 10, 10] batch on one CPU thread here, these elementwise ops well under 1 ms.
    spread = (groups - groups.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()      # [B/g, C, H, W]
    return spread.mean(dim=(1, 2, 3)).repeat(g)                                        # [B]: b -> b % (B/g)


# --------------------------------------------------------------------------------- generators
class DCGANGenerator(nn.Module):
    """Radford et al.'s generator: z [B, latent_dim] -> images [B, C, H, W] in [-1, 1].

    Linear projection to [width * 2^(n-1), H / 2^n, W / 2^n], then n transposed convolutions
    (4x4, stride 2) that halve the channels and double the size, batch norm + ReLU between,
    tanh at the end. With width 64: 28x28 is 7x7x128 -> 14x14x64 -> 28x28xC; 64x64 is
    4x4x512 -> 8x8x256 -> 16x16x128 -> 32x32x64 -> 64x64x3.
    """

    def __init__(self, shape: tuple[int, int, int], latent_dim: int = 100, width: int = 64,
                 norm: str = "batch"):
        super().__init__()
        C, H, W = shape
        n = halvings(H, W)
        h0, w0 = H >> n, W >> n
        ch = width * 2 ** max(n - 1, 0)
        bias = norm == "none"  # a bias before batch norm is cancelled by its mean
        layers: list[nn.Module] = [nn.Linear(latent_dim, ch * h0 * w0, bias=bias),
                                   nn.Unflatten(1, (ch, h0, w0)), _norm2d(norm, ch), nn.ReLU(inplace=True)]
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=bias), _norm2d(norm, ch // 2),
                       nn.ReLU(inplace=True)]
            ch //= 2
        last = nn.ConvTranspose2d(ch, C, 4, 2, 1) if n >= 1 else nn.Conv2d(ch, C, 3, 1, 1)
        layers += [last, nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.latent_dim, self.shape = latent_dim, shape

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """[B, latent_dim] -> [B, C, H, W] in [-1, 1]."""
        return self.net(z)


class KarmakarGenerator(nn.Module):
    """The generator of Karmakar (Karmakar): five 3x3 conv layers, LeakyReLU, no batch norm.

    z [B, latent_dim] -> Linear -> [channels[0], H / 2^n, W / 2^n] -> conv 3x3 layers with
    ``channels`` outputs (paper: 128, 64, 32, 3) and a last one with C outputs (paper: 1),
    LeakyReLU(0.2) after each but the last, tanh at the end -> images [B, C, H, W] in [-1, 1].
    The paper does not say how 100 numbers become 28x28; here a linear layer projects to 7x7 and
    the first n conv layers are preceded by a nearest-neighbour x2 upsampling (n = 2 for 28x28).
    """

    def __init__(self, shape: tuple[int, int, int], latent_dim: int = 100,
                 channels: tuple[int, ...] = (128, 64, 32, 3), slope: float = 0.2):
        super().__init__()
        C, H, W = shape
        n = halvings(H, W)
        widths = (*channels, C)
        if n > len(widths):
            raise ValueError(f"{H}x{W} needs {n} upsamplings but the generator has only "
                             f"{len(widths)} conv layers")
        h0, w0 = H >> n, W >> n
        layers: list[nn.Module] = [nn.Linear(latent_dim, channels[0] * h0 * w0),
                                   nn.Unflatten(1, (channels[0], h0, w0)), nn.LeakyReLU(slope, inplace=True)]
        cin = channels[0]
        for k, cout in enumerate(widths):
            if k < n:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            layers.append(nn.Conv2d(cin, cout, 3, 1, 1))
            layers.append(nn.LeakyReLU(slope, inplace=True) if k < len(widths) - 1 else nn.Tanh())
            cin = cout
        self.net = nn.Sequential(*layers)
        self.latent_dim, self.shape = latent_dim, shape

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """[B, latent_dim] -> [B, C, H, W] in [-1, 1]."""
        return self.net(z)


# ----------------------------------------------------------------------------- discriminators
def dcgan_trunk(shape: tuple[int, int, int], width: int = 64, norm: str = "batch",
                extra_layers: int = 0) -> tuple[nn.Sequential, int, tuple[int, int]]:
    """The convolutional body of Radford et al.'s discriminator, without its last layer.

    images [B, C, H, W] -> features [B, ch, H / 2^n, W / 2^n]: n strided 4x4 convolutions
    (stride 2) doubling the channels from ``width``, LeakyReLU(0.2), batch norm on all but the
    first; then ``extra_layers`` 3x3 stride-1 layers. Returns (module, ch, (h, w)).
    """
    C, H, W = shape
    n = halvings(H, W)
    layers: list[nn.Module] = []
    ch = width
    if n >= 1:
        layers += [nn.Conv2d(C, ch, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
    else:
        layers += [nn.Conv2d(C, ch, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True)]
    bias = norm == "none"
    for _ in range(n - 1):
        layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=bias), _norm2d(norm, ch * 2),
                   nn.LeakyReLU(0.2, inplace=True)]
        ch *= 2
    for _ in range(extra_layers):
        layers += [nn.Conv2d(ch, ch, 3, 1, 1, bias=bias), _norm2d(norm, ch), nn.LeakyReLU(0.2, inplace=True)]
    return nn.Sequential(*layers), ch, (H >> n, W >> n)


class DCGANDiscriminator(nn.Module):
    """Convolutional discriminator: images [B, C, H, W] in [-1, 1] -> logits [B, 1].

    :func:`dcgan_trunk` (``extra_layers`` 3x3 layers build the 5-conv-layer discriminator of
    Karmakar for 28x28: 2 strided + 2 extra + 1), then a last convolution over the whole
    remaining map gives one logit.
    """

    kind = "logit"

    def __init__(self, shape: tuple[int, int, int], width: int = 64, norm: str = "batch",
                 extra_layers: int = 0):
        super().__init__()
        trunk, ch, (h, w) = dcgan_trunk(shape, width, norm, extra_layers)
        self.net = nn.Sequential(*trunk, nn.Conv2d(ch, 1, (h, w)), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> logits [B, 1]."""
        return self.net(x)


def capsule_head(head: str, out_caps: int, out_dim: int, dense: int) -> nn.Module | None:
    """Karmakar's dense head on [B, out_caps, out_dim] capsules (-> a logit [B, 1]), or None for
    Jaiswal et al.'s length head (the capsule lengths are the output)."""
    if head == "length":
        return None
    if head != "dense":
        raise ValueError(f"unknown capsule head {head!r}; choose dense or length")
    return nn.Sequential(nn.Flatten(), nn.Linear(out_caps * out_dim, dense), nn.LeakyReLU(0.2, inplace=True),
                         nn.Linear(dense, 1))


class _RoutedCapsuleOutput(nn.Module):
    """What both capsule discriminators share around their primary capsules: the optional
    minibatch spread added to the primary capsules' pre-activations, ``num_primary`` capsules
    routed to ``out_caps`` capsules (``self.caps``), then the dense or length head.

    ``twin=True`` builds the matched non-capsule twin (:mod:`capsgen.nn.twins`): ``primary``
    becomes the same convolution with LeakyReLU instead of the squash, ``caps`` one dense layer of
    the same width (I * Din -> J * Dout, LeakyReLU), and a length head reads each of the J groups
    with a learnt sigmoid score instead of its length. Everything else (body, minibatch spread,
    dense head) is built by the same lines. ``TWIN_PARTS`` names the modules that differ.
    """

    TWIN_PARTS = ("primary", "caps", "score")

    num_primary: int
    minibatch_std: int
    spread_weight: nn.Parameter | None

    def _minibatch_spread(self, minibatch_std: int, primary_channels: int) -> None:
        """``minibatch_std`` > 0: one learnt weight per primary-capsule channel, starting at 0 (so the
        discriminator starts as without it); 0: no parameter, the state dict is as before."""
        self.minibatch_std = minibatch_std
        self.spread_weight = nn.Parameter(torch.zeros(primary_channels)) if minibatch_std else None

    def _spread_shift(self, y: torch.Tensor) -> torch.Tensor | None:
        """features [B, C, H, W] under the primary capsules -> their shift [B, caps * dim], or None."""
        if self.spread_weight is None:
            return None
        return minibatch_spread(y, self.minibatch_std)[:, None] * self.spread_weight

    def _primary(self, twin: bool, in_channels: int, primary_caps: int, primary_dim: int, kernel: int,
                 stride: int, padding: int, squash: str) -> nn.Module:
        if twin:
            return PrimaryFeatures(in_channels, primary_caps, primary_dim, kernel, stride, padding)
        return PrimaryCapsules(in_channels, primary_caps, primary_dim, kernel, stride, padding, squash=squash)

    def _routed_capsules(self, routing: str, primary_dim: int, out_caps: int, out_dim: int,
                         routing_iterations: int, grad_through_routing: bool, squash: str,
                         init_std: float, head: str, dense: int, twin: bool = False) -> None:
        self.twin = twin
        if twin:
            self.caps: nn.Module = DenseTwin(self.num_primary, primary_dim, out_caps, out_dim)
        else:
            # One parent: c == 1 after any number of iterations, so one iteration is the same answer.
            iters = 1 if out_caps == 1 else routing_iterations
            self.caps = dense_capsules(routing, self.num_primary, primary_dim, out_caps, out_dim,
                                       routing_iterations=iters, grad_through_iterations=grad_through_routing,
                                       squash=squash, init_std=init_std)
        self.head = capsule_head(head, out_caps, out_dim, dense)
        self.score = GroupScore(out_caps, out_dim) if twin and self.head is None else None

    def capsules(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> output capsules [B, out_caps, out_dim]; each discriminator builds its own."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> logits [B, 1] (dense head) or capsule lengths [B, out_caps]."""
        v = self.capsules(x)
        if self.head is not None:
            return self.head(v)
        return self.score(v) if self.score is not None else safe_norm(v)


class CapsuleDiscriminator(_RoutedCapsuleOutput):
    """CapsNet discriminator: images [B, C, H, W] in [-1, 1] -> [B, 1] logits or [B, K] lengths.

    conv (``conv_channels``, ``conv_kernel``, ``conv_stride``) + activation -> primary capsules
    (``primary_caps`` types x ``primary_dim``-D, ``primary_kernel``, ``primary_stride``)
    -> ``out_caps`` capsules of ``out_dim`` dimensions by dynamic routing, then

    - ``head="dense"`` (Karmakar): flatten [B, out_caps * out_dim] -> dense
      ``dense`` + LeakyReLU -> dense 1 = logit (the paper's sigmoid lives in the loss, for
      numerical stability). Paper size: conv 256 9x9 + PReLU, primary 32 x 8-D 7x7 stride 2
      (a 7x7 grid on 28x28 input), 10 x 16-D capsules, dense 64.
    - ``head="length"`` (Jaiswal et al. 2018): the output is the capsule lengths
      [B, out_caps]. With out_caps = 1 the length is P(real). Routing to a single parent is a
      no-op: the softmax over one parent makes every coupling coefficient 1, so the output is
      the squashed plain sum of the votes whatever the number of iterations (the layer then
      runs one iteration, which gives identical numbers). out_caps = 2 (real, fake) makes the
      routing meaningful; capsule 0 is "real", capsule 1 "fake".

    ``init_std`` of the capsule transforms is Sabour's 0.01: output capsules then start short
    (the squash is quadratic near 0), so the discriminator starts slowly; raise it to start faster.

    ``conv_stride`` 2 (not in either paper) halves the first conv's output map on each side, so
    the primary-capsule conv, most of the discriminator's cost, sees a quarter of the positions.

    ``minibatch_std`` > 0 (not in either paper) gives the primary capsules :func:`minibatch_spread`
    of the first conv's output over groups of that many images, so they can see how varied the
    batch is. Karras et al. append it as one constant channel; into a convolution without padding
    that is exactly the statistic times a learnt number per output channel (the channel's kernel
    sum), which is what is added here. The appended channel itself (65 input channels) made the
    primary-capsule convolution, and so a whole CapsuleGAN iteration, 3x slower here
    (benchmarks/gan_step.py: 97 -> 300 ms). The bias does not, but the spread and its backward
    still cost: a capsule-D forward + backward of 64 images took 16.6 instead of 10.6 ms on one
    thread here, and the Fashion-MNIST ablation's steps went from 70 to 87-104 ms. It starts
    at 0, so the discriminator starts as without it.

    ``routing="trainable"`` replaces routing by agreement with Chen et al.'s (G-CapsNets)
    trainable routing: learnt couplings c_ij, one pass, no iterations (``routing_iterations`` and
    ``grad_through_routing`` then do not apply). The squash stays ``squash`` (Sabour's), so only
    the routing differs. Couplings start at 1/out_caps, dynamic routing's first iteration: with
    one capsule (caps1) each c_i1 starts at 1 and, unlike dynamic routing's, is then learnt.
    """

    def __init__(self, shape: tuple[int, int, int], conv_channels: int = 256, conv_kernel: int = 9,
                 activation: str = "prelu", primary_caps: int = 32, primary_dim: int = 8,
                 primary_kernel: int = 9, primary_stride: int = 2, out_caps: int = 10,
                 out_dim: int = 16, routing_iterations: int = 3, head: str = "dense",
                 dense: int = 64, grad_through_routing: bool = True, squash: str = "sabour",
                 init_std: float = 0.01, conv_stride: int = 1, routing: str = "dynamic",
                 minibatch_std: int = 0, twin: bool = False):
        super().__init__()
        C, H, W = shape
        if head not in ("dense", "length"):
            raise ValueError(f"unknown capsule head {head!r}; choose dense or length")
        ch, cw = (H - conv_kernel) // conv_stride + 1, (W - conv_kernel) // conv_stride + 1
        if min(ch, cw) < primary_kernel or min(H, W) < conv_kernel:
            stride = f" stride {conv_stride}" if conv_stride != 1 else ""
            raise ValueError(f"input {H}x{W} is too small for kernels {conv_kernel} and {primary_kernel}"
                             f"{stride} (lower d_conv_kernel / d_primary_kernel)")
        h = (ch - primary_kernel) // primary_stride + 1
        w = (cw - primary_kernel) // primary_stride + 1
        self.kind = "logit" if head == "dense" else "length"
        self.conv = nn.Conv2d(C, conv_channels, conv_kernel, conv_stride)
        self.act = _activation(activation, conv_channels)
        self.primary = self._primary(twin, conv_channels, primary_caps, primary_dim, primary_kernel,
                                     primary_stride, 0, squash)
        self.num_primary = primary_caps * h * w
        self._minibatch_spread(minibatch_std, primary_caps * primary_dim)
        self._routed_capsules(routing, primary_dim, out_caps, out_dim, routing_iterations, grad_through_routing,
                              squash, init_std, head, dense, twin)

    def capsules(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> output capsules [B, out_caps, out_dim]."""
        y = self.act(self.conv(x))
        return self.caps(self.primary(y, self._spread_shift(y)))



class TrunkCapsuleDiscriminator(_RoutedCapsuleOutput):
    """DCGAN's convolutional body, then capsules: images [B, C, H, W] -> [B, 1] logits or lengths.

    :func:`dcgan_trunk` (strided 4x4 convs, LeakyReLU, batch norm; 28x28 -> [2w, 7, 7]) ->
    primary capsules on that map (``primary_caps`` types x ``primary_dim``-D, ``primary_kernel``
    with same-size padding, ``primary_stride``) -> ``out_caps`` capsules of ``out_dim`` by
    dynamic (or trainable) routing -> the dense head (a logit) or the length head.

    Not in either CapsuleGAN paper; capsgen's answer to their discriminator's cost and mode
    dropping. The papers' capsule D is one wide 9x9 convolution at full resolution plus a 9x9
    primary-capsule convolution: ~4x a DCGAN iteration (benchmarks/gan_step.py), and every
    variant of it measured on Fashion-MNIST dropped modes (recall <= 0.04 against DCGAN's 0.25,
    RESULTS.md). Here the features the capsules are built from come from the same cheap strided
    body as DCGAN's discriminator, and the capsule layers replace only its last convolution.

    ``minibatch_std`` > 0 adds :func:`minibatch_spread` of the trunk's output, times a learnt
    weight per channel, to the primary capsules' pre-activations, as in
    :class:`CapsuleDiscriminator` (exactly Karras et al.'s appended channel for 1x1 primary
    kernels; with wider kernels the zero padding makes the border positions differ). Until
    2026-12-07 this discriminator ignored the setting, so the "minibatch std" rows of the
    trunk-caps ablation before then are trunk-hinge without it (RESULTS.md, round 8).
    """

    def __init__(self, shape: tuple[int, int, int], width: int = 32, norm: str = "batch",
                 extra_layers: int = 0, primary_caps: int = 8, primary_dim: int = 8,
                 primary_kernel: int = 3, primary_stride: int = 1, out_caps: int = 10,
                 out_dim: int = 16, routing_iterations: int = 3, head: str = "dense",
                 dense: int = 64, grad_through_routing: bool = True, squash: str = "sabour",
                 init_std: float = 0.01, routing: str = "dynamic", minibatch_std: int = 0,
                 twin: bool = False):
        super().__init__()
        if head not in ("dense", "length"):
            raise ValueError(f"unknown capsule head {head!r}; choose dense or length")
        self.kind = "logit" if head == "dense" else "length"
        self.trunk, ch, (h, w) = dcgan_trunk(shape, width, norm, extra_layers)
        pad = primary_kernel // 2
        # same-size padding: a grid of ceil(h / stride) x ceil(w / stride), never empty
        gh, gw = (h + 2 * pad - primary_kernel) // primary_stride + 1, (w + 2 * pad - primary_kernel) // primary_stride + 1
        self.primary = self._primary(twin, ch, primary_caps, primary_dim, primary_kernel, primary_stride, pad,
                                     squash)
        self.num_primary = primary_caps * gh * gw
        self._minibatch_spread(minibatch_std, primary_caps * primary_dim)
        self._routed_capsules(routing, primary_dim, out_caps, out_dim, routing_iterations, grad_through_routing,
                              squash, init_std, head, dense, twin)

    def capsules(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> output capsules [B, out_caps, out_dim]."""
        y = self.trunk(x)
        return self.caps(self.primary(y, self._spread_shift(y)))

