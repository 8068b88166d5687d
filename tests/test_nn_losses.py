"""capsgen.nn.losses: Sabour et al.'s margin loss (eq. 4) against a scalar-loop reference.

L_k = T_k max(0, m+ - ||v_k||)^2 + lam (1 - T_k) max(0, ||v_k|| - m-)^2, summed over the classes
k and averaged over the batch; m+ = 0.9, m- = 0.1, lam = 0.5 by default.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from capsgen.nn import as_target_matrix, margin_loss

try:
    from reference_capsules import margin_loss_scalar, ref_margin_loss
except ImportError:  # tests/ imported as a package
    from tests.reference_capsules import margin_loss_scalar, ref_margin_loss

DT = torch.float64
TOL = dict(rtol=1e-12, atol=1e-14)


def lengths_away_from_kinks(B, K, seed, m_pos=0.9, m_neg=0.1, gap=0.02):
    """Capsule lengths in (0, 1) at least ``gap`` away from m+ and m- (the ReLU kinks)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, K, generator=g, dtype=DT) * 0.98 + 0.01
    for m in (m_pos, m_neg):
        close = (x - m).abs() < gap
        x = torch.where(close, x + 2.5 * gap * torch.sign(x - m + 1e-12), x)
    return x.clamp(0.001, 0.999)


def random_indices(B, K, seed):
    return torch.randint(0, K, (B,), generator=torch.Generator().manual_seed(seed))


def random_multi_hot(B, K, seed):
    return (torch.rand(B, K, generator=torch.Generator().manual_seed(seed)) < 0.4).long()


# ----------------------------------------------------------------------------- vs reference
@pytest.mark.parametrize("B, K", [(1, 1), (1, 3), (4, 10), (7, 2)])
def test_margin_loss_indices_match_reference(B, K):
    lengths = lengths_away_from_kinks(B, K, seed=B * K)
    t = random_indices(B, K, seed=B + K)
    assert torch.allclose(margin_loss(lengths, t), ref_margin_loss(lengths, t), **TOL)


@pytest.mark.parametrize("B, K", [(1, 3), (4, 10), (7, 2)])
def test_margin_loss_multi_hot_matches_reference(B, K):
    lengths = lengths_away_from_kinks(B, K, seed=B * K + 1)
    t = random_multi_hot(B, K, seed=B + K + 1)
    t[0] = 1  # at least one row with every class present
    if B > 1:
        t[1] = 0  # and one row with none
    assert torch.allclose(margin_loss(lengths, t), ref_margin_loss(lengths, t), **TOL)


def test_indices_and_one_hot_matrix_agree():
    lengths = lengths_away_from_kinks(6, 5, seed=3)
    idx = random_indices(6, 5, seed=4)
    one_hot = torch.zeros(6, 5, dtype=torch.long)
    for b in range(6):
        one_hot[b, idx[b]] = 1
    a = margin_loss(lengths, idx)
    assert torch.allclose(a, margin_loss(lengths, one_hot), **TOL)
    assert torch.allclose(a, margin_loss(lengths, one_hot.to(DT)), **TOL)
    assert torch.allclose(a, margin_loss(lengths, one_hot.bool()), **TOL)
    assert torch.allclose(a, ref_margin_loss(lengths, one_hot), **TOL)


@pytest.mark.parametrize("m_pos, m_neg, lam", [(0.9, 0.1, 0.5), (0.95, 0.05, 1.0), (0.8, 0.3, 0.25)])
def test_margin_loss_hyperparameters_match_reference(m_pos, m_neg, lam):
    lengths = lengths_away_from_kinks(5, 4, seed=5, m_pos=m_pos, m_neg=m_neg)
    t = random_multi_hot(5, 4, seed=6)
    got = margin_loss(lengths, t, m_pos=m_pos, m_neg=m_neg, lam=lam)
    assert torch.allclose(got, ref_margin_loss(lengths, t, m_pos, m_neg, lam), **TOL)


# ----------------------------------------------------------------------------- hand-computed
def test_margin_loss_hand_computed():
    # lengths                    targets   per-class terms (m+ = .9, m- = .1, lam = .5)
    # sample 0: [0.95, 0.3, 0.05]  class 0   k0: max(0, .9-.95)^2 = 0
    #                                        k1: .5 * (.3-.1)^2  = .5 * .04 = .02
    #                                        k2: .5 * max(0, .05-.1)^2 = 0        -> 0.02
    # sample 1: [0.5, 0.2, 0.7]    class 2   k0: .5 * (.5-.1)^2 = .5 * .16 = .08
    #                                        k1: .5 * (.2-.1)^2 = .5 * .01 = .005
    #                                        k2: (.9-.7)^2 = .04                  -> 0.125
    # mean over the batch: (0.02 + 0.125) / 2 = 0.0725
    lengths = torch.tensor([[0.95, 0.3, 0.05], [0.5, 0.2, 0.7]], dtype=DT)
    targets = torch.tensor([0, 2])
    assert math.isclose(margin_loss(lengths, targets).item(), 0.0725, rel_tol=1e-12)
    # same through the scalar helper (and the matrix form of the targets)
    by_hand = sum(margin_loss_scalar(lengths[b, k].item(), k == int(targets[b]))
                  for b in range(2) for k in range(3)) / 2
    assert math.isclose(by_hand, 0.0725, rel_tol=1e-12)
    matrix = torch.tensor([[1, 0, 0], [0, 0, 1]])
    assert math.isclose(margin_loss(lengths, matrix).item(), 0.0725, rel_tol=1e-12)


def test_margin_loss_hand_computed_multi_hot():
    # sample 0: [0.6, 0.95, 0.4] present {0, 1}: (.9-.6)^2 = .09; 0; .5 * (.4-.1)^2 = .045 -> .135
    # sample 1: [0.2, 0.05, 0.8] present {}:      .5*.01 = .005; 0; .5 * .49 = .245     -> .25
    # mean: (.135 + .25) / 2 = .1925
    lengths = torch.tensor([[0.6, 0.95, 0.4], [0.2, 0.05, 0.8]], dtype=DT)
    targets = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert math.isclose(margin_loss(lengths, targets).item(), 0.1925, rel_tol=1e-12)


def test_margin_loss_sums_classes_and_averages_samples():
    # Discriminates the reduction: duplicating the batch leaves the loss unchanged (mean over
    # samples), duplicating the classes doubles it (sum over classes).
    lengths = lengths_away_from_kinks(3, 4, seed=7)
    t = random_multi_hot(3, 4, seed=8)
    base = margin_loss(lengths, t)
    assert torch.allclose(margin_loss(torch.cat([lengths, lengths]), torch.cat([t, t])), base, **TOL)
    assert torch.allclose(margin_loss(torch.cat([lengths, lengths], 1), torch.cat([t, t], 1)),
                          2 * base, **TOL)


def test_margin_loss_zero_when_margins_met():
    lengths = torch.tensor([[0.95, 0.05, 0.0], [0.02, 0.9, 0.1]], dtype=DT)
    assert margin_loss(lengths, torch.tensor([0, 1])).item() == 0.0


def test_margin_loss_single_capsule_discriminator():
    # Jaiswal et al.'s one-capsule discriminator: length = P(real); L_M(D(x), 1), L_M(D(G(z)), 0)
    # written as [B, 1] targets.
    lengths = torch.tensor([[0.7], [0.3]], dtype=DT)
    real = margin_loss(lengths, torch.ones(2, 1))
    fake = margin_loss(lengths, torch.zeros(2, 1))
    assert math.isclose(real.item(), ((0.9 - 0.7) ** 2 + (0.9 - 0.3) ** 2) / 2, rel_tol=1e-12)
    assert math.isclose(fake.item(), 0.5 * ((0.7 - 0.1) ** 2 + (0.3 - 0.1) ** 2) / 2, rel_tol=1e-12)
    # and the class-index form [B] with K = 1 (every sample is class 0 = "present")
    assert math.isclose(margin_loss(lengths, torch.zeros(2, dtype=torch.long)).item(),
                        real.item(), rel_tol=1e-12)


def test_margin_loss_keeps_dtype():
    lengths = lengths_away_from_kinks(2, 3, seed=9)
    assert margin_loss(lengths, torch.tensor([0, 1])).dtype == DT
    assert margin_loss(lengths.float(), torch.tensor([0, 1])).dtype == torch.float32


# ----------------------------------------------------------------------------- gradients
def test_gradcheck_margin_loss_indices():
    lengths = lengths_away_from_kinks(4, 5, seed=10).requires_grad_()
    t = random_indices(4, 5, seed=11)
    assert gradcheck(lambda x: margin_loss(x, t), (lengths,))


def test_gradcheck_margin_loss_multi_hot():
    lengths = lengths_away_from_kinks(4, 5, seed=12).requires_grad_()
    t = random_multi_hot(4, 5, seed=13)
    assert gradcheck(lambda x: margin_loss(x, t), (lengths,))


def test_margin_loss_gradient_matches_reference():
    x0 = lengths_away_from_kinks(3, 4, seed=14)
    t = random_multi_hot(3, 4, seed=15)
    a = x0.clone().requires_grad_()
    margin_loss(a, t).backward()
    b = x0.clone().requires_grad_()
    ref_margin_loss(b, t).backward()
    assert torch.allclose(a.grad, b.grad, **TOL)


def test_margin_loss_gradient_hand_computed():
    # d/dl of T (m+ - l)^2 = -2 (m+ - l) inside the margin; of lam (l - m-)^2 = 2 lam (l - m-);
    # divided by B = 1.
    lengths = torch.tensor([[0.5, 0.3, 0.05, 0.95]], dtype=DT, requires_grad=True)
    margin_loss(lengths, torch.tensor([[1, 0, 0, 1]])).backward()
    expected = torch.tensor([[-2 * 0.4, 2 * 0.5 * 0.2, 0.0, 0.0]], dtype=DT)
    assert torch.allclose(lengths.grad, expected, **TOL)


# ----------------------------------------------------------------------------- target handling
def test_as_target_matrix_indices_to_one_hot():
    m = as_target_matrix(torch.tensor([2, 0, 1]), 3)
    assert m.shape == (3, 3)
    assert m.is_floating_point()
    assert torch.equal(m, torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=m.dtype))


def test_as_target_matrix_matrix_passes_through_as_float():
    # Docstring: "a [B, K] 0/1 matrix passes through (as float)".
    t = torch.tensor([[1, 0, 1], [0, 0, 0]])
    m = as_target_matrix(t, 3)
    assert m.is_floating_point(), f"expected a float matrix, got {m.dtype}"
    assert torch.equal(m, t.to(m.dtype))
    assert as_target_matrix(t.bool(), 3).is_floating_point()


def test_as_target_matrix_rejects_bad_shapes():
    with pytest.raises(ValueError):
        as_target_matrix(torch.zeros(2, 4), 3)
    with pytest.raises(ValueError):
        as_target_matrix(torch.zeros(2, 3, 1), 3)
    with pytest.raises(ValueError):
        margin_loss(torch.rand(2, 3, dtype=DT), torch.zeros(2, 4))
