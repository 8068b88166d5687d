"""Routing by agreement (Sabour et al. 2017, procedure 1).

Shapes: ``u_hat`` [B, I, J, D] holds the prediction ("vote") of child capsule i for parent
capsule j. Coupling coefficients c_ij = softmax_j(b_ij) — the softmax runs over the
**parents** j (dim 2), so each child distributes one unit of vote among its parents. Several
popular public ports take it over the children i instead, which is a different algorithm.

Everything is batched: two einsums per iteration (weighted sum and agreement); the only
Python loop is over routing iterations.
"""
from __future__ import annotations

from typing import Callable

import torch

from capsgen.nn.squash import safe_norm, squash

AGREEMENTS = ("dot", "cosine")
NORMALIZE = ("parents", "children")


def dynamic_routing(
    u_hat: torch.Tensor,
    iterations: int = 3,
    agreement: str = "dot",
    grad_through_iterations: bool = True,
    squash_fn: Callable[[torch.Tensor], torch.Tensor] = squash,
    normalize: str = "parents",
    return_coupling: bool = False,
):
    """Route votes ``u_hat`` [B, I, J, D] to parent capsules ``v`` [B, J, D].

    Args:
        iterations: number of routing iterations r >= 1 (r = 1 means uniform coupling).
        agreement: "dot" — b_ij += <u_hat_ij, v_j> (Sabour); "cosine" — b_ij += cos(u_hat_ij, v_j)
            (used by the products-of-expert-capsules paper; the squash does not change it).
        grad_through_iterations: if True (the original TensorFlow code), gradients flow through
            the coupling coefficients of every iteration; if False, the inner iterations see a
            detached copy of ``u_hat`` and only the final weighted sum is differentiated (what
            several ports do; cheaper, and a different gradient).
        normalize: "parents" (Sabour: softmax over j) or "children" (softmax over i, the
            normalisation sum_i c_ij = 1 written in the products-of-experts paper).
        return_coupling: also return the final coupling coefficients c [B, I, J].

    With a single parent (J = 1) and normalize="parents", c == 1 and routing is a no-op.
    """
    if u_hat.dim() != 4:
        raise ValueError(f"u_hat must be [B, I, J, D], got shape {tuple(u_hat.shape)}")
    if iterations < 1:
        raise ValueError(f"routing iterations must be >= 1, got {iterations}")
    if agreement not in AGREEMENTS:
        raise ValueError(f"unknown agreement {agreement!r}; choose one of {AGREEMENTS}")
    if normalize not in NORMALIZE:
        raise ValueError(f"unknown normalize {normalize!r}; choose one of {NORMALIZE}")
    softmax_dim = 2 if normalize == "parents" else 1
    inner = u_hat if grad_through_iterations else u_hat.detach()
    if agreement == "cosine":
        inner_unit = inner / safe_norm(inner, keepdim=True)
    B, I, J, _ = u_hat.shape
    b = u_hat.new_zeros(B, I, J)
    for r in range(iterations):
        c = torch.softmax(b, dim=softmax_dim)
        last = r == iterations - 1
        s = torch.einsum("bij,bijd->bjd", c, u_hat if last else inner)
        v = squash_fn(s)
        if last:
            break
        if agreement == "dot":
            b = b + torch.einsum("bijd,bjd->bij", inner, v)
        else:
            # Direction from s, not from v: squash keeps the direction, but for short s the
            # length of v is ~||s||^2 and an epsilon would swamp it.
            s_unit = s / safe_norm(s, keepdim=True)
            b = b + torch.einsum("bijd,bjd->bij", inner_unit, s_unit)
    return (v, c) if return_coupling else v
