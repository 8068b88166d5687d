"""Settings of Hauser's products of expert capsules; torch-free, so the CLI can read it cheaply.

Training has three phases, each on its own parameters (paper figure 1):
  1. the convolutional autoencoder, by backprop on pixel reconstruction (Adam), then frozen;
  2. the capsule encoder W (576 x 8-D -> 20 x 16-D), by contrastive divergence (Algorithm 1);
  3. the capsule decoder U (20 x 16-D -> 576 x 8-D), W fixed.
The paper gives the architecture and Algorithm 1 but no step counts, learning rates, L2 weight
or dropout rate; the learning rates below come from mnist-5k runs noted beside them, the
step counts and the rest are untuned round numbers.

A run is ONE schedule of stages, a function of the global step (:meth:`PoEConfig.stage_of`):

    ae     steps [0, A)                   the autoencoder (A = ae_steps)
    stats  steps [A, A + S)               the primary capsules' training mean and longest length,
                                          averaged over S = stat_steps batches (no weight changes)
    w      steps [A + S, A + S + Wn)      W by Algorithm 1 (Wn = w_steps)
    u      steps [A + S + Wn, total)      U by ``decoder_rule`` (u_steps); the restricted-domain
                                          directions are averaged over the same batches (W is fixed)

so the run's length is fixed by these fields (:meth:`PoEConfig.fixed_steps`): ``capsgen train
poe`` trains exactly their sum, a different ``--steps`` or any ``--epochs`` is refused with one
line, and ``--minutes`` only caps the time (resume to finish).

Image size: two 9x9 convolutions need images of at least 17 pixels a side (28x28 gives the
paper's 6x6 maps). Smaller images (the 8x8 ``digits``) are refused with one line naming the fix,
``--set model.ae_kernel=3`` (8 -> 6 -> 2x2 maps); they are not padded, since padding 8x8 digits to
17x17 would spend most of the autoencoder on a blank frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from capsgen.config import FamilyConfig, opt

AE_LOSSES = ("bce", "mse")
STAGES = ("ae", "stats", "w", "u")
DOMAINS = ("full", "restricted")
DECODER_RULES = ("gaussian", "hauser")   # the names of capsgen.nn.contrastive.DECODER_RULES


@dataclass
class PoEConfig(FamilyConfig):
    # --- convolutional autoencoder front end (section 4.1) ---
    ae_channels: int = opt(128, min=1)        # both filter banks: [9, 9, C, 128], [9, 9, 128, 128]
    ae_kernel: int = opt(9, min=1)
    ae_stride: int = opt(2, min=1)            # of the second bank; 28x28 -> 20x20 -> 6x6
    leaky_slope: float = opt(0.2, min=0)      # tf.nn.leaky_relu's default (the paper used TensorFlow)
    dropout: float = opt(0.1, min=0, max=0.9)  # after both encoder activations while the AE trains (not tuned)
    ae_loss: str = opt("bce", choices=AE_LOSSES)   # per pixel against the sigmoid output
    ae_lr: float = opt(1e-3, gt=0)            # Adam
    ae_steps: int = opt(500, min=0)
    stat_steps: int = opt(20, min=1)          # batches averaged for the capsules' mean and longest length
    # --- capsules ---
    primary_dim: int = opt(8, min=1)          # 6 x 6 x 128 / 8 = 576 capsules of 8-D
    code_capsules: int = opt(20, min=1)
    code_dim: int = opt(16, min=1)
    routing_iterations: int = opt(3, min=1)
    init_std: float = opt(0.01, gt=0)         # W, U ~ N(0, 0.01) read as a standard deviation
    # Not in the paper: subtract the training mean of each primary capsule before W (and add it
    # back after U). On mnist-5k two thirds of the capsules' energy is that mean (background
    # positions give the same capsule for every image), and Algorithm 1 on the raw capsules
    # collapsed every code capsule onto one direction for all images (mean resultant length
    # > 0.9995; a logistic probe on the code directions: 6.5 % digit accuracy, chance 10 %);
    # centred, the same 150 steps gave resultant 0.03, probe 54.5 %, and capsule error 0.064
    # below the mean-capsule baseline 0.106 (raw: 0.16, above it).
    # Default on, from the evidence above and capsgen's own runs of this family on mnist-5k (batch
    # 64, 150 AE / 20 stats / 150 W steps, eval on 100 test images; /tmp runs, 2026-11-30): raw,
    # the code collapsed (resultant 1.000: one direction for every image) and W's capsule error
    # ended at 0.21, above the 0.096 of predicting every capsule by its mean; centred, resultant
    # 0.045 and capsule error 0.057. The ``hauser`` preset turns it off (the paper has no centring).
    centre_capsules: bool = opt(True)
    # --- encoder W: Algorithm 1 with SGD momentum, L2 and learning-rate decay ---
    # The coupling averages 576 votes (sum_i c_ij = 1), so dW is ~1/576 of a per-pair rule and
    # the learning rate is correspondingly large. mnist-5k, batch 64, test capsule error (0.33
    # untrained): lr 30 -> 0.20 after 300 steps; 300 -> 0.12 after 75 steps; 3000 -> 0.16 with
    # a negative free-energy gap (reconstructions more probable than the data).
    w_lr: float = opt(300.0, gt=0)
    w_momentum: float = opt(0.9, min=0, max=0.999)
    w_weight_decay: float = opt(1e-6, min=0)  # lr x decay is the per-step shrink: 3e-4 here
    w_lr_decay: float = opt(0.5, gt=0, max=1)  # the learning rate halves every w_decay_every steps
    w_decay_every: int = opt(1000, min=1)
    w_steps: int = opt(500, min=0)
    # --- decoder U ---
    decoder_rule: str = opt("gaussian", choices=DECODER_RULES)   # hauser: section 4.1 as written (diverges)
    # gaussian rule, mnist-5k, batch 64: lr 0.5 settles in ~25 steps; 5 diverges (capsule error
    # 0.33 -> 5.7 in 100 steps), 50 overflows.
    u_lr: float = opt(0.5, gt=0)
    u_momentum: float = opt(0.9, min=0, max=0.999)
    u_weight_decay: float = opt(0.0, min=0)
    u_lr_decay: float = opt(0.5, gt=0, max=1)
    u_decay_every: int = opt(1000, min=1)
    u_steps: int = opt(500, min=0)
    # --- generation and evaluation ---
    sample_domain: str = opt("restricted", choices=DOMAINS)   # of sample() / capsgen sample without --domain
    eval_n: int = opt(100, min=10)            # test images (and samples per domain) in evaluate()
    fixed_seed: int = opt(1234, min=0)        # seed of evaluate()'s samples and of the figures' codes
    explode_limit: float = opt(1e3, min=0)    # stop when a capsule error exceeds this; 0 = only NaN / inf
    # --- the twin (--twin) only ---
    # EM steps whose E-step sums make one M-step of the twin's mixture. 50 batches of 64 = 3,200
    # images, about 160 per component at J = 20, well above the q + 1 = 17 a 16-D PPCA needs; on
    # mnist-5k's default 1,000 EM steps that is 20 M-steps (not tuned).
    em_batches: int = opt(50, min=1)

    # The twin (``capsgen train poe --twin``, capsgen.models.poe.twin): the same autoencoder, data,
    # schedule and steps; the capsule part (primary capsules, W by CD with routing, U, the pose
    # sampler) becomes a mixture of J PPCA components with q-D latents on the autoencoder's
    # features, fitted by EM in the steps the capsule model gives W and U.
    TWIN: ClassVar[str] = ("the capsule part (primary capsules, W by contrastive divergence with routing, U, "
                           "one-capsule pose sampling) becomes a mixture of code_capsules Gaussian PPCA components "
                           "with code_dim-D latents on the autoencoder's features, fitted by EM in the W and U "
                           "steps; autoencoder, its training, data, schedule and run length unchanged; --capsule K "
                           "samples component K")
    CAPSULE_FIELDS: ClassVar[tuple[str, ...]] = (
        "primary_dim", "routing_iterations", "init_std", "centre_capsules", "w_lr", "w_momentum",
        "w_weight_decay", "w_lr_decay", "w_decay_every", "decoder_rule", "u_lr", "u_momentum", "u_weight_decay",
        "u_lr_decay", "u_decay_every", "explode_limit")

    # ``hauser``: the paper as printed — raw (uncentred) capsules, section 4.1's decoder rule and
    # sampling from the whole sphere (figure 2a/2c; restricted sampling is its remedy, 2b/2d).
    PRESETS: ClassVar[dict[str, tuple[str, ...]]] = {
        "hauser": ("model.centre_capsules=false", "model.decoder_rule=hauser", "model.sample_domain=full"),
    }

    def validate(self) -> None:
        if self.ae_channels % self.primary_dim:
            raise ValueError(f"model.ae_channels={self.ae_channels} must be a multiple of "
                             f"model.primary_dim={self.primary_dim} (channels are grouped into capsules)")

    # ------------------------------------------------------------------ the schedule of stages
    def stage_lengths(self) -> dict[str, int]:
        return {"ae": self.ae_steps, "stats": self.stat_steps, "w": self.w_steps, "u": self.u_steps}

    def stage_of(self, step: int) -> tuple[str, int]:
        """(stage, steps of that stage already done) for the 0-based global ``step``; steps past the
        schedule count as further U steps (a run never has them: its length is fixed_steps)."""
        start = 0
        for name, length in self.stage_lengths().items():
            if step < start + length:
                return name, step - start
            start += length
        return "u", step - (start - self.u_steps)

    def fixed_steps(self) -> tuple[int, str] | None:
        lengths = self.stage_lengths()
        return sum(lengths.values()), " + ".join(f"model.{k}_steps {v}" if k != "stats" else f"model.stat_steps {v}"
                                                 for k, v in lengths.items())

    def ineffective(self) -> dict[str, str]:
        out = {} if self.twin else {"model.em_batches": "model.twin is false (only the twin's EM reads it)"}
        for stage, fields in (("ae", ("ae_lr", "dropout", "ae_loss")),
                              ("w", ("w_lr", "w_momentum", "w_weight_decay", "w_lr_decay", "w_decay_every")),
                              ("u", ("u_lr", "u_momentum", "u_weight_decay", "u_lr_decay", "u_decay_every",
                                     "decoder_rule"))):
            if getattr(self, f"{stage}_steps") == 0:
                out.update({f"model.{f}": f"model.{stage}_steps is 0 (that stage is skipped)" for f in fields})
        for stage in ("w", "u"):
            if getattr(self, f"{stage}_lr_decay") == 1.0:
                out.setdefault(f"model.{stage}_decay_every", f"model.{stage}_lr_decay is 1 (no decay)")
        return out
