"""GAN objectives, each a small function of the discriminator's outputs.

A discriminator returns ``out`` [B, K] and says what it holds (``kind``, see
:mod:`capsgen.models.gan_nets`): ``"logit"`` (K = 1) or capsule ``"length"`` (K = 1: P(real);
K = 2: capsules (real, fake)). The views below turn any of them into what an objective needs:

- :func:`p_real` [B]: the probability of "real". Two capsules give
  ||v_real|| / (||v_real|| + ||v_fake||), so P(real) > 1/2 exactly when the real capsule is
  the longer one (the usual CapsNet decision);
- :func:`real_logit` [B]: log P(real) - log P(fake), for binary cross-entropy;
- :func:`as_lengths` [B, K]: what the margin loss reads (a logit becomes sigmoid(logit)).

Objectives (the D loss is a sum of the real and fake terms, each a batch mean, as eq. 1 of
Goodfellow et al. and eq. 3 of Jaiswal et al. are sums of two expectations):

- ``bce``: D minimises -E log D(x) - E log(1 - D(G(z))); G minimises the non-saturating
  -E log D(G(z)) (Goodfellow et al.'s practical variant; Karmakar's figure 7 writes the
  saturating form).
- ``margin`` (Jaiswal et al. eq. 3): D minimises L_M(D(x), T=1) + L_M(D(G(z)), T=0); G minimises
  L_M(D(G(z)), T=1), which drops the down-weighting factor lambda from the generator's loss.
- ``lsgan`` (Mao et al., a = 0, b = c = 1): D minimises 1/2 E (D(x) - 1)^2 + 1/2 E D(G(z))^2;
  G minimises 1/2 E (D(G(z)) - 1)^2, on the raw logit or on P(real) for capsule outputs.
- ``hinge`` (Lim & Ye; Miyato et al. 2018): D minimises E max(0, 1 - r(x)) + E max(0, 1 + r(G(z)));
  G minimises -E r(G(z)), where r is :func:`real_logit` (the logit, or a capsule output's
  log-odds log P(real) - log P(fake)).
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F

from capsgen.nn import margin_loss

REAL, FAKE = 0, 1        # capsule order of the two-capsule discriminator
_EPS = 1e-6              # keeps log P away from log 0 for capsule lengths


def _check(out: torch.Tensor, kind: str) -> None:
    if out.dim() != 2 or not ((kind == "logit" and out.shape[1] == 1)
                              or (kind == "length" and out.shape[1] in (1, 2))):
        raise ValueError(f"discriminator output of kind {kind!r} must be [B, 1] (or [B, 2] for "
                         f"two capsules), got {tuple(out.shape)}")


def p_real(out: torch.Tensor, kind: str) -> torch.Tensor:
    """P(real) [B] from a discriminator output [B, K]."""
    _check(out, kind)
    if kind == "logit":
        return torch.sigmoid(out[:, 0])
    if out.shape[1] == 1:
        return out[:, 0]
    return out[:, REAL] / (out[:, REAL] + out[:, FAKE]).clamp_min(_EPS)


def real_logit(out: torch.Tensor, kind: str) -> torch.Tensor:
    """log P(real) - log P(fake) [B] (the argument of a sigmoid giving :func:`p_real`)."""
    _check(out, kind)
    if kind == "logit":
        return out[:, 0]
    if out.shape[1] == 1:
        p = out[:, 0].clamp(_EPS, 1 - _EPS)
        return torch.log(p) - torch.log1p(-p)
    return torch.log(out[:, REAL].clamp_min(_EPS)) - torch.log(out[:, FAKE].clamp_min(_EPS))


def as_lengths(out: torch.Tensor, kind: str) -> torch.Tensor:
    """Capsule-length view [B, K] in [0, 1] for the margin loss."""
    _check(out, kind)
    return torch.sigmoid(out) if kind == "logit" else out


def score(out: torch.Tensor, kind: str) -> torch.Tensor:
    """What LSGAN regresses [B]: the raw logit, or P(real) for capsule outputs."""
    return out[:, 0] if kind == "logit" else p_real(out, kind)


# ------------------------------------------------------------------------------------- BCE
def bce_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-mean log sigmoid(real) - mean log(1 - sigmoid(fake)); logits [B]."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def bce_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss -mean log sigmoid(fake); logits [B]."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


# ---------------------------------------------------------------------------------- margin
def _targets(lengths: torch.Tensor, real: bool) -> torch.Tensor:
    """T for the margin loss: presence of the one capsule, or one-hot over (real, fake)."""
    if lengths.shape[1] == 1:
        return torch.full_like(lengths, 1.0 if real else 0.0)
    return torch.full((lengths.shape[0],), REAL if real else FAKE, dtype=torch.long,
                      device=lengths.device)


def margin_d_loss(real_lengths: torch.Tensor, fake_lengths: torch.Tensor, m_pos: float = 0.9,
                  m_neg: float = 0.1, lam: float = 0.5) -> torch.Tensor:
    """L_M(D(x), T=1) + L_M(D(G(z)), T=0) (Jaiswal et al. eq. 3); lengths [B, 1] or [B, 2]."""
    return (margin_loss(real_lengths, _targets(real_lengths, True), m_pos, m_neg, lam)
            + margin_loss(fake_lengths, _targets(fake_lengths, False), m_pos, m_neg, lam))


def margin_g_loss(fake_lengths: torch.Tensor, m_pos: float = 0.9, m_neg: float = 0.1,
                  lam: float = 0.5) -> torch.Tensor:
    """L_M(D(G(z)), T=1); lengths [B, 1] or [B, 2]."""
    return margin_loss(fake_lengths, _targets(fake_lengths, True), m_pos, m_neg, lam)


# ----------------------------------------------------------------------------------- LSGAN
def lsgan_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """1/2 mean (real - 1)^2 + 1/2 mean fake^2; scores [B]."""
    return 0.5 * (F.mse_loss(real_scores, torch.ones_like(real_scores))
                  + F.mse_loss(fake_scores, torch.zeros_like(fake_scores)))


def lsgan_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """1/2 mean (fake - 1)^2; scores [B]."""
    return 0.5 * F.mse_loss(fake_scores, torch.ones_like(fake_scores))


# ----------------------------------------------------------------------------------- hinge
def hinge_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """mean max(0, 1 - real) + mean max(0, 1 + fake); scores [B]."""
    return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()


def hinge_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """-mean fake; scores [B]."""
    return -fake_scores.mean()


OBJECTIVES = ("bce", "margin", "lsgan", "hinge")

Loss = Callable[..., torch.Tensor]


def objective(name: str, m_pos: float = 0.9, m_neg: float = 0.1,
              lam: float = 0.5) -> tuple[Callable, Loss, Loss]:
    """(view, d_loss, g_loss) for an objective: view(out, kind) feeds both losses."""
    if name == "bce":
        return real_logit, bce_d_loss, bce_g_loss
    if name == "margin":
        kw = dict(m_pos=m_pos, m_neg=m_neg, lam=lam)
        return as_lengths, partial(margin_d_loss, **kw), partial(margin_g_loss, **kw)
    if name == "lsgan":
        return score, lsgan_d_loss, lsgan_g_loss
    if name == "hinge":
        return real_logit, hinge_d_loss, hinge_g_loss
    raise ValueError(f"unknown objective {name!r}; choose one of: {', '.join(OBJECTIVES)}")
