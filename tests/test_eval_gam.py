"""GAM battle maths: thresholded accuracy, ratios, verdicts, zero denominators."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from capsgen.eval.gam import (VERDICT_A, VERDICT_B, VERDICT_NAN, VERDICT_TEST, VERDICT_TIE, accuracy,
                              gam_ratios)


def test_accuracy_threshold_half():
    p = np.array([0.9, 0.2, 0.5, 0.7])
    # predicted real iff p > 0.5: 0.9 and 0.7 -> real; 0.2 and 0.5 (exactly) -> fake
    assert accuracy(p, 1) == 0.5
    assert accuracy(p, 0) == 0.5
    assert accuracy(p, [1, 0, 0, 1]) == 1.0
    assert accuracy(torch.tensor([[0.51], [0.49]]), torch.tensor([1, 1])) == 0.5


@pytest.mark.parametrize("probs,target", [([], 1), ([0.2, 1.3], 1), ([0.2, -2.0], 0),
                                          ([0.2], 2), ([0.1, 0.2], [1, 0, 1])])
def test_accuracy_rejects_bad_input(probs, target):
    with pytest.raises(ValueError):
        accuracy(np.array(probs), target)


def test_paper_mnist_case_capsulegan_wins():
    # r_samples = 0.395 / 0.5 = 0.79 and r_test = 0.9 / 0.9 = 1 (the paper's MNIST numbers)
    out = gam_ratios(0.395, 0.5, 0.9, 0.9)
    assert out["r_samples"] == pytest.approx(0.79) and out["r_test"] == pytest.approx(1.0)
    assert out["verdict"] == VERDICT_A == "model A wins"
    assert out["verdict_im2016"] == VERDICT_A
    assert out["tolerance"] == 0.05


def test_paper_cifar_case_is_undecided_and_im_tie():
    # r_samples = 1.0, r_test = 0.72: not a win for anyone; Im et al. (and the paper) call it a tie
    out = gam_ratios(0.6, 0.6, 0.72, 1.0)
    assert out["r_test"] == pytest.approx(0.72)
    assert out["verdict"] == VERDICT_TEST == "undecided: r_test not ≈ 1"
    assert out["verdict_im2016"] == VERDICT_TIE


def test_b_wins_tie_and_tolerance():
    assert gam_ratios(0.5, 0.4, 0.8, 0.8)["verdict"] == VERDICT_B          # r_samples = 1.25
    assert gam_ratios(0.51, 0.5, 0.8, 0.8)["verdict"] == VERDICT_TIE       # 1.02 within 0.05
    assert gam_ratios(0.51, 0.5, 0.8, 0.8, tol=0.01)["verdict"] == VERDICT_B
    # r_test = 0.84 / 0.8 = 1.05: outside tol 0.04, inside tol 0.06
    assert gam_ratios(0.3, 0.5, 0.84, 0.8, tol=0.04)["verdict"] == VERDICT_TEST
    out = gam_ratios(0.3, 0.5, 0.84, 0.8, tol=0.06)
    assert out["verdict"] == VERDICT_A and out["tolerance"] == 0.06


def test_zero_denominators_never_raise():
    # D_A accepted every sample of G_B: r_samples = 0.3 / 0 = inf > 1 -> B wins
    out = gam_ratios(0.3, 0.0, 0.9, 0.9)
    assert out["r_samples"] == math.inf and out["verdict"] == VERDICT_B
    assert "A(D_A(G_B(z))) = 0" in out["note"]
    # both discriminators fully fooled: 0 / 0
    out = gam_ratios(0.0, 0.0, 0.9, 0.9)
    assert math.isnan(out["r_samples"]) and out["verdict"] == VERDICT_NAN
    assert out["verdict_im2016"] == VERDICT_TIE
    # D_A rejects every test image: r_test = inf, and 0/0 = nan
    out = gam_ratios(0.3, 0.5, 0.9, 0.0)
    assert out["r_test"] == math.inf and out["verdict"] == VERDICT_TEST and "A(D_A(x_test)) = 0" in out["note"]
    out = gam_ratios(0.3, 0.5, 0.0, 0.0)
    assert math.isnan(out["r_test"]) and out["verdict"] == VERDICT_TEST
    # numerator 0 is fine: r_samples = 0 -> A wins
    assert gam_ratios(0.0, 0.5, 0.9, 0.9)["verdict"] == VERDICT_A


def test_gam_from_discriminator_outputs():
    rng = np.random.default_rng(0)
    d_b_on_ga = rng.uniform(0.3, 0.9, 1000)   # B's D on A's samples (target fake)
    d_a_on_gb = rng.uniform(0.0, 0.6, 1000)   # A's D on B's samples (target fake)
    test = rng.uniform(0.4, 1.0, 1000)
    out = gam_ratios(accuracy(d_b_on_ga, 0), accuracy(d_a_on_gb, 0), accuracy(test, 1), accuracy(test, 1))
    # A's samples fool D_B (acc ~ 1/3) far more than B's fool D_A (acc ~ 5/6)
    assert out["r_samples"] < 0.6 and out["r_test"] == 1.0 and out["verdict"] == VERDICT_A


def test_gam_rejects_bad_accuracies():
    with pytest.raises(ValueError):
        gam_ratios(1.2, 0.5, 0.9, 0.9)
    with pytest.raises(ValueError):
        gam_ratios(0.5, 0.5, 0.9, 0.9, tol=-0.1)


def test_im2016_reading_has_no_tolerance_on_r_samples():
    # r_samples = 0.97, r_test = 1.0: inside capsgen's tolerance (tie), but Im et al.'s rule only
    # asks r_samples < 1 with r_test ~ 1, so A wins by their reading.
    out = gam_ratios(0.485, 0.5, 0.9, 0.9, tol=0.05)
    assert out["r_samples"] == pytest.approx(0.97) and out["r_test"] == 1.0
    assert out["verdict"] == VERDICT_TIE and out["verdict_im2016"] == VERDICT_A
    out = gam_ratios(0.515, 0.5, 0.9, 0.9, tol=0.05)              # r_samples = 1.03
    assert out["verdict"] == VERDICT_TIE and out["verdict_im2016"] == VERDICT_B
    assert gam_ratios(0.5, 0.5, 0.9, 0.9)["verdict_im2016"] == VERDICT_TIE          # exactly 1
    # the tolerance still applies to r_test: 0.72 is no win for anyone (the paper's CIFAR-10 tie)
    assert gam_ratios(0.3, 0.5, 0.72, 1.0)["verdict_im2016"] == VERDICT_TIE
    assert gam_ratios(0.3, 0.0, 0.9, 0.9)["verdict_im2016"] == VERDICT_B           # inf > 1
