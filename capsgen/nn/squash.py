"""Capsule non-linearities.

All three functions put the epsilon *inside* the square root, so the norm of a
zero vector is sqrt(eps) > 0 and every gradient stays finite at s = 0 (a common
bug is ``s / (norm + eps)``, whose norm term has an infinite derivative at 0).
"""
from __future__ import annotations

import torch

EPS = 1e-8


def safe_norm(s: torch.Tensor, dim: int = -1, keepdim: bool = False, eps: float = EPS) -> torch.Tensor:
    """Euclidean length sqrt(sum s^2 + eps) along ``dim``; differentiable at 0."""
    return torch.sqrt((s * s).sum(dim=dim, keepdim=keepdim) + eps)


def squash(s: torch.Tensor, dim: int = -1, eps: float = EPS) -> torch.Tensor:
    """Sabour et al.'s squash: ||s||^2 / (1 + ||s||^2) * s / ||s||.

    Shape-preserving; ``dim`` holds the capsule's pose dimensions. Output lengths lie in [0, 1).
    """
    n2 = (s * s).sum(dim=dim, keepdim=True)
    # n2 / (1 + n2) / sqrt(n2 + eps): one fused scale factor per capsule.
    return s * (n2 / ((1.0 + n2) * torch.sqrt(n2 + eps)))


def squash_exp(s: torch.Tensor, dim: int = -1, eps: float = EPS) -> torch.Tensor:
    """Exponential squash of the G-CapsNet paper: (1 - exp(-||s||)) * s / ||s||."""
    n = safe_norm(s, dim=dim, keepdim=True, eps=eps)
    return s * (-torch.expm1(-n) / n)


def unsquash(v: torch.Tensor, dim: int = -1, eps: float = EPS) -> torch.Tensor:
    """Inverse of :func:`squash`: maps a vector of length r in [0, 1) back to length sqrt(r / (1 - r)).

    Lengths are clamped just below 1 (where the inverse diverges). unsquash(squash(s)) == s up to
    the epsilon.
    """
    r = safe_norm(v, dim=dim, keepdim=True, eps=eps)
    r = r.clamp(max=1.0 - 1e-6)
    # s = v / r * sqrt(r / (1 - r)) = v / sqrt(r (1 - r))
    return v / torch.sqrt(r * (1.0 - r))


SQUASHES = {"sabour": squash, "exp": squash_exp}


def get_squash(name: str):
    """Look up a squash function by name ('sabour' or 'exp')."""
    try:
        return SQUASHES[name]
    except KeyError:
        raise ValueError(f"unknown squash {name!r}; choose one of {sorted(SQUASHES)}") from None
