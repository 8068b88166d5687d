"""Settings of the variational capsule family (Huang et al.); torch-free, so the CLI can read it
without importing torch.

Defaults are sized for a CPU; the presets ``huang-mnist`` and ``huang-celeba`` hold the paper's
networks. Presets are named bundles of ``--set`` values applied before the user's own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from capsgen.config import FamilyConfig, check_config, opt
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
# alpha = 0.025 (reconstruction, meant for 256x256x3 images) and beta = 10 (adversarial), batch 64,
# learning rate 2e-4.
_HUANG_CELEBA = ("model.mode=attributes", "model.network=residual", "model.caps_dim=32",
                 "model.res_base=16", "model.res_max_channels=512", "model.res_group_width=256",
                 "model.alpha=0.025", "model.alpha_pixels=196608", "model.beta=10", "model.d_scales=3",
                 "model.d_width=64",
                 "model.d_layers=3", "model.lr=2e-4", "train.batch_size=64")


@dataclass
class VCapsConfig(FamilyConfig):
    """``vcaps``: encoder -> Gaussian capsules -> mask -> decoder (+ optional LSGAN discriminator).

    Loss (eq. 6): L_c (KL margin loss, eq. 3) + alpha * reconstruction + beta * adversarial.

    ``twin`` (``capsgen train vcaps --twin``): the matched conditional VAE (``TWIN``). The same
    encoder body and head, decoder, discriminator, alpha, reconstruction loss, batch and rates;
    the head's 2 P D numbers (P = K, or 2 A capsules of D) are read as one Gaussian latent of
    P D dimensions instead of P capsules, a class head on the head's input predicts what the
    least KL predicted, L_c becomes the latent's KL + that head's cross-entropy (the capsule
    model's present capsule is pulled to the prior with weight 1, so is the latent), and the
    decoder reads [latent, one-hot class or attribute vector] through its unchanged first layer
    plus a condition Linear. The latent has P D dimensions, not D, so that the encoder head and
    the decoder's first layer keep their shapes (a D-dim latent would drop a (K - 1) / K share
    of both, 37 % of the default model's weights): the twin then has the capsule model's weights
    plus its class head and condition input (+1.4 % at the defaults). The KL of a VAE with
    alpha = 1 leaves unused dimensions at the prior, so the extra dimensions cost nothing the
    data does not pay for. ``kl_margin``, ``kl_lambda`` and ``presence_vectors`` act on the
    absent capsules and the mask only (CAPSULE_FIELDS); ``train_mask`` applies to both
    ("min-kl": the decoder is told the encoder's own prediction, for the twin its class head's).
    """

    TWIN: ClassVar[str] = ("a conditional VAE: the encoder's same head read as one Gaussian latent of as many "
                           "numbers (P x D, one KL) instead of P capsules with a KL each, a class (attribute) "
                           "head beside it instead of least-KL prediction and the KL margin, and the decoder "
                           "reading [latent, one-hot class or attribute vector] through the same first layer plus "
                           "a condition input instead of the masked capsules; encoder body, decoder, "
                           "discriminator, alpha, reconstruction loss, batch and rates unchanged")
    CAPSULE_FIELDS: ClassVar[tuple[str, ...]] = ("kl_margin", "kl_lambda", "presence_vectors")

    preset: str = ""                  # the preset these values came from (informational)
    # "class": one capsule per class (needs labels); "attributes": a (absent, present) pair per
    # binary attribute (needs attributes); "auto": attributes when the data has them, else class.
    mode: str = opt("auto", choices=MODES)
    # "conv": §4.2's digit networks; "residual": §4.1's face networks; "auto": conv in class
    # mode, residual in attribute mode.
    network: str = opt("auto", choices=NETWORKS)
    caps_dim: int = opt(16, min=1)    # D of every capsule (paper: 16 digits, 32 faces)
    # KL margin loss, eq. 3; the paper gives no values. Measured on mnist-5k (300 steps of batch
    # 64, the CPU-default conv networks, alpha = 1; accuracy of least-KL prediction on 500 test
    # images, one seed): m = 4 -> 95.4 %, m = 16 -> 97.8 %, m = 64 -> 98.0 % with the inactive
    # capsules' KL running off to ~450 nats (~50 at m = 16). Active capsules settled at ~2.7 nats.
    kl_margin: float = opt(16.0, gt=0)    # m
    kl_lambda: float = opt(0.5, min=0)    # lambda, Sabour et al.'s down-weighting of absent entities
    # The decoder's mask while training: "min-kl" (paper §3.2: the capsule of least KL, right or
    # wrong) or "label" (the true class / attributes, as Sabour et al. mask by the label). The
    # same runs measured min-kl 97.8 % / label 98.0 % on mnist-5k and 83.3 % / 83.2 % mean
    # attribute accuracy on shapes-attributes (300 steps): no difference, so the paper's rule is
    # the default. Test-time reconstructions always use min-kl, i.e. the prediction.
    train_mask: str = opt("min-kl", choices=MASKS)
    recon: str = opt("mse", choices=RECONS)   # mse (eq. 4: 1/2 sum of squares per image) | bce
    # weight of the reconstruction loss. On mnist-5k alpha = 0.1 gave 98.2 % and prior samples
    # that re-encode as their class 85 % of the time (70 % at alpha = 1), but a reconstruction
    # error of 30.6 instead of 18.4 per image: 1 keeps the autoencoder an autoencoder.
    alpha: float = opt(1.0, min=0)
    # The image size (C x H x W values) alpha was chosen for; None = this data's own. Eq. 4 sums
    # over pixels, so the paper's CelebA alpha of 0.025 (256x256x3 = 196,608 values) weighs the
    # reconstruction 16x less against eq. 3 at 64x64x3. When set, the reconstruction term is
    # scaled by alpha_pixels / (C H W), which keeps the paper's balance at any image size.
    # Measured on shapes-attributes (64x64, the reproduction's CPU attribute settings, seed 0):
    # unscaled, the active capsules collapsed onto the prior (KL 0.4 nats each after 600 steps),
    # reconstructions were the mean image and attribute-conditioned fidelity sat at chance
    # (51 %). Scaled (6 minutes): KL ~1.8 nats per active capsule, reconstruction error 161 per
    # image, objects reconstructed, but fidelity still at chance (see presence_vectors).
    alpha_pixels: int | None = opt(None, min=1)
    beta: float = opt(0.0, min=0)     # weight of the LSGAN loss (eq. 5); 0 = no discriminator
    # A learned vector per capsule added to it when active (not in the paper). A prior draw has
    # mean 0 whichever capsule of a pair is on, so the decoder can tell the two apart only by the
    # spread of its input, and the encoder is free to put an attribute in the means instead;
    # then samples from the prior ignore the requested attributes. Measured on shapes-attributes
    # (6 minutes, 221 steps of 64, alpha scaled as above, seed 0): attribute-conditioned fidelity
    # 52.1 % without, 79.7 % with (colour, position, background and frame ~99 %; shape, stripes
    # and the second object at chance, which the encoder itself did not predict yet).
    presence_vectors: bool = False
    # conv networks (§4.2); the paper's widths are 256, 256, 256
    enc_channels: tuple[int, ...] = opt((64, 64, 64), min=1)
    enc_strides: tuple[int, ...] = opt((1, 2, 2), min=1)
    enc_kernel: int = opt(5, min=1)
    enc_padding: int = opt(2, min=0)  # "same" 5x5: 28 -> 28 -> 14 -> 7 (the paper does not say)
    dec_hidden: tuple[int, ...] = opt((512, 1024), min=1)
    # residual networks (§4.1); the paper's widths are 16, 512, 256
    res_base: int = opt(16, min=1)            # channels of the first stage (C5s1-16d), doubled per halving
    res_max_channels: int = opt(128, min=1)   # cap on those channels (paper: 512, reached at 4x4 from 256x256)
    res_group_width: int = opt(32, min=1)     # channels per attribute before the grouped capsule conv (paper: 256)
    # LSGAN discriminator (used when beta > 0)
    d_scales: int = opt(1, min=1)     # image scales (paper: a multi-scale discriminator; we use 3)
    d_width: int = opt(32, min=1)
    d_layers: int = opt(3, min=1)
    d_norm: str = opt("batch", choices=D_NORMS)
    # optimisation: Adam for the autoencoder and the discriminator. The paper's 2e-4 is its CelebA
    # rate (the huang-celeba preset keeps it); it gives none for MNIST. On mnist-5k (300 steps of
    # 64, CPU-default networks) 2e-4 left the decoder at the mean image (reconstruction error
    # 26.8 = the mean digit's; every prior sample the same blob) while 1e-3 reached 18.5 with
    # class-recognisable samples, and the huang-mnist preset at 2e-4 for 10 minutes (173 steps
    # of 100) still gave one blob for every class (FID 207 against a floor of 1.2) at 2.0 % error.
    lr: float = opt(1e-3, gt=0)
    lr_d: float | None = opt(None, gt=0)      # discriminator learning rate; None = lr
    beta1: float = opt(0.5, min=0, max=0.9999)
    beta2: float = opt(0.999, min=0, max=0.9999)
    # pictures and evaluation
    sample_every: int = opt(200, min=0)       # steps between sample grids in figures/samples/; 0 = off
    n_fixed: int = opt(64, min=1)             # images in a fixed-noise grid
    fixed_seed: int = opt(1234, min=0)
    eval_n: int = opt(1000, min=1)            # test images for evaluate()

    PRESETS: ClassVar[dict[str, tuple[str, ...]]] = {
        "huang-mnist": ("model.preset=huang-mnist", *_HUANG_MNIST),
        "huang-celeba": ("model.preset=huang-celeba", *_HUANG_CELEBA),
    }

    def validate(self) -> None:
        """ValueError (one line) for combinations no network can use (ranges are the fields' own)."""
        if not self.enc_channels or len(self.enc_channels) != len(self.enc_strides):
            raise ValueError(f"model.enc_channels {self.enc_channels} and model.enc_strides "
                             f"{self.enc_strides} must be non-empty and of equal length")

    def check(self) -> None:
        """ConfigError (one line) for a value outside its range or a combination that cannot work."""
        check_config(self, "model")

    def ineffective(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.beta == 0:
            why = "model.beta is 0, so there is no discriminator; set model.beta > 0 (paper: 10)"
            out.update({f"model.{k}": why for k in ("d_scales", "d_width", "d_layers", "d_norm", "lr_d")})
        network = self.network
        if network == "auto" and self.mode != "auto":
            network = "residual" if self.mode == "attributes" else "conv"
        if network == "conv":
            why = "the conv networks (§4.2) have no residual stages; set model.network=residual"
            out.update({f"model.{k}": why for k in ("res_base", "res_max_channels", "res_group_width")})
        elif network == "residual":
            why = "the residual networks (§4.1) have no plain conv encoder or FC decoder; set model.network=conv"
            out.update({f"model.{k}": why for k in ("enc_channels", "enc_strides", "enc_kernel",
                                                     "enc_padding", "dec_hidden")})
        return out

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
