"""The non-capsule counterparts of a variational capsule network's capsule part, for its twin: a
conditional VAE with the same encoder and decoder and one Gaussian latent (``capsgen train vcaps
--twin``; see :mod:`capsgen.nn.twins` for what a twin is).

In the capsule model (Huang et al.) an encoder head's 2 * P * D numbers are the means and
log-variances of P Gaussian capsules of D dimensions (P = K classes, or A attributes x
(absent, present)); each capsule's KL to the prior says whether its entity is present, and the
decoder reads the capsules masked to the present ones. The twin keeps that head and reads it as
ONE Gaussian latent of P * D dimensions (one posterior, one KL), predicts the class or the
attributes with a class head beside it, and gives the decoder the latent plus the condition:

- :class:`GaussianLatent` for :class:`~capsgen.nn.variational.VariationalCapsules`: the same
  numbers in the same order read as (mu, logvar) [B, P * D], plus class logits [B, G] from a
  class head on the head's input (G = K classes or A attributes);
- :func:`conditioned_first_layer`: the decoder's first layer on [latent, condition], written as
  its own Linear on the latent (the capsule decoder's first layer, the same shape) plus a Linear
  without bias on the condition (one-hot class or attribute vector) — exactly the usual CVAE
  concatenation W [z; c] = W_z z + W_c c, with W_z kept where the capsule decoder has it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn


class GaussianLatent(nn.Module):
    """The twin of :class:`~capsgen.nn.variational.VariationalCapsules`: one diagonal Gaussian
    latent instead of ``caps`` capsules, and class logits from ``classifier``.

    ``head_out`` as for VariationalCapsules (flat, means first; or ``grouped``, one group per
    entity, each (mean | log-variance, rest)); ``features`` is the head's input, which
    ``classifier`` maps to [B, G] (or [B, G, 1, 1]). forward -> (mu, logvar [B, prod(caps) * dim],
    logits [B, G]); a grouped head's latent is its groups' means (log-variances) one after another.
    """

    def __init__(self, caps: Sequence[int], dim: int, classifier: nn.Module, grouped: bool = False):
        super().__init__()
        self.caps, self.dim, self.grouped = tuple(int(c) for c in caps), int(dim), grouped
        self.latent_dim = math.prod(self.caps) * self.dim
        self.classifier = classifier

    def forward(self, head_out: torch.Tensor, features: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B = head_out.shape[0]
        if self.grouped:
            out = head_out.view(B, self.caps[0], 2, -1)
            mu, logvar = out[:, :, 0].reshape(B, -1), out[:, :, 1].reshape(B, -1)
        else:
            out = head_out.view(B, 2, self.latent_dim)
            mu, logvar = out[:, 0], out[:, 1]
        return mu, logvar, self.classifier(features).flatten(1)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, grouped={self.grouped}"


def conditioned_first_layer(first: nn.Linear, condition: nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
    """first(z) + condition(c) for inputs [B, L + G] = [z, c] (z: the latent, c: the condition)
    -> [B, first.out_features], before the first layer's activation."""
    n = condition.in_features
    return first(inputs[:, :-n]) + condition(inputs[:, -n:])


__all__ = ["GaussianLatent", "conditioned_first_layer"]
