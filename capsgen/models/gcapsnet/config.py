"""Settings of the G-CapsNet classifiers (Chen et al., Generalized CapsNets) and their paper
presets; torch-free, so the command line can list them without importing torch.

Networks (``arch``), each with trainable routing in every capsule layer:

- ``fc``: Sabour's body — conv 256 9x9 + ReLU, primary capsules 32 x 8-D (9x9, stride 2) — then
  K x ``class_dim``-D class capsules, every primary capsule voting for every class capsule;
  optional decoder 512-1024-pixels (sigmoid).
- ``conv``: the same body, then a convolutional capsule layer whose kernel covers the primary
  grid (``caps_kernel=0``: 6x6 on 28x28 input, 8x8 on 32x32 — the paper's kernels), with
  ``caps_matrix`` x ``caps_matrix`` transforms acting on poses that are
  (primary_dim / caps_matrix) x caps_matrix matrices.
- ``multilayer``: supplementary table 1 — two convolutions, two convolutional capsule layers,
  one fully connected capsule layer, a ReLU and a squash after each capsule layer.
- ``baseline``: the CNN of Sabour et al. / Chen et al. (convolutions, fully connected layers,
  K-way softmax).

How each preset meets the parameter counts Chen et al. print (table 2; supplementary table 1),
and the choices the text leaves open (``PAPER_PARAMETER_COUNTS`` lists every figure; the test
tests/test_gcapsnet_nets.py compares them with the built networks):

- ``fc`` 6.8M / ``fc-recon`` 8.2M (MNIST): exact to the printed precision (6,815,744 and
  8,227,088 = Sabour's 6,804,224 / 8,215,568 + 1152 x 10 couplings).
- ``conv`` 5.5M / ``conv-recon`` 6.9M (MNIST): "a 6x6 kernel for the last capsule layer and a
  4x4 matrix" over the 32 x 6 x 6 primary grid. 4x4 transforms on the 8-D primary capsules
  mean 2x4 pose matrices, so the class capsules are 2x4 = 8-D and the decoder reads 10 x 8:
  5,525,504 and 6,895,888. (16-D 4x4 poses would need a 512-channel primary layer, 10.6M.)
- ``cifar-fc`` / ``cifar-conv`` 2.67M: 64 maps in the first conv, "an 8x8 kernel for the capsule
  layer and ... an 8x8 matrix": 32 x 8 x 8 primary capsules of 8-D (1x8) -> 10 x 8-D, no decoder
  (table 2 has no CIFAR-10 entry with reconstruction): 2,674,176 for both (a kernel covering the
  grid has one position, so the conv layer has as many transforms as the FC one).
- ``baseline`` 35.4M (MNIST): 35,445,522 with 5x5 convolutions padded by 2 ("same"). Unpadded,
  as in the authors' prototxt, it would be 13.3M (and their prototxt lacks the 10-way layer).
- ``cifar-baseline`` 9.6M: "the same structure as G-CapsNets for the first two layers ... two
  fully-connected layers with outputs of 512 and 10" is 9,737,226 (9.74M) — also what the
  authors' prototxt (with a dropout 0.5) gives; no reading of the text we found gives 9.6M.
- ``multilayer`` (CIFAR-10, table 1): Conv#1 9.4K and Conv#2 401.4K are the *weights* only
  (3*64*7^2 and 64*128*7^2), so these two convolutions have no bias here (``ml_conv_bias``).
  Conv Caps Trans#1 131.1K, Trans#2 4.6K, Routing#2 10.4K and FC Trans#1 92.2K match exactly.
  FC Routing#1 11.5K = 144 x 10 x 8 is a coupling per child, class *and pose dimension* (the text:
  it "combines each tensor of shape (16, 3, 3, 8) to a new tensor of shape (1, 8)"), so
  ``ml_fc_coupling_per_dim`` is on (the authors' CapsuleRouting layer has a scalar per pair,
  1,440). Conv Caps Routing#1 cannot match: table 1 gives Trans#1 a 4x4 kernel (131,072 = 16
  types x 4x4 x 8 types x 8x8, and the 7x7 output of a 10x10 grid) but counts its routing over
  3x3 windows, (3,3,16) x (7,7,8) = 56,448; routing over the 4x4 windows the transforms produce
  (as the authors' prototxt does) has 4*4*16 x 7*7*8 = 100,352 coefficients. Our total is
  therefore 760,896 (761K), not 716K.

Other choices: the ReLU before the squash (``caps_relu``) is on only in ``multilayer``, the one
network for which the paper mentions it (the authors' MNIST-conv and CIFAR-FC prototxts also have
one). The margin loss keeps Sabour's m+ = 0.9, m- = 0.1, lambda = 0.5, as the paper says (the
prototxts use m+ = 0.7 or 0.6). No decoder on CIFAR-10. Poses of the conv class layer are row-major
pose matrices flattened to vectors, so the decoder and the lengths treat them like vectors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from capsgen.config import FamilyConfig, opt

ARCHS = ("fc", "conv", "multilayer", "baseline")
SQUASHES = ("exp", "sabour")
# The names of capsgen.nn.trainable_routing.COUPLING_INITS (a test checks they agree).
COUPLING_INITS = ("parents", "children", "xavier")

_RECON = ("model.reconstruction=true",)
_CIFAR_BODY = ("model.conv_channels=64",)
_CIFAR_BASELINE = ("model.baseline_conv=64,256", "model.baseline_kernels=9,9", "model.baseline_strides=1,2",
                   "model.baseline_padding=0,0", "model.baseline_fc=512")


# Names of the presets below (the ``preset`` field records which one a run came from).
PRESET_NAMES = ("fc", "fc-recon", "conv", "conv-recon", "baseline", "cifar-fc", "cifar-conv", "cifar-baseline",
                "multilayer")


@dataclass
class GCapsNetConfig(FamilyConfig):
    """G-CapsNet classifier settings; the defaults are the ``fc`` preset (MNIST, no decoder)."""

    preset: str = opt("", choices=("", *PRESET_NAMES))   # the preset these values came from (informational)
    arch: str = opt("fc", choices=ARCHS)
    # fc / conv body (Sabour et al.)
    conv_channels: int = opt(256, min=1)
    conv_kernel: int = opt(9, min=1)
    primary_caps: int = opt(32, min=1)
    primary_dim: int = opt(8, min=1)
    primary_kernel: int = opt(9, min=1)
    primary_stride: int = opt(2, min=1)
    # fc: class capsules of class_dim dimensions
    class_dim: int = opt(16, min=1)
    fc_init_std: float = opt(0.01, gt=0)          # std of the fc transforms W_ij (Sabour's 0.01)
    # conv: kernel of the class capsule layer (0 = the whole primary grid) and transform size
    caps_kernel: int = opt(0, min=0)
    caps_matrix: int = opt(4, min=1)
    conv_init_std: float | None = opt(None, gt=0)   # std of the conv-capsule transforms; None = 1/sqrt(q)
    # every capsule layer
    squash: str = opt("exp", choices=SQUASHES)    # exp (Chen et al.) | sabour
    caps_relu: bool = opt(False)                  # a ReLU on s_j before the squash (supplementary)
    coupling_init: str = opt("parents", choices=COUPLING_INITS)   # parents (1/J) | children (1/I) | xavier
    # decoder (fc, conv, multilayer)
    reconstruction: bool = opt(False)
    decoder_hidden: tuple[int, ...] = opt((512, 1024), min=1)
    recon_weight: float = opt(0.0005, min=0)      # x per-image summed squared error (Sabour)
    # multilayer (supplementary table 1)
    ml_conv_channels: tuple[int, ...] = opt((64, 128), min=1)
    ml_conv_kernels: tuple[int, ...] = opt((7, 7), min=1)
    ml_conv_strides: tuple[int, ...] = opt((1, 2), min=1)
    ml_conv_bias: bool = opt(False)               # table 1 counts the conv weights only
    ml_primary_dim: int = opt(8, min=1)           # 128 channels -> 16 capsule types of 8-D
    ml_caps_types: tuple[int, ...] = opt((8, 16), min=1)
    ml_caps_kernels: tuple[int, ...] = opt((4, 3), min=1)
    ml_caps_strides: tuple[int, ...] = opt((1, 2), min=1)
    ml_caps_matrices: tuple[int, ...] = opt((8, 2), min=1)    # 1x8 poses x 8x8; 4x2 poses x 2x2
    ml_per_position_coupling: bool = opt(True)    # conv routing: coefficients per output position
    ml_class_dim: int = opt(8, min=1)
    ml_fc_coupling_per_dim: bool = opt(True)
    # baseline CNN (MNIST: conv 256-256-128 5x5, fc 328-192, softmax)
    baseline_conv: tuple[int, ...] = opt((256, 256, 128), min=1)
    baseline_kernels: tuple[int, ...] = opt((5, 5, 5), min=1)
    baseline_strides: tuple[int, ...] = opt((1, 1, 1), min=1)
    baseline_padding: tuple[int, ...] = opt((2, 2, 2), min=0)
    baseline_fc: tuple[int, ...] = opt((328, 192), min=1)
    baseline_dropout: float = opt(0.5, min=0, max=1)   # before the output layer (the authors' prototxts); < 1
    # margin loss (Sabour's constants, as Chen et al. say)
    m_pos: float = opt(0.9, min=0, max=1)
    m_neg: float = opt(0.1, min=0, max=1)
    lam: float = opt(0.5, min=0)
    # training: Adam at lr, multiplied by lr_decay every epoch (1 = constant, Chen et al. give no
    # schedule); random shifts of up to shift_pixels per axis (Sabour's 2). Chen et al. write
    # that their CapsNet and baseline errors are above Sabour et al.'s "due to differences in the
    # data augmentation (pixel-shifting)", i.e. they seem not to have shifted: 0 follows them,
    # 2 (the default) trains every model of `capsgen reproduce gcapsnet` like capsgen's capsnet.
    lr: float = opt(1e-3, gt=0)
    lr_decay: float = opt(1.0, gt=0, max=1)
    shift_pixels: int = opt(2, min=0)

    # The twin (capsgen.models.gcapsnet.nets says what replaces what and why it is the fair
    # counterpart). It has no squash, couplings or capsule transforms, so the fields only those
    # read conflict with --twin: the squash and its ReLU, the couplings' init and layout, the
    # transforms' init and pose-matrix sizes (the twin's widths do not depend on them).
    TWIN: ClassVar[str] = ("the primary capsules become the same convolution with LeakyReLU instead of the squash "
                           "(multilayer: the ReLU output unsquashed), each trainable-routing capsule layer a layer "
                           "of the same width with LeakyReLU (fully connected: one dense layer I x Din -> J x "
                           "Dout; convolutional: a Conv2d over the grid's channels with the same kernel and "
                           "stride), a class capsule's length a sigmoid score of its vector; convolutions, margin "
                           "loss, masking, decoder, shifts, batch and rates unchanged; arch=baseline has no twin")
    CAPSULE_FIELDS: ClassVar[tuple[str, ...]] = ("squash", "caps_relu", "coupling_init", "fc_init_std",
                                                 "conv_init_std", "caps_matrix", "ml_caps_matrices",
                                                 "ml_per_position_coupling", "ml_fc_coupling_per_dim")

    PRESETS: ClassVar[dict[str, tuple[str, ...]]] = {
        "fc": ("model.preset=fc", "model.arch=fc"),
        "fc-recon": ("model.preset=fc-recon", "model.arch=fc", *_RECON),
        "conv": ("model.preset=conv", "model.arch=conv", "model.caps_kernel=0", "model.caps_matrix=4"),
        "conv-recon": ("model.preset=conv-recon", "model.arch=conv", "model.caps_kernel=0",
                       "model.caps_matrix=4", *_RECON),
        "baseline": ("model.preset=baseline", "model.arch=baseline"),
        "cifar-fc": ("model.preset=cifar-fc", "model.arch=fc", *_CIFAR_BODY, "model.class_dim=8"),
        "cifar-conv": ("model.preset=cifar-conv", "model.arch=conv", *_CIFAR_BODY, "model.caps_kernel=0",
                       "model.caps_matrix=8"),
        "cifar-baseline": ("model.preset=cifar-baseline", "model.arch=baseline", *_CIFAR_BASELINE),
        "multilayer": ("model.preset=multilayer", "model.arch=multilayer", "model.caps_relu=true"),
    }

    def ineffective(self) -> dict[str, str]:
        """Fields the chosen ``arch`` does not use, and decoder fields without a decoder."""
        return _ineffective(self)

    def validate(self) -> None:
        """Raise ValueError (one line) for values or combinations that cannot work."""
        if self.arch not in ARCHS:
            raise ValueError(f"arch {self.arch!r}: choose one of {', '.join(ARCHS)}")
        if self.twin and self.arch == "baseline":
            raise ValueError("twin: arch=baseline is the CNN baseline, which has no capsule part, so no twin; "
                             "drop --twin, or choose arch fc, conv or multilayer")
        if self.squash not in SQUASHES:
            raise ValueError(f"squash {self.squash!r}: choose one of {', '.join(SQUASHES)}")
        if self.coupling_init not in COUPLING_INITS:
            raise ValueError(f"coupling_init {self.coupling_init!r}: choose one of {', '.join(COUPLING_INITS)}")
        if self.arch == "conv" and self.primary_dim % self.caps_matrix:
            raise ValueError(f"caps_matrix={self.caps_matrix} must divide primary_dim={self.primary_dim} "
                             "(poses are (primary_dim / caps_matrix) x caps_matrix matrices)")
        if self.arch == "multilayer":
            n = len(self.ml_conv_channels)
            if n < 1 or len(self.ml_conv_kernels) != n or len(self.ml_conv_strides) != n:
                raise ValueError("ml_conv_channels, ml_conv_kernels and ml_conv_strides need one entry per conv")
            if self.ml_conv_channels[-1] % self.ml_primary_dim:
                raise ValueError(f"the last of ml_conv_channels must be a multiple of ml_primary_dim={self.ml_primary_dim}")
            m = len(self.ml_caps_types)
            if m < 1 or not (len(self.ml_caps_kernels) == len(self.ml_caps_strides) == len(self.ml_caps_matrices) == m):
                raise ValueError("ml_caps_types, ml_caps_kernels, ml_caps_strides and ml_caps_matrices "
                                 "need one entry per capsule layer")
            for q in self.ml_caps_matrices:
                if self.ml_primary_dim % q:
                    raise ValueError(f"every ml_caps_matrices entry must divide ml_primary_dim={self.ml_primary_dim}")
        if self.arch == "baseline":
            n = len(self.baseline_conv)
            if not (len(self.baseline_kernels) == len(self.baseline_strides) == len(self.baseline_padding) == n):
                raise ValueError("baseline_conv, baseline_kernels, baseline_strides and baseline_padding "
                                 "need one entry per conv")
            if not 0 <= self.baseline_dropout < 1:
                raise ValueError(f"baseline_dropout={self.baseline_dropout} must be in [0, 1)")


# Which architectures use a field (fields not listed are used by all): for ``ineffective()``.
_USED_BY: dict[str, tuple[str, ...]] = {
    **{f: ("fc", "conv") for f in ("conv_channels", "conv_kernel", "primary_caps", "primary_dim",
                                   "primary_kernel", "primary_stride")},
    "class_dim": ("fc",), "fc_init_std": ("fc", "multilayer"),
    "caps_kernel": ("conv",), "caps_matrix": ("conv",), "conv_init_std": ("conv", "multilayer"),
    **{f: ("fc", "conv", "multilayer") for f in ("squash", "caps_relu", "coupling_init", "reconstruction",
                                                 "decoder_hidden", "recon_weight", "m_pos", "m_neg", "lam")},
}


def _ineffective(cfg: GCapsNetConfig) -> dict[str, str]:
    out = {}
    for name in cfg.__dataclass_fields__:
        archs = _USED_BY.get(name) or (("multilayer",) if name.startswith("ml_") else
                                       ("baseline",) if name.startswith("baseline_") else None)
        if archs and cfg.arch not in archs:
            out[f"model.{name}"] = f"arch={cfg.arch} does not use it (only {', '.join(archs)})"
    if not cfg.reconstruction and cfg.arch != "baseline":
        for name in ("decoder_hidden", "recon_weight"):
            out[f"model.{name}"] = "there is no decoder (set model.reconstruction=true)"
    return out


def preset_config(name: str) -> GCapsNetConfig:
    """A GCapsNetConfig with a preset's ``model.field=value`` strings applied."""
    from capsgen.config import apply_overrides

    if name not in GCapsNetConfig.PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(GCapsNetConfig.PRESETS)}")
    cfg = GCapsNetConfig()
    apply_overrides({"model": cfg}, list(GCapsNetConfig.PRESETS[name]))
    return cfg


@dataclass(frozen=True)
class PaperCount:
    """One parameter count printed by Chen et al. and the preset (and part) it describes."""

    preset: str
    part: str                 # "total", or a row name of supplementary table 1
    paper: str                # as printed: "6.8M", "131.1K"
    note: str = ""            # non-empty when our network cannot match the figure (and why)


MNIST_SHAPE = (1, 28, 28)
CIFAR_SHAPE = (3, 32, 32)
PAPER_SHAPES = {"fc": MNIST_SHAPE, "fc-recon": MNIST_SHAPE, "conv": MNIST_SHAPE, "conv-recon": MNIST_SHAPE,
                "baseline": MNIST_SHAPE, "cifar-fc": CIFAR_SHAPE, "cifar-conv": CIFAR_SHAPE,
                "cifar-baseline": CIFAR_SHAPE, "multilayer": CIFAR_SHAPE}

_ROUTING1 = ("table 1 counts 3x3 routing windows after a 4x4-kernel transform; routing the 4x4 "
             "windows' votes takes 4*4*16 x 7*7*8 coefficients")
PAPER_PARAMETER_COUNTS: tuple[PaperCount, ...] = (
    # Table 2 (MNIST / CIFAR-10); "*" = no reconstruction.
    PaperCount("baseline", "total", "35.4M"),
    PaperCount("fc-recon", "total", "8.2M"),
    PaperCount("fc", "total", "6.8M"),
    PaperCount("conv-recon", "total", "6.9M"),
    PaperCount("conv", "total", "5.5M"),
    PaperCount("cifar-baseline", "total", "9.6M",
               "conv 64 9x9, conv 256 9x9/2, fc 512, fc 10 has 9.74M (so does the authors' prototxt)"),
    PaperCount("cifar-fc", "total", "2.67M"),
    PaperCount("cifar-conv", "total", "2.67M"),
    PaperCount("multilayer", "total", "716K", "Conv Caps Routing#1: " + _ROUTING1),
    # Supplementary table 1 (multi-layer G-CapsNet, CIFAR-10).
    PaperCount("multilayer", "Conv#1", "9.4K"),
    PaperCount("multilayer", "Conv#2", "401.4K"),
    PaperCount("multilayer", "Conv Caps Trans#1", "131.1K"),
    PaperCount("multilayer", "Conv Caps Routing#1", "56.4K", _ROUTING1),
    PaperCount("multilayer", "Conv Caps Trans#2", "4.6K"),
    PaperCount("multilayer", "Conv Caps Routing#2", "10.4K"),
    PaperCount("multilayer", "FC Caps Trans#1", "92.2K"),
    PaperCount("multilayer", "FC Caps Routing#1", "11.5K"),
)


def rounds_to(count: int, printed: str) -> bool:
    """Does ``count`` print as ``printed`` ("6.8M", "131.1K", "716K") at the printed precision?"""
    scale = {"K": 1e3, "M": 1e6}[printed[-1]]
    number = printed[:-1]
    decimals = len(number.split(".")[1]) if "." in number else 0
    return round(count / scale, decimals) == float(number)
