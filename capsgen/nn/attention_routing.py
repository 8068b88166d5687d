"""Self-attention routing: routing by agreement in one pass (after Mazzia et al. 2021, Efficient-CapsNet).

For votes u_hat_{j|i} (child i's prediction for parent j, D-dimensional), Efficient-CapsNet's
routing is, per parent j,

    A_j = U_j U_j^T / sqrt(D)                      U_j = [u_hat_{j|1}; ...; u_hat_{j|I}]  (I x D)
    c_ij = exp(sum_k A_j[i, k]) / sum_j' exp(sum_k A_j'[i, k])
    s_j = sum_i (c_ij + b_ij) u_hat_{j|i},         v_j = squash(s_j)

with b_ij a learnt log prior (here initialised to 0). A child is coupled to the parents whose
other votes agree with its own: agreement without iterations. Unlike trainable routing
(capsgen.nn.trainable_routing), c depends on the input, so the layer does not fold into one
linear map, and its dense twin (capsgen.nn.twins) differs from it by more than the squash.

The row sums of A need no I x I matrix: sum_k A_j[i, k] = <u_hat_{j|i}, sum_k u_hat_{j|k}> / sqrt(D),
one product with the parent's summed vote, so the whole routing costs O(B I J D) like one
iteration of dynamic routing. The softmax runs over the parents j (``normalize="parents"``, as in
capsgen's dynamic routing and our reading of the paper's equation: each child distributes one unit
of vote); ``"children"`` normalises over i instead. D is the vote dimension.

Layout: votes [B, I, J, D] in, laid out [B, J, I, D] inside (as capsgen.nn.routing does, so the
two products read memory in order); output [B, J, D], couplings [B, I, J].
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from capsgen.nn.layers import capsule_votes
from capsgen.nn.squash import get_squash, squash

NORMALIZE = ("parents", "children")


def self_attention_routing(u_hat: torch.Tensor, log_prior: torch.Tensor | None = None,
                           squash_fn: Callable[[torch.Tensor], torch.Tensor] = squash,
                           normalize: str = "parents", return_coupling: bool = False):
    """Route votes ``u_hat`` [B, I, J, D] to parents ``v`` [B, J, D] in one pass (module docstring).

    ``log_prior`` [I, J] (b_ij) is added to the couplings before the weighted sum; None = 0.
    ``return_coupling`` also returns c [B, I, J] (without the prior).
    """
    if u_hat.dim() != 4:
        raise ValueError(f"u_hat must be [B, I, J, D], got shape {tuple(u_hat.shape)}")
    if normalize not in NORMALIZE:
        raise ValueError(f"unknown normalize {normalize!r}; choose one of {NORMALIZE}")
    B, I, J, D = u_hat.shape
    u = u_hat.transpose(1, 2).contiguous()                           # [B, J, I, D]
    total = u.sum(dim=2, keepdim=True)                               # [B, J, 1, D]: sum_k u_hat_{j|k}
    agreement = torch.matmul(u, total.transpose(-1, -2)).squeeze(-1) / math.sqrt(D)   # [B, J, I]
    c = torch.softmax(agreement, dim=1 if normalize == "parents" else 2)             # [B, J, I]
    weights = c if log_prior is None else c + log_prior.t()
    s = torch.matmul(weights.unsqueeze(2), u).squeeze(2)             # [B, J, D]
    v = squash_fn(s)
    return (v, c.transpose(1, 2)) if return_coupling else v


class AttentionDenseCapsules(nn.Module):
    """Fully connected capsule layer with self-attention routing: [B, I, Din] -> [B, J, Dout].

    Transforms W_ij [I, J, Dout, Din] as in :class:`~capsgen.nn.layers.DenseCapsules` (std
    ``init_std``), the log prior b [I, J] starting at 0 (so the layer starts as pure agreement).
    """

    def __init__(self, in_capsules: int, in_dim: int, out_capsules: int, out_dim: int,
                 squash: str = "sabour", init_std: float = 0.01, normalize: str = "parents"):
        super().__init__()
        if normalize not in NORMALIZE:
            raise ValueError(f"unknown normalize {normalize!r}; choose one of {NORMALIZE}")
        self.weight = nn.Parameter(torch.randn(in_capsules, out_capsules, out_dim, in_dim) * init_std)
        self.log_prior = nn.Parameter(torch.zeros(in_capsules, out_capsules))
        self.normalize = normalize
        self.squash = get_squash(squash)

    def forward(self, u: torch.Tensor, return_coupling: bool = False):
        I, J, Dout, Din = self.weight.shape
        if u.dim() != 3 or u.shape[1:] != (I, Din):
            raise ValueError(f"AttentionDenseCapsules expects [B, {I}, {Din}], got {tuple(u.shape)}")
        return self_attention_routing(capsule_votes(u, self.weight), self.log_prior, self.squash,
                                      self.normalize, return_coupling)
