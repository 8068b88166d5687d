"""GAN objectives against hand computations."""
from __future__ import annotations

import math

import pytest
import torch

from capsgen.models.gan.losses import (as_lengths, bce_d_loss, bce_g_loss, lsgan_d_loss, lsgan_g_loss,
                                       margin_d_loss, margin_g_loss, objective, p_real, real_logit)

DT = torch.float64


def t(*v):
    return torch.tensor(v, dtype=DT)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_bce_by_hand():
    real, fake = t(2.0, -1.0), t(0.5, -3.0)
    # -log sigmoid(l) = softplus(-l); -log(1 - sigmoid(l)) = softplus(l)
    d = (softplus(-2) + softplus(1)) / 2 + (softplus(0.5) + softplus(-3)) / 2
    g = (softplus(-0.5) + softplus(3)) / 2
    assert bce_d_loss(real, fake).item() == pytest.approx(d, rel=1e-12)
    assert bce_g_loss(fake).item() == pytest.approx(g, rel=1e-12)


def test_bce_generator_loss_does_not_saturate():
    # A confident discriminator (logit -10 on a fake) still gives the generator a gradient of ~-1/B.
    fake = t(-10.0, -10.0).requires_grad_()
    bce_g_loss(fake).backward()
    assert fake.grad.tolist() == pytest.approx([-0.5, -0.5], rel=1e-4)


def test_margin_one_capsule_by_hand():
    real, fake = t(0.95, 0.5)[:, None], t(0.05, 0.3)[:, None]
    # T=1: max(0, 0.9 - |v|)^2 -> [0, 0.16]; T=0: 0.5 max(0, |v| - 0.1)^2 -> [0, 0.02]
    assert margin_d_loss(real, fake).item() == pytest.approx(0.16 / 2 + 0.02 / 2, rel=1e-12)
    # G: L_M(D(G(z)), T=1) = [0.85^2, 0.6^2] -- no lambda
    assert margin_g_loss(fake).item() == pytest.approx((0.85 ** 2 + 0.6 ** 2) / 2, rel=1e-12)


def test_margin_two_capsules_by_hand():
    real = t(0.95, 0.2)[None, :]     # capsules (real, fake) of one real image
    fake = t(0.3, 0.7)[None, :]      # ... of one generated image
    d_real = 0.0 + 0.5 * (0.2 - 0.1) ** 2             # T = (1, 0)
    d_fake = 0.5 * (0.3 - 0.1) ** 2 + (0.9 - 0.7) ** 2  # T = (0, 1)
    assert margin_d_loss(real, fake).item() == pytest.approx(d_real + d_fake, rel=1e-12)
    g = (0.9 - 0.3) ** 2 + 0.5 * (0.7 - 0.1) ** 2      # fakes with T = (1, 0)
    assert margin_g_loss(fake).item() == pytest.approx(g, rel=1e-12)


def test_lsgan_by_hand():
    real, fake = t(0.8, 1.5), t(0.2, -0.4)
    assert lsgan_d_loss(real, fake).item() == pytest.approx(0.5 * (0.04 + 0.25) / 2 + 0.5 * (0.04 + 0.16) / 2)
    assert lsgan_g_loss(fake).item() == pytest.approx(0.5 * (0.64 + 1.96) / 2)


def test_views_agree():
    logits = t(-2.0, 0.0, 3.0)[:, None]
    one = t(0.2, 0.5, 0.9)[:, None]
    two = torch.stack([t(0.2, 0.5, 0.9), t(0.6, 0.5, 0.1)], 1)
    assert p_real(logits, "logit").tolist() == pytest.approx([1 / (1 + math.e ** 2), 0.5, 1 / (1 + math.e ** -3)])
    assert p_real(one, "length").tolist() == pytest.approx([0.2, 0.5, 0.9])
    assert p_real(two, "length").tolist() == pytest.approx([0.25, 0.5, 0.9])
    for out, kind in ((logits, "logit"), (one, "length"), (two, "length")):
        torch.testing.assert_close(torch.sigmoid(real_logit(out, kind)), p_real(out, kind))
    torch.testing.assert_close(as_lengths(logits, "logit"), torch.sigmoid(logits))
    with pytest.raises(ValueError, match="must be"):
        p_real(torch.zeros(3, 3, dtype=DT), "length")


def test_objective_dispatch():
    real, fake = t(0.95, 0.5)[:, None], t(0.05, 0.3)[:, None]
    view, d_loss, g_loss = objective("margin", lam=1.0)
    d = d_loss(view(real, "length"), view(fake, "length"))
    assert d.item() == pytest.approx(0.16 / 2 + 0.04 / 2)
    view, d_loss, _ = objective("bce")
    assert d_loss(view(real, "length"), view(fake, "length")).item() == pytest.approx(
        -(math.log(0.95) + math.log(0.5)) / 2 - (math.log(0.95) + math.log(0.7)) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="unknown objective"):
        objective("wgan")
