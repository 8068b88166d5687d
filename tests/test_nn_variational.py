"""capsgen.nn.variational (Huang et al.'s variational capsules) against loop references.

KL to the prior (eq. 2, as a divergence), the KL margin loss (eq. 3), masks, reparameterised
samples, reconstruction (eq. 4) and LSGAN (eq. 5) losses; gradients by gradcheck in float64.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from capsgen.nn.variational import (DEFAULT_KL_LAMBDA, DEFAULT_KL_MARGIN, capsule_kl, kl_margin_loss,
                                    lsgan_d_loss, lsgan_g_loss, mask_capsules, min_kl_mask,
                                    predict_from_kl, reconstruction_loss, reparameterize,
                                    sample_prior_capsules, target_mask, training_mask)

try:
    from reference_variational import (gaussian_kl_closed_form_check, ref_bce, ref_capsule_kl,
                                       ref_kl_margin_loss, ref_min_kl_mask, ref_mse, ref_reparameterize)
except ImportError:  # tests/ imported as a package
    from tests.reference_variational import (gaussian_kl_closed_form_check, ref_bce, ref_capsule_kl,
                                             ref_kl_margin_loss, ref_min_kl_mask, ref_mse,
                                             ref_reparameterize)

DT = torch.float64
TOL = dict(rtol=1e-12, atol=1e-12)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mu_logvar(shape, seed):
    g = gen(seed)
    return torch.randn(*shape, generator=g, dtype=DT) * 1.5, torch.randn(*shape, generator=g, dtype=DT)


def kl_away_from_margin(shape, seed, margin, gap=0.05):
    """Positive KL values spread around ``margin`` but at least ``gap`` from the hinge's kink."""
    kl = torch.rand(*shape, generator=gen(seed), dtype=DT) * 2 * margin
    close = (kl - margin).abs() < gap
    return torch.where(close, kl + 3 * gap, kl)


# ----------------------------------------------------------------------------- KL (eq. 2)
@pytest.mark.parametrize("B, N, D", [(1, 1, 1), (3, 10, 16), (2, 4, 3)])
def test_capsule_kl_matches_reference(B, N, D):
    mu, logvar = mu_logvar((B, N, D), seed=B * N + D)
    assert torch.allclose(capsule_kl(mu, logvar), ref_capsule_kl(mu, logvar), **TOL)


def test_capsule_kl_attribute_layout_is_per_capsule():
    mu, logvar = mu_logvar((2, 5, 2, 4), seed=1)
    got = capsule_kl(mu, logvar)
    assert got.shape == (2, 5, 2)
    want = ref_capsule_kl(mu.reshape(2, 10, 4), logvar.reshape(2, 10, 4)).reshape(2, 5, 2)
    assert torch.allclose(got, want, **TOL)


def test_capsule_kl_textbook_values_zero_at_prior_and_nonnegative():
    for m, s in [(0.0, 1.0), (1.0, 1.0), (-2.0, 0.5), (0.3, 3.0)]:
        mu = torch.tensor([[[m]]], dtype=DT)
        logvar = torch.tensor([[[2 * math.log(s)]]], dtype=DT)
        assert capsule_kl(mu, logvar).item() == pytest.approx(gaussian_kl_closed_form_check(m, s), abs=1e-12)
    assert capsule_kl(torch.zeros(2, 3, 5, dtype=DT), torch.zeros(2, 3, 5, dtype=DT)).abs().max() == 0
    mu, logvar = mu_logvar((4, 6, 8), seed=2)
    assert (capsule_kl(mu, logvar) > 0).all()


def test_capsule_kl_gradcheck():
    mu, logvar = mu_logvar((2, 3, 4), seed=3)
    assert gradcheck(capsule_kl, (mu.requires_grad_(), logvar.requires_grad_()))


def test_capsule_kl_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        capsule_kl(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5))


# ----------------------------------------------------------------------------- margin loss (eq. 3)
@pytest.mark.parametrize("B, K, margin, lam", [(1, 1, 1.0, 0.5), (5, 10, DEFAULT_KL_MARGIN, DEFAULT_KL_LAMBDA),
                                               (4, 3, 2.5, 1.0), (3, 7, 10.0, 0.1)])
def test_kl_margin_loss_class_indices_match_reference(B, K, margin, lam):
    kl = kl_away_from_margin((B, K), seed=B + K, margin=margin)
    labels = torch.randint(0, K, (B,), generator=gen(B * K))
    present = torch.zeros(B, K)
    present[torch.arange(B), labels] = 1
    want = ref_kl_margin_loss(kl, present, margin, lam)
    assert torch.allclose(kl_margin_loss(kl, labels, margin, lam), want, **TOL)
    assert torch.allclose(kl_margin_loss(kl, present, margin, lam), want, **TOL)


def test_kl_margin_loss_attribute_vector_is_index_of_present_capsule():
    B, A, m, lam = 4, 6, 5.0, 1.0
    kl = kl_away_from_margin((B, A, 2), seed=7, margin=m)
    attrs = torch.randint(0, 2, (B, A), generator=gen(8))
    present = torch.zeros(B, A, 2)
    for b in range(B):
        for a in range(A):
            present[b, a, 1 if attrs[b, a] == 1 else 0] = 1  # index 1 = present, 0 = absent
    want = ref_kl_margin_loss(kl.reshape(B, -1), present.reshape(B, -1), m, lam)
    assert torch.allclose(kl_margin_loss(kl, attrs, m, lam), want, **TOL)
    assert torch.allclose(kl_margin_loss(kl, present, m, lam), want, **TOL)


def test_kl_margin_loss_hand_values():
    kl = torch.tensor([[0.5, 3.0, 12.0]], dtype=DT)
    # class 0 present: 0.5; class 1 absent: lam * (10 - 3) = 3.5; class 2 absent beyond margin: 0
    assert kl_margin_loss(kl, torch.tensor([0]), margin=10.0, lam=0.5).item() == pytest.approx(4.0)


def test_kl_margin_loss_gradcheck_through_kl():
    mu, logvar = mu_logvar((3, 4, 2), seed=9)
    labels = torch.tensor([0, 3, 1])
    # a margin between two KL values: some absent capsules inside it, some beyond, none at the kink
    kl0 = capsule_kl(mu, logvar).flatten().sort().values
    margin = float(kl0[5] + kl0[6]) / 2
    assert (kl0 - margin).abs().min() > 1e-4

    def f(m, lv):
        return kl_margin_loss(capsule_kl(m, lv), labels, margin, 0.5)

    assert gradcheck(f, (mu.requires_grad_(), logvar.requires_grad_()))


def test_target_mask_rejects_bad_targets():
    with pytest.raises(ValueError, match="0..9"):
        target_mask(torch.tensor([10]), (1, 10))
    with pytest.raises(ValueError, match="indices of shape"):
        target_mask(torch.zeros(2, 3), (2, 10))


# ----------------------------------------------------------------------------- masks and prediction
def test_min_kl_mask_and_prediction_match_reference():
    kl = torch.rand(5, 4, 3, generator=gen(10), dtype=DT)
    mask = min_kl_mask(kl)
    assert torch.equal(mask, ref_min_kl_mask(kl))
    assert torch.equal(predict_from_kl(kl), ref_min_kl_mask(kl).argmax(-1))
    flat = kl[:, 0]   # class layout [B, K]
    assert torch.equal(min_kl_mask(flat), ref_min_kl_mask(flat[:, None])[:, 0])


def test_attribute_prediction_is_present_when_present_capsule_has_smaller_kl():
    kl = torch.rand(6, 7, 2, generator=gen(11))
    want = (kl[..., 1] < kl[..., 0]).long()
    assert torch.equal(predict_from_kl(kl), want)


def test_training_mask_label_and_min_kl():
    kl = torch.tensor([[3.0, 1.0, 2.0], [0.5, 4.0, 9.0]], requires_grad=True)
    labels = torch.tensor([0, 2])
    assert torch.equal(training_mask(kl, labels, "label"), torch.tensor([[1.0, 0, 0], [0, 0, 1]]))
    m = training_mask(kl, None, "min-kl")
    assert torch.equal(m, torch.tensor([[0.0, 1, 0], [1, 0, 0]]))
    assert not m.requires_grad
    with pytest.raises(ValueError, match="needs targets"):
        training_mask(kl, None, "label")
    with pytest.raises(ValueError, match="unknown mask"):
        training_mask(kl, labels, "argmax")


def test_mask_capsules_zeroes_all_but_active_and_passes_gradient_only_there():
    c = torch.randn(2, 3, 4, dtype=DT, requires_grad=True)
    mask = torch.tensor([[0.0, 1, 0], [1, 0, 0]], dtype=DT)
    out = mask_capsules(c, mask)
    for b in range(2):
        for k in range(3):
            assert torch.equal(out[b, k], c[b, k] if mask[b, k] else torch.zeros(4, dtype=DT))
    out.sum().backward()
    assert torch.equal(c.grad, mask[..., None].expand(2, 3, 4))
    with pytest.raises(ValueError, match="mask must be"):
        mask_capsules(c, torch.ones(2, 4))


# ----------------------------------------------------------------------------- reparameterisation
def test_reparameterize_matches_reference_with_the_generator_noise():
    mu, logvar = mu_logvar((2, 3, 4), seed=12)
    got = reparameterize(mu, logvar, gen(5))
    eps = torch.randn(2, 3, 4, generator=gen(5), dtype=DT)
    want = ref_reparameterize(mu.flatten(), logvar.flatten(), eps.flatten()).view(2, 3, 4)
    assert torch.allclose(got, want, **TOL)
    assert torch.equal(got, reparameterize(mu, logvar, gen(5)))         # same seed, same draw
    assert not torch.equal(got, reparameterize(mu, logvar, gen(6)))


def test_reparameterize_does_not_touch_global_rng_and_keeps_dtype():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    out = reparameterize(torch.zeros(3, 2, dtype=DT), torch.zeros(3, 2, dtype=DT), gen(1))
    assert torch.equal(before, torch.get_rng_state())
    assert out.dtype == DT and out.device == torch.device("cpu")


def test_reparameterize_moments():
    mu = torch.tensor([[1.0, -2.0]], dtype=DT).expand(20000, 2)
    logvar = torch.log(torch.tensor([[0.25, 4.0]], dtype=DT)).expand(20000, 2)
    c = reparameterize(mu, logvar, gen(13))
    assert torch.allclose(c.mean(0), torch.tensor([1.0, -2.0], dtype=DT), atol=0.05)
    assert torch.allclose(c.var(0), torch.tensor([0.25, 4.0], dtype=DT), rtol=0.05)


def test_reparameterize_gradcheck():
    mu, logvar = mu_logvar((2, 3, 2), seed=14)
    assert gradcheck(lambda m, lv: reparameterize(m, lv, gen(3)),
                     (mu.requires_grad_(), logvar.requires_grad_()))


def test_sample_prior_capsules_masked_standard_normal():
    mask = target_mask(torch.tensor([2] * 4000), (4000, 5), DT)
    z = sample_prior_capsules(mask, 3, gen(15))
    assert z.shape == (4000, 5, 3) and z.dtype == DT
    assert z[:, [0, 1, 3, 4]].abs().max() == 0
    active = z[:, 2]
    assert active.mean().abs() < 0.05 and (active.var() - 1).abs() < 0.06
    assert torch.equal(z, sample_prior_capsules(mask, 3, gen(15)))


# ----------------------------------------------------------------------------- image losses
def test_reconstruction_losses_match_reference_and_gradcheck():
    g = gen(16)
    x = torch.rand(3, 2, 2, 2, generator=g, dtype=DT)
    r = torch.rand(3, 2, 2, 2, generator=g, dtype=DT) * 0.9 + 0.05
    assert torch.allclose(reconstruction_loss(r, x, "mse"), ref_mse(r.flatten(1), x.flatten(1)), **TOL)
    assert torch.allclose(reconstruction_loss(r, x, "bce"), ref_bce(r.flatten(1), x.flatten(1)), **TOL)
    for kind in ("mse", "bce"):
        assert gradcheck(lambda rr, k=kind: reconstruction_loss(rr, x, k), (r.clone().requires_grad_(),))
    with pytest.raises(ValueError, match="unknown reconstruction"):
        reconstruction_loss(r, x, "l1")
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruction_loss(r[:2], x, "mse")


def test_lsgan_losses_hand_values_and_scales():
    real = torch.tensor([[1.0], [0.0]])      # (1-1)^2, (0-1)^2 -> mean 0.5, half 0.25
    fake = torch.tensor([[0.0], [2.0]])      # 0, 4 -> mean 2, half 1
    assert lsgan_d_loss(real, fake).item() == pytest.approx(1.25)
    assert lsgan_g_loss(fake).item() == pytest.approx(0.5 * (1 + 1) / 2)
    # a list of per-scale maps averages the per-scale losses
    real2, fake2 = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
    assert lsgan_d_loss([real, real2], [fake, fake2]).item() == pytest.approx(1.25 / 2)
    assert lsgan_g_loss([fake, fake2]).item() == pytest.approx((0.5 + 0.5) / 2)
    with pytest.raises(ValueError, match="real and"):
        lsgan_d_loss([real, real2], [fake])
    x = torch.randn(2, 1, 2, 2, dtype=DT, requires_grad=True)
    assert gradcheck(lambda a: lsgan_d_loss([a, a * 2], [a - 1, a]) + lsgan_g_loss(a), (x,))
