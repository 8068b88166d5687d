"""Slow, independent references for variational capsules (Huang et al.), for tests only.

Written straight from the paper's equations as Python loops over samples, capsules and
dimensions; torch only for scalar arithmetic (so autograd can differentiate through them).
Nothing here imports capsgen.

- eq. 2 (with the sign of a divergence; the printed equation is -KL):
  KL(N(mu, sigma^2) || N(0, 1)) = -1/2 sum_d (1 + log sigma_d^2 - mu_d^2 - sigma_d^2);
- eq. 3: L_k = T_k KL_k + lambda (1 - T_k) max(0, m - KL_k), L_c = sum_k L_k (then the batch mean);
- §3.2: c = mu + eps * sigma; all capsules zeroed except the one of least KL;
- eq. 4: L_mse = 1/2 sum ||x_r - x||^2 (per image, then the batch mean).
"""
from __future__ import annotations

import math

import torch


def ref_kl_one(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL of ONE capsule, mu and logvar 1-D vectors of D numbers."""
    total = torch.zeros((), dtype=mu.dtype)
    for d in range(mu.shape[0]):
        sigma2 = torch.exp(logvar[d])
        total = total + (1.0 + torch.log(sigma2) - mu[d] * mu[d] - sigma2)
    return -0.5 * total


def ref_capsule_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL of every capsule: [B, N, D] -> [B, N] (callers flatten the capsule layout to N)."""
    B, N, _ = mu.shape
    return torch.stack([torch.stack([ref_kl_one(mu[b, n], logvar[b, n]) for n in range(N)])
                        for b in range(B)])


def ref_kl_margin_loss(kl: torch.Tensor, present: torch.Tensor, margin: float, lam: float) -> torch.Tensor:
    """Eq. 3 with scalar loops: kl [B, N], present 0/1 [B, N]; the mean over b of sum over k."""
    B, N = kl.shape
    total = torch.zeros((), dtype=kl.dtype)
    for b in range(B):
        for k in range(N):
            t = float(present[b, k])
            hinge = margin - kl[b, k]
            if float(hinge) < 0.0:
                hinge = hinge * 0.0
            total = total + t * kl[b, k] + lam * (1.0 - t) * hinge
    return total / B


def ref_min_kl_mask(kl: torch.Tensor) -> torch.Tensor:
    """kl [B, G, K] -> 0/1 [B, G, K]: in each group g, 1 for the capsule of least KL."""
    B, G, K = kl.shape
    out = torch.zeros(B, G, K, dtype=kl.dtype)
    for b in range(B):
        for g in range(G):
            best = 0
            for k in range(1, K):
                if float(kl[b, g, k]) < float(kl[b, g, best]):
                    best = k
            out[b, g, best] = 1.0
    return out


def ref_reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """c = mu + eps * sigma element by element, for flat [M] tensors."""
    return torch.stack([mu[i] + eps[i] * torch.sqrt(torch.exp(logvar[i])) for i in range(mu.shape[0])])


def ref_mse(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Eq. 4 per image, averaged over the batch: recon, x [B, P]."""
    B, P = x.shape
    total = torch.zeros((), dtype=x.dtype)
    for b in range(B):
        for p in range(P):
            diff = recon[b, p] - x[b, p]
            total = total + 0.5 * diff * diff
    return total / B


def ref_bce(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-sum (x log r + (1 - x) log(1 - r)) per image, averaged over the batch: [B, P]."""
    B, P = x.shape
    total = torch.zeros((), dtype=x.dtype)
    for b in range(B):
        for p in range(P):
            total = total - (x[b, p] * torch.log(recon[b, p]) + (1 - x[b, p]) * torch.log(1 - recon[b, p]))
    return total / B


def gaussian_kl_closed_form_check(mu: float, sigma: float) -> float:
    """KL(N(mu, sigma^2) || N(0, 1)) for one dimension, from the textbook formula
    log(1 / sigma) + (sigma^2 + mu^2) / 2 - 1/2 (a second, differently written derivation)."""
    return math.log(1.0 / sigma) + (sigma * sigma + mu * mu) / 2.0 - 0.5


__all__ = ["ref_kl_one", "ref_capsule_kl", "ref_kl_margin_loss", "ref_min_kl_mask",
           "ref_reparameterize", "ref_mse", "ref_bce", "gaussian_kl_closed_form_check"]
