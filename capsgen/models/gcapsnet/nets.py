"""The G-CapsNet networks of Chen et al. and their CNN baseline, as plain ``nn.Module``s.

Every network maps images [B, C, H, W] in [0, 1] to class outputs and has

- ``class_scores(x) -> [B, K]``: capsule lengths in [0, 1) (``score_kind = "length"``, trained with
  the margin loss) or logits (``score_kind = "logit"``, the baseline, cross-entropy);
- ``forward(x)``: the class capsules' poses [B, K, D] (capsule networks) or the logits;
- ``decode(poses, labels) -> [B, C, H, W]`` when ``has_decoder`` (Sabour's masked decoder).

:func:`build_gcapsnet` picks the network from a :class:`GCapsNetConfig`;
:func:`paper_parameter_counts` builds every preset and sets its parameter counts beside the
ones Chen et al. print.

The matched non-capsule twin (``cfg.twin``; :mod:`capsgen.nn.twins`, :mod:`capsgen.nn.twins_conv`)
of each capsule network keeps its convolutions, decoder, margin loss and masking, and replaces
each capsule operation in place, keeping its input and output shapes and widths:

- ``primary``: PrimaryCapsules -> PrimaryFeatures (the same convolution, LeakyReLU instead of the
  squash); in ``multilayer``, whose primary capsules are the last convolution's ReLU output
  squashed, the squash is dropped (a LeakyReLU after a ReLU is the identity);
- ``classes`` (fc, multilayer): TrainableDenseCapsules -> DenseTwin (Linear(I * Din -> K * Dout) +
  LeakyReLU). Trainable routing is linear in the children, so this twin differs from the capsule
  layer only by the squash and the grouping into capsules;
- ``classes`` (conv) and each of ``caps`` (multilayer): TrainableConvCapsules -> ConvTwin, a
  Conv2d over the grid's Cin * Din channels with the capsule layer's kernel and stride, to
  Cout * Dout channels, LeakyReLU;
- ``score``: a class capsule's length -> GroupScore, sigmoid(a_k . v_k + b_k), a score in (0, 1)
  of the class's own vector, so the margin loss and "decode the true / winning class" apply as
  they are.

The caps_relu ReLU before each squash goes with it: the twin's one non-linearity per replaced
layer is LeakyReLU(0.2), as in every twin. Parameter counts (twin vs capsule network): the fc
twins lose the couplings and gain biases, 6,804,554 vs 6,815,744 (-0.16 %, MNIST fc; -0.76 % on
CIFAR-10); a conv twin has p^2 times the transform weights where poses are p-row matrices
(capsgen.nn.twins_conv says why): MNIST conv 6,067,114 vs 5,525,504 (+9.8 %, 2x4 poses), CIFAR-10
conv -0.76 % (1x8 poses); multilayer on CIFAR-10 708,138 vs 760,896 (-6.9 %: its 122K couplings,
most of them per position, are gone, and its 4x2 poses give +69K). ``arch=baseline`` has no
capsule part, so it has no twin.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from capsgen.errors import ConfigError
from capsgen.models.gcapsnet.config import (PAPER_PARAMETER_COUNTS, PAPER_SHAPES, GCapsNetConfig,
                                            preset_config, rounds_to)
from capsgen.nn import PrimaryCapsules, get_squash, margin_loss, safe_norm
from capsgen.nn.trainable_routing import TrainableConvCapsules, TrainableDenseCapsules
from capsgen.nn.twins import DenseTwin, GroupScore, PrimaryFeatures
from capsgen.nn.twins_conv import ConvTwin


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _too_small(arch: str, H: int, W: int, hint: str) -> ConfigError:
    return ConfigError(f"{H}x{W} images are too small for the {arch} G-CapsNet ({hint})")


class _CapsuleNet(nn.Module):
    """Shared parts of the capsule networks: scores, the optional decoder and its masking, and
    the choice between a capsule layer and its twin."""

    score_kind = "length"

    @staticmethod
    def _primary(cfg: GCapsNetConfig) -> nn.Module:
        args = (cfg.conv_channels, cfg.primary_caps, cfg.primary_dim, cfg.primary_kernel, cfg.primary_stride)
        return PrimaryFeatures(*args) if cfg.twin else PrimaryCapsules(*args, squash=cfg.squash)

    def _make_decoder(self, cfg: GCapsNetConfig, shape: tuple[int, int, int], num_classes: int,
                      class_dim: int) -> None:
        """The decoder (with ``reconstruction``) and, in the twin, the class scores."""
        self.shape, self.num_classes = shape, num_classes
        # capsule networks read lengths and have no score module (their state_dicts are unchanged)
        self.score = GroupScore(num_classes, class_dim) if cfg.twin else None
        self.decoder = None
        if cfg.reconstruction:
            layers: list[nn.Module] = []
            width = num_classes * class_dim
            for hidden in cfg.decoder_hidden:
                layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
                width = hidden
            C, H, W = shape
            layers += [nn.Linear(width, C * H * W), nn.Sigmoid()]
            self.decoder = nn.Sequential(*layers)

    @property
    def has_decoder(self) -> bool:
        return self.decoder is not None

    def scores(self, poses: torch.Tensor) -> torch.Tensor:
        """Class poses [B, K, D] -> scores [B, K] in [0, 1): capsule lengths, or the twin's GroupScore."""
        return self.score(poses) if self.score is not None else safe_norm(poses)

    def class_scores(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> class scores [B, K] (capsule lengths; twin: GroupScores)."""
        return self.scores(self(x))

    def decode(self, poses: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Reconstruct images [B, C, H, W] from poses [B, K, D], keeping only class ``labels`` [B]."""
        if self.decoder is None:
            raise ValueError("this network has no decoder (set model.reconstruction=true)")
        keep = F.one_hot(labels.long(), self.num_classes).to(poses.dtype).unsqueeze(-1)
        return self.decoder((poses * keep).flatten(1)).view(-1, *self.shape)


class FCGCapsNet(_CapsuleNet):
    """FC G-CapsNet: Sabour's CapsNet with trainable routing in the class capsule layer.

    conv ``conv_channels`` (``conv_kernel``) + ReLU -> primary capsules ``primary_caps`` x
    ``primary_dim``-D -> K x ``class_dim``-D class capsules, every primary capsule voting for
    every class -> optional decoder.
    """

    def __init__(self, cfg: GCapsNetConfig, shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        C, H, W = shape
        h = _conv_out(_conv_out(H, cfg.conv_kernel), cfg.primary_kernel, cfg.primary_stride)
        w = _conv_out(_conv_out(W, cfg.conv_kernel), cfg.primary_kernel, cfg.primary_stride)
        if h < 1 or w < 1:
            raise _too_small("fc", H, W, f"kernels {cfg.conv_kernel} and {cfg.primary_kernel}")
        self.conv = nn.Conv2d(C, cfg.conv_channels, cfg.conv_kernel)
        self.primary = self._primary(cfg)
        if cfg.twin:
            self.classes: nn.Module = DenseTwin(cfg.primary_caps * h * w, cfg.primary_dim, num_classes,
                                                cfg.class_dim)
        else:
            self.classes = TrainableDenseCapsules(cfg.primary_caps * h * w, cfg.primary_dim, num_classes,
                                                  cfg.class_dim, squash=cfg.squash, init_std=cfg.fc_init_std,
                                                  coupling_init=cfg.coupling_init, relu=cfg.caps_relu)
        self._make_decoder(cfg, shape, num_classes, cfg.class_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> class capsule poses [B, K, class_dim]."""
        return self.classes(self.primary(F.relu(self.conv(x))))


class ConvGCapsNet(_CapsuleNet):
    """Conv G-CapsNet: Sabour's body, then a convolutional capsule layer with trainable routing.

    The class layer's transforms are ``caps_matrix`` x ``caps_matrix`` matrices acting on poses
    of (primary_dim / caps_matrix) x caps_matrix (Chen et al. MNIST: 8-D capsules as 2x4 matrices,
    4x4 transforms; CIFAR-10: 1x8 and 8x8), one per (primary type, kernel offset, class); its
    kernel must cover the primary grid so that each class has one capsule.
    """

    def __init__(self, cfg: GCapsNetConfig, shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        C, H, W = shape
        h = _conv_out(_conv_out(H, cfg.conv_kernel), cfg.primary_kernel, cfg.primary_stride)
        w = _conv_out(_conv_out(W, cfg.conv_kernel), cfg.primary_kernel, cfg.primary_stride)
        if h < 1 or w < 1:
            raise _too_small("conv", H, W, f"kernels {cfg.conv_kernel} and {cfg.primary_kernel}")
        if cfg.caps_kernel not in (0, h) or h != w:
            raise ConfigError(f"the conv G-CapsNet's class capsule kernel must cover the {h}x{w} primary "
                              f"grid (got caps_kernel={cfg.caps_kernel}); set model.caps_kernel=0 "
                              "(the whole grid) on square images")
        rows = cfg.primary_dim // cfg.caps_matrix
        self.class_dim = rows * cfg.caps_matrix
        self.conv = nn.Conv2d(C, cfg.conv_channels, cfg.conv_kernel)
        self.primary = self._primary(cfg)
        if cfg.twin:
            self.classes: nn.Module = ConvTwin(cfg.primary_caps, cfg.primary_dim, num_classes, self.class_dim,
                                               kernel_size=h)
        else:
            self.classes = TrainableConvCapsules(cfg.primary_caps, cfg.primary_dim, num_classes, self.class_dim,
                                                 kernel_size=h, pose_rows=rows, input_size=(h, w),
                                                 squash=cfg.squash, relu=cfg.caps_relu,
                                                 init_std=cfg.conv_init_std, coupling_init=cfg.coupling_init)
        self._make_decoder(cfg, shape, num_classes, self.class_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> class capsule poses [B, K, class_dim] (row-major pose matrices)."""
        grid = self.classes(self.primary.forward_grid(F.relu(self.conv(x))))  # [B, K, 1, 1, D]
        return grid.flatten(1, 3)


class MultiLayerGCapsNet(_CapsuleNet):
    """Multi-layer G-CapsNet (Chen et al., supplementary table 1).

    Convolutions (64 7x7, 128 7x7 stride 2) + ReLU -> the last one's channels grouped into
    capsules (128 = 16 types x 8-D) and squashed -> convolutional capsule layers (8 types, 4x4
    kernel, 1x8 poses with 8x8 transforms; 16 types, 3x3 kernel stride 2, 4x2 poses with 2x2
    transforms), coupling coefficients per output position -> a fully connected capsule layer to
    K x 8-D. Each capsule layer: one pass, ReLU (``caps_relu``), squash. On 32x32 input the grids
    are 26 -> 10 -> 7 -> 3.
    """

    def __init__(self, cfg: GCapsNetConfig, shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        C, H, W = shape
        convs: list[nn.Module] = []
        ch, h, w = C, H, W
        for out, k, s in zip(cfg.ml_conv_channels, cfg.ml_conv_kernels, cfg.ml_conv_strides):
            convs += [nn.Conv2d(ch, out, k, s, bias=cfg.ml_conv_bias), nn.ReLU(inplace=True)]
            ch, h, w = out, _conv_out(h, k, s), _conv_out(w, k, s)
        self.convs = nn.Sequential(*convs)
        self.primary_dim = cfg.ml_primary_dim
        types, dim = ch // cfg.ml_primary_dim, cfg.ml_primary_dim
        layers = []
        for out, k, s, q in zip(cfg.ml_caps_types, cfg.ml_caps_kernels, cfg.ml_caps_strides, cfg.ml_caps_matrices):
            if _conv_out(h, k, s) < 1 or _conv_out(w, k, s) < 1:
                raise _too_small("multilayer", H, W, f"a {h}x{w} capsule grid is smaller than a {k}x{k} kernel")
            per_position = (h, w) if cfg.ml_per_position_coupling else None
            layers.append(ConvTwin(types, dim, out, dim, k, s) if cfg.twin else
                          TrainableConvCapsules(types, dim, out, dim, k, s, pose_rows=dim // q,
                                                input_size=per_position, squash=cfg.squash,
                                                relu=cfg.caps_relu, init_std=cfg.conv_init_std,
                                                coupling_init=cfg.coupling_init))
            types, h, w = out, _conv_out(h, k, s), _conv_out(w, k, s)
        if h < 1 or w < 1:
            raise _too_small("multilayer", H, W, "the convolutions leave no positions")
        self.caps = nn.ModuleList(layers)
        if cfg.twin:
            self.classes: nn.Module = DenseTwin(types * h * w, dim, num_classes, cfg.ml_class_dim)
        else:
            self.classes = TrainableDenseCapsules(types * h * w, dim, num_classes, cfg.ml_class_dim,
                                                  squash=cfg.squash, init_std=cfg.fc_init_std,
                                                  coupling_init=cfg.coupling_init,
                                                  coupling_per_dim=cfg.ml_fc_coupling_per_dim, relu=cfg.caps_relu)
        # the twin's primary "capsules" are the last convolution's ReLU output as it is
        self.squash = None if cfg.twin else get_squash(cfg.squash)
        self._make_decoder(cfg, shape, num_classes, cfg.ml_class_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> class capsule poses [B, K, ml_class_dim]."""
        y = self.convs(x)
        B, ch, h, w = y.shape
        # channel c -> capsule type c // dim, pose entry c % dim (PrimaryCapsules' order)
        g = y.view(B, ch // self.primary_dim, self.primary_dim, h, w).permute(0, 1, 3, 4, 2)
        if self.squash is not None:
            g = self.squash(g)
        for layer in self.caps:
            g = layer(g)
        return self.classes(g.flatten(1, 3))

    def parameter_table(self) -> dict[str, int]:
        """Parameters per row of Chen et al.'s supplementary table 1 (for the two-layer default)."""
        if self.squash is None:
            raise ValueError("the twin has no capsule layers, so no rows of Chen et al.'s table")
        rows: dict[str, int] = {}
        for n, conv in enumerate(m for m in self.convs if isinstance(m, nn.Conv2d)):
            rows[f"Conv#{n + 1}"] = sum(p.numel() for p in conv.parameters())
        for n, layer in enumerate(self.caps):
            rows[f"Conv Caps Trans#{n + 1}"] = layer.weight.numel()
            rows[f"Conv Caps Routing#{n + 1}"] = layer.coupling.numel()
        rows["FC Caps Trans#1"] = self.classes.weight.numel()
        rows["FC Caps Routing#1"] = self.classes.coupling.numel()
        return rows


class CNNBaseline(nn.Module):
    """The CNN baseline: convolutions + ReLU, fully connected layers + ReLU, dropout, K logits.

    MNIST (Sabour et al.'s baseline as Chen et al. give it): conv 256, 256, 128 (5x5, stride 1,
    padded to keep 28x28), fc 328, 192, 10. CIFAR-10: the G-CapsNet's first two layers (conv 64
    9x9, conv 256 9x9 stride 2), fc 512, 10.
    """

    score_kind = "logit"
    has_decoder = False

    def __init__(self, cfg: GCapsNetConfig, shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        C, H, W = shape
        layers: list[nn.Module] = []
        ch, h, w = C, H, W
        for out, k, s, p in zip(cfg.baseline_conv, cfg.baseline_kernels, cfg.baseline_strides,
                                cfg.baseline_padding):
            layers += [nn.Conv2d(ch, out, k, s, p), nn.ReLU(inplace=True)]
            ch, h, w = out, _conv_out(h, k, s, p), _conv_out(w, k, s, p)
            if h < 1 or w < 1:
                raise _too_small("baseline", H, W, "the convolutions leave no positions")
        layers.append(nn.Flatten())
        width = ch * h * w
        for hidden in cfg.baseline_fc:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        layers += [nn.Dropout(cfg.baseline_dropout), nn.Linear(width, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> logits [B, K]."""
        return self.net(x)

    def class_scores(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)


NETWORKS = {"fc": FCGCapsNet, "conv": ConvGCapsNet, "multilayer": MultiLayerGCapsNet, "baseline": CNNBaseline}


def build_gcapsnet(cfg: GCapsNetConfig, shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The network ``cfg.arch`` for images of ``shape`` = (C, H, W) and ``num_classes`` classes."""
    try:
        cfg.validate()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return NETWORKS[cfg.arch](cfg, tuple(shape), num_classes)


def classification_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: GCapsNetConfig):
    """Training loss on images ``x`` [B, C, H, W] and labels ``y`` [B]; returns (loss, parts).

    Capsule networks: margin loss on the capsule lengths (twin: GroupScores) (+ ``recon_weight`` x per-image summed
    squared reconstruction error of the true class's capsule, with a decoder). Baseline:
    cross-entropy on the logits. ``parts["scores"]`` holds the [B, K] class scores.
    """
    if model.score_kind == "logit":
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        return ce, {"cross_entropy": ce, "scores": logits}
    poses = model(x)
    scores = model.scores(poses)
    margin = margin_loss(scores, y, cfg.m_pos, cfg.m_neg, cfg.lam)
    parts = {"margin": margin, "scores": scores}
    loss = margin
    if model.has_decoder:
        sse = (model.decode(poses, y) - x).pow(2).flatten(1).sum(1).mean()
        parts["recon_sse"] = sse
        loss = margin + cfg.recon_weight * sse
    return loss, parts


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class CountRow:
    preset: str
    part: str
    paper: str
    ours: int
    matches: bool             # ours prints as the paper's figure at its precision
    note: str                 # why not, when the paper's figure cannot be met


def paper_parameter_counts(num_classes: int = 10) -> list[CountRow]:
    """Every parameter count Chen et al. print beside the same count of capsgen's network.

    Builds every preset once on the CPU (~2 s for all; the meta device took 5 s on first use).
    """
    rows = []
    built: dict[str, nn.Module] = {}
    for entry in PAPER_PARAMETER_COUNTS:
        if entry.preset not in built:
            built[entry.preset] = build_gcapsnet(preset_config(entry.preset), PAPER_SHAPES[entry.preset],
                                                 num_classes)
        model = built[entry.preset]
        ours = count_parameters(model) if entry.part == "total" else model.parameter_table()[entry.part]
        rows.append(CountRow(entry.preset, entry.part, entry.paper, ours, rounds_to(ours, entry.paper), entry.note))
    return rows


def format_parameter_counts(rows: list[CountRow]) -> str:
    """The rows as an aligned text table."""
    lines = [f"{'preset':<15}{'part':<22}{'paper':>8}{'capsgen':>12}  match"]
    for r in rows:
        lines.append(f"{r.preset:<15}{r.part:<22}{r.paper:>8}{r.ours:>12,}  {'yes' if r.matches else 'no: ' + r.note}")
    return "\n".join(lines)
