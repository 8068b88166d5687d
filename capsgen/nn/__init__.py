"""Capsule building blocks: non-linearities, routing, layers and losses."""
from capsgen.nn.layers import ConvCapsules, DenseCapsules, PrimaryCapsules, capsule_votes
from capsgen.nn.losses import as_target_matrix, margin_loss
from capsgen.nn.routing import dynamic_routing
from capsgen.nn.squash import get_squash, safe_norm, squash, squash_exp, unsquash

__all__ = [
    "ConvCapsules", "DenseCapsules", "PrimaryCapsules", "capsule_votes", "as_target_matrix",
    "margin_loss", "dynamic_routing", "get_squash", "safe_norm", "squash", "squash_exp", "unsquash",
]
