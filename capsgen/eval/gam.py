"""Generative Adversarial Metric (GAM): a battle between two GANs.

Im et al. (2016, "Generating images with recurrent adversarial networks", reference code
``battle.py``) compare two trained models M_A = (G_A, D_A) and M_B = (G_B, D_B) by pitting each
generator against the *other* model's discriminator. Jaiswal et al. (CapsuleGAN, section 5.3,
eqs. 4-5) use ratios of discriminator *accuracies* (not errors, which can be 0):

    r_samples = A(D_B(G_A(z))) / A(D_A(G_B(z)))          (eq. 4)
    r_test    = A(D_B(x_test)) / A(D_A(x_test))          (eq. 5)

with A = CapsuleGAN and B = convolutional GAN in the paper. A(.) is the accuracy of a
discriminator thresholded at 0.5, generated samples having target 0 (fake) and test images
target 1 (real). A small A(D_B(G_A(z))) means G_A fools B's discriminator, so r_samples < 1
favours model A. r_test checks that the two discriminators are equally good judges of real data
(otherwise the sample ratio says more about the discriminators than the generators):

    A wins  if r_samples < 1 and r_test ~ 1
    B wins  if r_samples > 1 and r_test ~ 1

"~" is |r - 1| <= tol (recorded in the result). capsgen's own ``verdict`` applies the same
tolerance to r_samples: a sample ratio within tol of 1 is a tie rather than a win decided by
sampling noise (with 1000 samples an accuracy has a standard error of up to ~0.016, so ratios
move by a few percent), and r_test far from 1 is reported as "undecided: r_test not ≈ 1".

``verdict_im2016`` is Im et al.'s rule as written, and only that: the tolerance applies to r_test
alone (their "r_test ~ 1"), r_samples < 1 is a win for A however close to 1, and every case that
is not a win is a "tie" (the CapsuleGAN paper reports CIFAR-10, r_samples = 1.0, r_test = 0.72,
as a tie). So r_samples = 0.97, r_test = 1.0 is "tie" for capsgen and "model A wins" for Im et al.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from capsgen.eval.metrics import MetricInputError

VERDICT_A = "model A wins"
VERDICT_B = "model B wins"
VERDICT_TIE = "tie"
VERDICT_TEST = "undecided: r_test not ≈ 1"
VERDICT_NAN = "undecided: r_samples = 0/0"


def accuracy(d_probs, target) -> float:
    """Accuracy of discriminator outputs ``d_probs`` (P(real), any shape, values in [0, 1]).

    A sample is classified real iff its probability is > 0.5 (exactly 0.5 counts as fake).
    ``target`` is 1 (real) or 0 (fake): a scalar applied to every sample, or an array with one
    entry per sample.
    """
    if isinstance(d_probs, torch.Tensor):
        d_probs = d_probs.detach().cpu().double().numpy()
    p = np.asarray(d_probs, dtype=np.float64).reshape(-1)
    if p.size == 0:
        raise MetricInputError("accuracy of an empty set of discriminator outputs is undefined")
    if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
        raise MetricInputError("discriminator outputs must be probabilities in [0, 1] "
                               "(apply the sigmoid / take the capsule length first)")
    if isinstance(target, torch.Tensor):
        target = target.detach().cpu().numpy()
    t = np.asarray(target).reshape(-1)
    if t.size == 1:
        t = np.broadcast_to(t, p.shape)
    if t.shape != p.shape:
        raise MetricInputError(f"target has {t.size} entries for {p.size} discriminator outputs")
    if not np.isin(t, (0, 1)).all():
        raise MetricInputError("targets must be 1 (real) or 0 (fake)")
    return float(((p > 0.5) == (t == 1)).mean())


def _ratio(num: float, den: float) -> float:
    """num / den with x / 0 = inf (x > 0) and 0 / 0 = nan instead of ZeroDivisionError."""
    if den == 0.0:
        return math.nan if num == 0.0 else math.inf
    return num / den


def _check_acc(value: float, name: str) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise MetricInputError(f"{name} must be an accuracy in [0, 1], got {value!r}")
    return v


def gam_ratios(acc_dgan_on_gcaps_samples: float, acc_dcaps_on_ggan_samples: float,
               acc_dgan_on_test: float, acc_dcaps_on_test: float, tol: float = 0.05) -> dict:
    """GAM ratios and verdict for model A (CapsuleGAN) against model B (GAN).

    Arguments (accuracies in [0, 1], see :func:`accuracy`), in the paper's names / generic names:

    * ``acc_dgan_on_gcaps_samples`` = A(D_B(G_A(z))): B's discriminator on A's samples (target fake)
    * ``acc_dcaps_on_ggan_samples`` = A(D_A(G_B(z))): A's discriminator on B's samples (target fake)
    * ``acc_dgan_on_test``          = A(D_B(x_test)) (target real)
    * ``acc_dcaps_on_test``         = A(D_A(x_test)) (target real)

    Returns a dict with ``r_samples``, ``r_test`` (inf for x/0, nan for 0/0), ``tolerance``,
    ``verdict`` (one of "model A wins", "model B wins", "tie", "undecided: r_test not ≈ 1",
    "undecided: r_samples = 0/0"), ``verdict_im2016`` (Im et al.'s three-way reading: every
    non-win is a tie), ``note`` (why, in words, including any zero denominator) and the four
    input accuracies. ``verdict_im2016`` uses no tolerance on r_samples (see the module docstring).
    """
    a_b_on_ga = _check_acc(acc_dgan_on_gcaps_samples, "acc_dgan_on_gcaps_samples")
    a_a_on_gb = _check_acc(acc_dcaps_on_ggan_samples, "acc_dcaps_on_ggan_samples")
    a_b_test = _check_acc(acc_dgan_on_test, "acc_dgan_on_test")
    a_a_test = _check_acc(acc_dcaps_on_test, "acc_dcaps_on_test")
    if not (tol >= 0.0 and math.isfinite(tol)):
        raise MetricInputError(f"tol must be a finite number >= 0, got {tol!r}")

    r_samples = _ratio(a_b_on_ga, a_a_on_gb)
    r_test = _ratio(a_b_test, a_a_test)
    notes = []
    if a_a_on_gb == 0.0:
        notes.append("A's discriminator accepted every sample of B as real (A(D_A(G_B(z))) = 0), "
                     f"so r_samples = {r_samples}")
    if a_a_test == 0.0:
        notes.append("A's discriminator rejected every test image (A(D_A(x_test)) = 0), "
                     f"so r_test = {r_test}")

    test_ok = math.isfinite(r_test) and abs(r_test - 1.0) <= tol
    if math.isnan(r_samples):
        sample_call = VERDICT_NAN
        notes.append("both discriminators were fooled by every opposing sample: no winner by samples")
    elif abs(r_samples - 1.0) <= tol:  # inf - 1 = inf never passes
        sample_call = VERDICT_TIE
    elif r_samples < 1.0:
        sample_call = VERDICT_A
    else:
        sample_call = VERDICT_B

    if test_ok:
        verdict = sample_call
    else:
        verdict = VERDICT_TEST
        notes.append(f"|r_test - 1| > {tol}: the discriminators disagree on real test data, "
                     "so the sample ratio is not comparable")
    # Im et al.: the sign of r_samples - 1 decides when r_test ~ 1; no tolerance on r_samples.
    if test_ok and r_samples < 1.0:
        verdict_im2016 = VERDICT_A
    elif test_ok and r_samples > 1.0:   # inf included; nan compares False both ways -> tie
        verdict_im2016 = VERDICT_B
    else:
        verdict_im2016 = VERDICT_TIE
    if not notes:
        notes.append(f"r_test within {tol} of 1; r_samples decides")
    return {
        "r_samples": r_samples,
        "r_test": r_test,
        "tolerance": float(tol),
        "verdict": verdict,
        "verdict_im2016": verdict_im2016,
        "note": "; ".join(notes),
        "acc_dgan_on_gcaps_samples": a_b_on_ga,
        "acc_dcaps_on_ggan_samples": a_a_on_gb,
        "acc_dgan_on_test": a_b_test,
        "acc_dcaps_on_test": a_a_test,
    }
