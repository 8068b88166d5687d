"""What ``capsgen reproduce poe`` trains and measures, its settings, and Hauser's claims.

Kept apart from the stages (run.py) and the report (report.py) so both can import it; torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The two settings of the products of expert capsules, each one poe run (the default arms), and the
# non-capsule twin of the centred one (--arms ...,twin): the same autoencoder and steps with a PPCA
# mixture in place of the capsules, so its component j is measured where capsule j is.
ARMS = ("hauser", "centred")
ARM_CHOICES = (*ARMS, "twin")
ARM_PRESET = {"hauser": "hauser", "centred": None, "twin": None}
ARM_PAIRS = {"hauser": (), "centred": (), "twin": ("model.twin=true",)}
ARM_LABEL = {
    "hauser": "the paper as printed (preset hauser): raw capsules, section 4.1's decoder rule",
    "centred": "capsgen's default: capsules centred on their training mean, Gaussian decoder rule",
    "twin": "the non-capsule twin of centred (--twin): the same autoencoder and steps, a PPCA mixture fitted by "
            "EM in place of W, routing and U; 'capsule j' is mixture component j",
}
# The twin takes this arm's planned stage lengths when both are run (equal steps), else its own plan.
TWIN_OF = "centred"
DOMAINS = ("full", "restricted")

# How the training budget of one poe run is split over its stages (after the stats stage's fixed
# STAT_STEPS batches). Measured on mnist-5k, batch 64, one thread: the autoencoder's test MSE was
# still falling after 150 steps (0.028 at 40, 0.016 at 120), W's capsule error settles in about
# 100 steps at lr 300, U's in about 25 (PoEConfig's notes): the autoencoder gets the most.
STAGE_SHARES = {"ae": 0.5, "w": 0.3, "u": 0.2}
STAT_STEPS = 20
EVAL_SHARE = 0.1       # of the budget kept for the run's own evaluations (eval_every below)
EVALS_PER_RUN = 6

# Thresholds of the verdicts, stated in the report beside each claim.
REALISTIC_PRECISION = 0.5      # claim 1: at least half the samples inside the real images' manifold
PURE_CAPSULE = 0.6             # claim 2: a capsule "learns a specific object" if >= 60 % of its samples
PURITY_MARGIN = 0.2            #          share one class, and the mean beats the pooled share by 0.2
DIVERSE_RATIO = 0.5            # claim 3: within-capsule spread >= half the real within-class spread

# Hauser's claims, checked one by one (report.py); the text is the paper's.
CLAIMS = (
    ("realistic", "\"The developed unsupervised learning algorithm ... is able to generate realistic looking "
                  "images from its learned distribution\" (abstract)"),
    ("objects", "\"each of the individual capsules learn specific objects\" (4.2, figure 2)"),
    ("instantiation", "\"different random samples generating images with different instantiation parameters of "
                      "similar objects, such as stroke thicknesses and angles\" (4.2)"),
    ("negatives", "\"some of the images are negatives of what is expected, where if the input x ~ N(0, 1) is "
                  "replaced with -x the image generated are no longer negatives, but the ones that were normal "
                  "become negatives\" (4.2, figures 2a and 2c)"),
    ("restricted", "\"When we restrict our sampling domain to the half of S^15 that is visited during training "
                   "the problem is alleviated\" (4.2, figures 2b and 2d)"),
    ("time", "\"training on a single gpu took about fifteen minutes\" (4.1)"),
)


@dataclass
class Settings:
    data: str
    budget: float                          # training minutes of each poe run (the baseline gets their time)
    out: str
    data_dir: str | None = None
    seed: int = 0
    batch_size: int = 64
    arms: tuple[str, ...] = ARMS
    baseline: str = "dcgan"                # a generative family given the same wall clock ("none": skip)
    per_capsule: int = 100                 # samples per capsule (x J capsules, per domain)
    extra: tuple[str, ...] = ()            # --set pairs, given to every model whose family has the field
    command: str = ""
    channels: int = field(default=0, compare=False)   # filled in from the data

    def identity(self) -> dict[str, Any]:
        """The settings that decide the results (a folder is only continued with the same ones)."""
        keys = ("data", "budget", "seed", "batch_size", "baseline", "per_capsule")
        return {k: getattr(self, k) for k in keys} | {"arms": list(self.arms), "extra": list(self.extra)}
