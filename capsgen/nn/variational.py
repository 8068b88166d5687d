"""Variational capsules (Huang et al.): KL-to-prior as presence, the KL margin loss, masking.

Each entity k has a capsule q(c_k | x) = N(mu_k, diag(sigma_k^2)) with D dimensions; the
encoder gives ``mu`` and ``logvar`` = log sigma^2 of the same shape ``[B, *caps, D]``, where
``caps`` is the capsule layout:

- class mode (digits, clothes): ``[K]`` — one capsule per class;
- attribute mode (faces, shapes): ``[A, 2]`` — per attribute a pair of capsules, index 0 =
  *absent*, index 1 = *present*, so that the index of a pair's active capsule IS the
  attribute's value {0, 1}, and class indices and attribute vectors are handled alike: a
  target is the index of the active capsule along the last capsule axis.

Presence is the KL divergence of a capsule to the prior N(0, I): small = present. Everything
below works on any ``caps`` layout; the last capsule axis is the one a mask picks one from.

Equation 2 of the paper as printed, 1/2 sum(1 + log sigma^2 - mu^2 - sigma^2), is the
*negative* KL (Kingma & Welling's -D_KL, a minus sign dropped); we use the KL itself,
KL = -1/2 sum_d (1 + log sigma_d^2 - mu_d^2 - sigma_d^2) >= 0, which is what the margin loss
(eq. 3) needs: active capsules are pushed to KL 0, inactive ones above the margin m > 0.
"""
from __future__ import annotations

from collections.abc import Sequence

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Defaults of the KL margin loss (eq. 3). The paper gives no values.
# - lam = 0.5, Sabour et al.'s down-weighting of the absent classes: in class mode K - 1 capsules
#   are inactive for one active one, and without it their hinge terms dominate early training.
# - margin = 16 nats: an inactive capsule must sit at least m away from the prior, the active
#   one near it, so m must exceed the KL that reconstruction makes the active capsule settle at
#   (~3 nats for 16-D digit capsules) or least-KL prediction stops telling them apart. On
#   mnist-5k m = 4 gave 95.4 % and m = 16 gave 97.8 % (VCapsConfig lists the measurement);
#   16 nats is 1 nat per dimension of the paper's 16-D capsules.
DEFAULT_KL_MARGIN = 16.0
DEFAULT_KL_LAMBDA = 0.5

MASKS = ("label", "min-kl")


def capsule_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) of every capsule: [..., D] -> [...].

    KL = -1/2 sum_d (1 + logvar_d - mu_d^2 - exp(logvar_d)) (eq. 2 with the sign of a divergence).
    """
    if mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must have the same shape, got {tuple(mu.shape)} and "
                         f"{tuple(logvar.shape)}")
    return 0.5 * (mu * mu + torch.exp(logvar) - 1.0 - logvar).sum(dim=-1)


def target_mask(targets: torch.Tensor, kl_shape: Sequence[int] | torch.Size,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """T_k as a float 0/1 tensor of ``kl_shape`` ``[B, *caps]``.

    ``targets`` is either the index of the active capsule along the last capsule axis,
    shape ``kl_shape[:-1]`` (class indices [B] for [B, K]; an attribute vector [B, A] in {0, 1}
    for [B, A, 2]), or already a 0/1 tensor of ``kl_shape`` (several present entities allowed).
    """
    kl_shape = tuple(kl_shape)
    dtype = dtype or torch.get_default_dtype()
    if tuple(targets.shape) == kl_shape:
        return targets.to(dtype)
    if tuple(targets.shape) == kl_shape[:-1]:
        t = targets.long()
        n = kl_shape[-1]
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
            raise ValueError(f"target indices must lie in 0..{n - 1}, got {int(t.min())}..{int(t.max())}")
        return F.one_hot(t, n).to(dtype)
    raise ValueError(f"targets must be indices of shape {list(kl_shape[:-1])} or a 0/1 mask of "
                     f"shape {list(kl_shape)}, got {list(targets.shape)}")


def kl_margin_loss(kl: torch.Tensor, targets: torch.Tensor, margin: float = DEFAULT_KL_MARGIN,
                   lam: float = DEFAULT_KL_LAMBDA) -> torch.Tensor:
    """Eq. 3 summed over capsules, averaged over the batch.

    L_k = T_k KL_k + lam (1 - T_k) max(0, m - KL_k);  L_c = sum_k L_k.

    Args:
        kl: capsule divergences [B, *caps] (from :func:`capsule_kl`).
        targets: see :func:`target_mask`.
    """
    t = target_mask(targets, kl.shape, kl.dtype)
    per = t * kl + lam * (1.0 - t) * F.relu(margin - kl)
    return per.reshape(per.shape[0], -1).sum(dim=1).mean()


def min_kl_mask(kl: torch.Tensor) -> torch.Tensor:
    """The paper's training mask: 1 for the capsule of least KL along the last axis, else 0.

    kl [B, *caps] -> float mask of the same shape (no gradient flows through the choice).
    """
    return F.one_hot(kl.argmin(dim=-1), kl.shape[-1]).to(kl.dtype)


def predict_from_kl(kl: torch.Tensor) -> torch.Tensor:
    """Index of the least-KL capsule along the last axis: class [B] from [B, K], attributes
    [B, A] in {0, 1} from [B, A, 2] (absent = 0, present = 1)."""
    return kl.argmin(dim=-1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """c = mu + eps * sigma with eps ~ N(0, I), sigma = exp(logvar / 2); shape of ``mu``.

    eps is drawn from ``generator`` on the generator's own device and then moved to ``mu``'s,
    so a CPU generator serves any device and a seed gives the same eps on CPU and GPU (one
    host-to-device copy of a [B, *caps, D] tensor: small next to the networks).
    """
    eps = standard_normal(mu.shape, generator, mu)
    return mu + eps * torch.exp(0.5 * logvar)


def standard_normal(shape: Sequence[int] | torch.Size, generator: torch.Generator | None,
                    like: torch.Tensor) -> torch.Tensor:
    """N(0, I) draws of ``shape`` with ``like``'s dtype and device, from ``generator`` if given."""
    if generator is None:
        return torch.randn(tuple(shape), dtype=like.dtype, device=like.device)
    eps = torch.randn(tuple(shape), generator=generator, dtype=like.dtype, device=generator.device)
    return eps.to(like.device)


def mask_capsules(capsules: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero every capsule whose mask is 0: capsules [B, *caps, D], mask [B, *caps]."""
    if mask.shape != capsules.shape[:-1]:
        raise ValueError(f"mask must be {list(capsules.shape[:-1])}, got {list(mask.shape)}")
    return capsules * mask.unsqueeze(-1).to(capsules.dtype)


def training_mask(kl: torch.Tensor, targets: torch.Tensor | None, kind: str = "min-kl") -> torch.Tensor:
    """The decoder's mask while training: ``"min-kl"`` (the paper, §3.2: the least-KL capsule,
    right or wrong) or ``"label"`` (the true entity, as Sabour et al. mask by the label).

    kl [B, *caps] -> float mask [B, *caps]; ``targets`` as in :func:`target_mask` (unused for
    ``min-kl``).
    """
    if kind == "min-kl":
        return min_kl_mask(kl.detach())
    if kind == "label":
        if targets is None:
            raise ValueError("the 'label' mask needs targets")
        return target_mask(targets, kl.shape, kl.dtype)
    raise ValueError(f"unknown mask {kind!r}; choose one of {MASKS}")


def sample_prior_capsules(mask: torch.Tensor, dim: int,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Generation (§3.3): capsules drawn from the prior N(0, I) and masked.

    mask float [B, *caps] (e.g. :func:`target_mask` of the wanted class or attributes) ->
    masked capsules [B, *caps, dim] on the mask's device and dtype.
    """
    z = standard_normal((*mask.shape, dim), generator, mask)
    return mask_capsules(z, mask)


class VariationalCapsules(nn.Module):
    """The capsule layer of a variational capsule network: reads an encoder head's output as the
    posteriors of ``caps`` Gaussian capsules of ``dim`` dimensions (no parameters of its own; the
    head that feeds it is an ordinary Linear or convolution).

    ``head_out`` holds 2 * prod(caps) * dim numbers per image, either as [B, 2 * prod(caps) * dim]
    laid out (mean | log-variance, *caps, dim) — the digit encoder's F(2 K D), means first — or,
    with ``grouped``, as [B, caps[0] * 2 * prod(caps[1:]) * dim, 1, 1] laid out (caps[0], mean |
    log-variance, *caps[1:], dim) — one group per entity, the face encoder's grouped convolution.
    forward -> (mu, logvar), each [B, *caps, dim]. ``features`` (the head's input) is unused; the
    twin's reader (:class:`capsgen.nn.twins_vcaps.GaussianLatent`) takes its class head from it.
    """

    def __init__(self, caps: Sequence[int], dim: int, grouped: bool = False):
        super().__init__()
        self.caps, self.dim, self.grouped = tuple(int(c) for c in caps), int(dim), grouped

    def forward(self, head_out: torch.Tensor, features: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        B = head_out.shape[0]
        if self.grouped:
            out = head_out.view(B, self.caps[0], 2, *self.caps[1:], self.dim)
            return out[:, :, 0], out[:, :, 1]
        out = head_out.view(B, 2, *self.caps, self.dim)
        return out[:, 0], out[:, 1]

    def extra_repr(self) -> str:
        return f"caps={self.caps}, dim={self.dim}, grouped={self.grouped}, numbers={2 * math.prod(self.caps) * self.dim}"


# --------------------------------------------------------------------------- image losses
def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Per-image sum over pixels, averaged over the batch (so it adds to eq. 3 per image).

    ``mse``: eq. 4, 1/2 ||x_r - x||^2; ``bce``: binary cross-entropy of x_r in [0, 1] against
    x in [0, 1] (the paper's suggestion for binary digits).
    """
    if recon.shape != x.shape:
        raise ValueError(f"reconstruction {tuple(recon.shape)} and images {tuple(x.shape)} differ in shape")
    if kind == "mse":
        per = 0.5 * (recon - x).pow(2)
    elif kind == "bce":
        per = F.binary_cross_entropy(recon, x, reduction="none")
    else:
        raise ValueError(f"unknown reconstruction loss {kind!r}; choose mse or bce")
    return per.reshape(per.shape[0], -1).sum(dim=1).mean()


def _as_list(out: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else list(out)


def lsgan_d_loss(real_out: torch.Tensor | Sequence[torch.Tensor],
                 fake_out: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Discriminator side of eq. 5, read as Mao et al.'s LSGAN with a = 0, b = c = 1.

    1/2 E (D(x) - 1)^2 + 1/2 E D(G(z))^2, averaged over every output score (patch) and over the
    scales of a multi-scale discriminator (a list of outputs, one per scale). Eq. 5 as printed
    (E[D(x)]^2 + E[1 - D(G(z))]^2 under min_G max_D) has no finite maximum in D; the LSGAN
    paper the authors cite defines the form used here.
    """
    reals, fakes = _as_list(real_out), _as_list(fake_out)
    if len(reals) != len(fakes):
        raise ValueError(f"{len(reals)} real and {len(fakes)} fake discriminator outputs")
    terms = [0.5 * (r - 1.0).pow(2).mean() + 0.5 * f.pow(2).mean() for r, f in zip(reals, fakes)]
    return torch.stack(terms).mean()


def lsgan_g_loss(fake_out: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Generator side of eq. 5 (LSGAN): 1/2 E (D(G(z)) - 1)^2, averaged over patches and scales."""
    return torch.stack([0.5 * (f - 1.0).pow(2).mean() for f in _as_list(fake_out)]).mean()


__all__ = [
    "DEFAULT_KL_MARGIN", "DEFAULT_KL_LAMBDA", "MASKS", "VariationalCapsules", "capsule_kl", "target_mask",
    "kl_margin_loss", "min_kl_mask", "predict_from_kl", "reparameterize", "standard_normal",
    "mask_capsules", "training_mask", "sample_prior_capsules", "reconstruction_loss",
    "lsgan_d_loss", "lsgan_g_loss",
]
