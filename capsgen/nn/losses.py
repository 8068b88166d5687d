"""Capsule losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def as_target_matrix(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices [B] -> one-hot [B, K]; a [B, K] 0/1 matrix passes through (as float)."""
    if targets.dim() == 1:
        return F.one_hot(targets.long(), num_classes).to(torch.get_default_dtype())
    if targets.dim() == 2 and targets.shape[1] == num_classes:
        return targets if targets.is_floating_point() else targets.to(torch.get_default_dtype())
    raise ValueError(f"targets must be class indices [B] or a [B, {num_classes}] 0/1 matrix, "
                     f"got shape {tuple(targets.shape)}")


def margin_loss(lengths: torch.Tensor, targets: torch.Tensor, m_pos: float = 0.9,
                m_neg: float = 0.1, lam: float = 0.5) -> torch.Tensor:
    """Sabour et al.'s margin loss (eq. 4), mean over the batch of the per-sample sum over classes.

    L_k = T_k max(0, m+ - ||v_k||)^2 + lam (1 - T_k) max(0, ||v_k|| - m-)^2.

    Args:
        lengths: capsule lengths [B, K].
        targets: class indices [B] or a 0/1 matrix [B, K] (several present classes allowed).
    """
    t = as_target_matrix(targets, lengths.shape[1]).to(lengths.dtype)
    pos = t * F.relu(m_pos - lengths).pow(2)
    neg = lam * (1.0 - t) * F.relu(lengths - m_neg).pow(2)
    return (pos + neg).sum(dim=1).mean()
