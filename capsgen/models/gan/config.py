"""Settings of the GAN families (``dcgan``, ``capsulegan``) and their paper presets.

Presets name the papers by first author: ``karmakar`` (Karmakar's CapsuleGAN with a BCE CapsNet
discriminator and its DCGAN baseline) and ``jaiswal`` (Jaiswal et al. 2018, margin loss).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from capsgen.config import FamilyConfig, opt

GENERATORS = ("dcgan", "karmakar")
SCHEDULES = ("joint", "alternate")
DISCRIMINATORS = ("conv", "caps-dense", "caps1", "caps2", "trunk-caps", "trunk-caps2")
OBJECTIVES = ("bce", "margin", "lsgan", "hinge")
AUGMENTS = ("none", "translation", "cutout", "translation,cutout")
ROUTINGS = ("dynamic", "trainable", "self-attention")   # capsgen.nn.trainable_routing.ROUTINGS (torch-free copy)

# Paper-size CapsNet discriminators (the CPU defaults below are much smaller).
_KARMAKAR_D = ("model.discriminator=caps-dense", "model.d_conv_channels=256", "model.d_conv_kernel=9",
               "model.d_conv_act=prelu", "model.d_primary_caps=32", "model.d_primary_dim=8",
               "model.d_primary_kernel=7", "model.d_primary_stride=2", "model.d_caps=10",
               "model.d_caps_dim=16", "model.d_dense=64")
_JAISWAL_D = ("model.d_conv_channels=256", "model.d_conv_kernel=9", "model.d_conv_act=relu",
              "model.d_primary_caps=32", "model.d_primary_dim=8", "model.d_primary_kernel=9",
              "model.d_primary_stride=2", "model.d_caps_dim=16", "model.d_routing=3")
# Adam(2e-4, beta1 = 0.5) for both networks (Karmakar gives 2e-4; Jaiswal et al. give no rates).
_PAPER_OPT = ("model.lr=2e-4", "model.lr_d=none", "model.beta1=0.5", "model.beta2=0.999")
# Karmakar: 16 real + 16 generated per batch, D and G batches alternate, BCE, 10,000 iterations
# ("We use a batch size of 32 for 10000 epochs"; one batch trains either D or G, so an "epoch"
# there is one step here).
_KARMAKAR_TRAIN = ("model.generator=karmakar", "model.g_channels=128,64,32,3", "model.objective=bce",
                   "model.schedule=alternate", "model.n_dis=1", *_PAPER_OPT, "train.batch_size=16",
                   "train.steps=10000")
_DCGAN_G = ("model.generator=dcgan", "model.g_width=64", "model.g_norm=batch", "model.schedule=joint",
            "model.n_dis=1", *_PAPER_OPT)


@dataclass
class GANConfig(FamilyConfig):
    """Settings shared by the GAN families. Defaults are small enough to train on a CPU."""

    preset: str = ""                  # the preset these values came from (informational)
    latent_dim: int = opt(100, min=1)             # z ~ N(0, I)
    # generator: "dcgan" (Radford et al.) or "karmakar" (Karmakar: 5 conv 3x3, LeakyReLU, no BN)
    generator: str = opt("dcgan", choices=GENERATORS)
    g_width: int = opt(32, min=1)                 # dcgan: channels before the output layer (paper DCGAN: 64)
    g_norm: str = opt("batch", choices=("batch", "none"))             # dcgan: batch | none
    g_channels: tuple[int, ...] = opt((128, 64, 32, 3), min=1)   # karmakar: conv widths before the C-channel layer
    # discriminator: "conv" (DCGAN), "caps-dense" (Karmakar), "caps1" (Jaiswal et al. 2018, one capsule),
    # "caps2" (two capsules, real and fake); "trunk-caps" / "trunk-caps2": DCGAN's strided conv body
    # (d_width, d_norm, d_extra_layers) under primary capsules, then the dense / two-capsule head
    discriminator: str = opt("conv", choices=DISCRIMINATORS)
    d_width: int = opt(32, min=1)                 # conv: channels of the first layer (paper DCGAN: 64)
    d_norm: str = opt("batch", choices=("batch", "none"))             # conv: batch | none
    d_extra_layers: int = opt(0, min=0)           # conv: extra 3x3 stride-1 layers
    d_conv_channels: int = opt(64, min=1)         # capsule discriminators (paper: 256)
    d_conv_kernel: int = opt(9, min=1)
    # stride of the capsule discriminator's first conv: 2 cuts that conv's output (and so the
    # primary-capsule conv's input and cost) about 4x; lower d_primary_kernel to fit what is left
    d_conv_stride: int = opt(1, min=1)
    d_conv_act: str = opt("relu", choices=("relu", "prelu", "leaky"))          # relu | prelu | leaky
    d_primary_caps: int = opt(8, min=1)           # paper: 32
    d_primary_dim: int = opt(8, min=1)
    d_primary_kernel: int = opt(9, min=1)
    d_primary_stride: int = opt(2, min=1)
    d_caps: int = opt(10, min=1)                  # caps-dense: number of routed capsules
    d_caps_dim: int = opt(16, min=1)
    d_routing: int = opt(3, min=1)
    d_grad_through_routing: bool = True
    # dynamic: routing by agreement (Sabour et al.); trainable: Chen et al.'s (G-CapsNets) learnt
    # couplings, one pass; self-attention: agreement in one pass (Mazzia et al. 2021, Efficient-
    # CapsNet). For the one-pass kinds d_routing and d_grad_through_routing do not apply.
    d_routing_kind: str = opt("dynamic", choices=ROUTINGS)
    d_caps_init_std: float = opt(0.01, gt=0)     # std of the capsule transforms W_ij (Sabour: 0.01)
    d_dense: int = opt(64, min=1)                 # caps-dense: hidden dense layer
    # capsule discriminators: minibatch standard deviation (Karras et al. 2018) over groups of this
    # many images, one extra channel before the primary capsules; 0 = off
    d_minibatch_std: int = opt(0, min=0)
    # spectral normalisation (Miyato et al. 2018) of every conv and dense layer of D (not of the
    # capsule transforms W_ij, which are [I, J, D_out, D_in] tensors, not one linear map)
    d_spectral_norm: bool = False
    # DiffAugment (Zhao et al. 2020): translation by up to 1/8 of the side and/or cutout of a
    # half-side square, on the real and the fake images D sees (the G step's fakes too), drawn
    # from the step's generator
    diffaugment: str = opt("none", choices=AUGMENTS)
    objective: str = opt("bce", choices=OBJECTIVES)            # bce | margin | lsgan | hinge
    m_pos: float = opt(0.9, min=0, max=1)
    m_neg: float = opt(0.1, min=0, max=1)
    lam: float = opt(0.5, min=0)
    lr: float = opt(2e-4, gt=0)                  # Adam learning rate of the generator (and of D unless lr_d)
    lr_d: float | None = opt(None, gt=0)         # discriminator learning rate; None = lr
    beta1: float = opt(0.5, min=0, max=0.9999)
    beta2: float = opt(0.999, min=0, max=0.9999)
    n_dis: int = opt(1, min=1)                    # discriminator updates per generator update
    schedule: str = opt("joint", choices=SCHEDULES)           # joint | alternate
    ema: float = opt(0.0, min=0, max=0.9999)                  # decay of an EMA copy of the generator; 0 = off
    sample_every: int = opt(100, min=0)           # steps between fixed-noise grids in figures/samples/; 0 = off
    n_fixed: int = opt(64, min=1)                 # images in a fixed-noise grid
    fixed_seed: int = opt(1234, min=0)            # seed of the fixed noise (the same for every run, to compare)
    eval_n: int = opt(1000, min=1)                # test images (and as many fakes) for evaluate()
    explode_limit: float = opt(1e4, min=0)        # stop when a loss exceeds this; 0 = only NaN / inf stop

    DISCRIMINATORS: ClassVar[tuple[str, ...]] = DISCRIMINATORS

    def validate(self) -> None:
        if self.discriminator not in type(self).DISCRIMINATORS:
            raise ValueError(f"discriminator {self.discriminator!r} is not one of this family's: "
                             f"{', '.join(type(self).DISCRIMINATORS)}")

    def ineffective(self) -> dict[str, str]:
        # Only settings that are silently void whatever else is set. Conv-only or capsule-only
        # fields are not listed: `capsgen reproduce --set` applies one set of overrides to DCGAN
        # and CapsuleGAN runs alike, and each takes the fields that concern it.
        if self.d_routing_kind in ("trainable", "self-attention"):
            why = (f"{self.d_routing_kind} routing (model.d_routing_kind={self.d_routing_kind}) makes one pass, "
                   "without iterations")
            return {"model.d_routing": why, "model.d_grad_through_routing": why}
        if self.discriminator != "caps1":
            return {}
        why = ("the one-capsule discriminator has a single parent capsule: the softmax over parents "
               "makes every coupling 1, so routing iterations change nothing (use "
               "model.discriminator=caps2 or caps-dense to route)")
        return {"model.d_routing": why, "model.d_grad_through_routing": why}


@dataclass
class DCGANConfig(GANConfig):
    """``dcgan``: convolutional discriminator, BCE."""

    DISCRIMINATORS: ClassVar[tuple[str, ...]] = ("conv",)
    PRESETS: ClassVar[dict[str, tuple[str, ...]]] = {
        # The baseline of Karmakar: its generator vs a 5-conv-layer LeakyReLU discriminator.
        "karmakar": ("model.preset=karmakar", *_KARMAKAR_TRAIN, "model.d_width=64",
                     "model.d_norm=none", "model.d_extra_layers=2"),
        # The convolutional GAN of Jaiswal et al. 2018: DCGAN generator and discriminator, BCE.
        "jaiswal": ("model.preset=jaiswal", *_DCGAN_G, "model.d_width=64", "model.d_norm=batch",
                    "model.objective=bce"),
    }


@dataclass
class CapsuleGANConfig(GANConfig):
    """``capsulegan``: CapsNet discriminator; by default one capsule and the margin objective.

    The CPU default gives the discriminator a 10x smaller learning rate: on mnist-5k (batch 64)
    with equal rates the capsule discriminator reached 100% accuracy within 100 steps and the
    generator collapsed to noise, stripes or blank images (margin and BCE losses with the DCGAN
    generator, margin loss with Karmakar's generator); with lr_d = 2e-5 it drew digit-like
    shapes after 300 steps. The paper presets keep one rate for both, as the papers do.
    """

    discriminator: str = opt("caps1", choices=DISCRIMINATORS)
    objective: str = opt("margin", choices=OBJECTIVES)
    lr_d: float | None = opt(2e-5, gt=0)

    TWIN: ClassVar[str] = ("the discriminator's primary capsules become the same convolution with LeakyReLU "
                           "instead of the squash, its routed capsules one dense layer of the same width "
                           "(I x Din -> J x Dout, LeakyReLU), a length head a sigmoid score per group; "
                           "generator, body, head, loss, minibatch std, augmentation, EMA, batch and rates "
                           "unchanged")
    CAPSULE_FIELDS: ClassVar[tuple[str, ...]] = ("d_routing", "d_grad_through_routing", "d_routing_kind",
                                                 "d_caps_init_std")

    DISCRIMINATORS: ClassVar[tuple[str, ...]] = ("caps-dense", "caps1", "caps2", "trunk-caps", "trunk-caps2")
    PRESETS: ClassVar[dict[str, tuple[str, ...]]] = {
        "karmakar": ("model.preset=karmakar", *_KARMAKAR_TRAIN, *_KARMAKAR_D),
        "jaiswal": ("model.preset=jaiswal", *_DCGAN_G, "model.discriminator=caps1", *_JAISWAL_D,
                    "model.objective=margin"),
        "jaiswal-2caps": ("model.preset=jaiswal-2caps", *_DCGAN_G, "model.discriminator=caps2",
                          *_JAISWAL_D, "model.objective=margin"),
        # capsgen's own, in neither paper: the best capsule discriminator of the Fashion-MNIST
        # ablation (RESULTS.md, "CapsuleGAN levers"). DCGAN's strided conv body (24 channels)
        # under 1x1 primary capsules (8 types x 8-D on the 7x7 map), 10 x 16-D capsules by
        # trainable routing, the dense head, hinge loss, batch 32, both learning rates 4e-4, and
        # the minibatch standard deviation (groups of 4) fed to the primary capsules. Each choice
        # was one ablation row: the trunk lifted recall from <= 0.04 to 0.12-0.20, equal rates and
        # hinge cost nothing, width 24 and batch 32 bought steps (4 minutes each), 4e-4 instead of
        # 2e-4 closed the 10-minute recall gap to capsgen's DCGAN (round 9), and minibatch std
        # lifted 10-minute recall from 0.485 to 0.545 (resolved; FID 18.7 -> 16.6, not resolved;
        # no change at 30 minutes). Against DCGANs that differ from it in more than the capsules
        # (RESULTS.md, round 10) it wins; against its matched twin (--twin: the same network with
        # the capsule layers replaced by dense layers of the same widths), which isolates what the
        # capsules buy, see RESULTS.md "Capsule models against their matched twins".
        "trunk-hinge": ("model.preset=trunk-hinge", "model.discriminator=trunk-caps", "model.d_width=24",
                        "model.d_primary_kernel=1", "model.d_primary_stride=1", "model.d_routing_kind=trainable",
                        "model.objective=hinge", "model.lr=4e-4", "model.lr_d=4e-4", "model.d_minibatch_std=4",
                        "train.batch_size=32"),
    }


