"""Capsule building blocks: non-linearities, routing, layers and losses."""
from capsgen.nn.layers import ConvCapsules, DenseCapsules, PrimaryCapsules, capsule_votes
from capsgen.nn.losses import as_target_matrix, margin_loss
from capsgen.nn.routing import dynamic_routing
from capsgen.nn.squash import get_squash, safe_norm, squash, squash_exp, unsquash

__all__ = [
    "ConvCapsules", "DenseCapsules", "PrimaryCapsules", "capsule_votes", "as_target_matrix",
    "margin_loss", "dynamic_routing", "get_squash", "safe_norm", "squash", "squash_exp", "unsquash",
]

# Trainable routing (Chen et al., G-CapsNets).
from capsgen.nn.trainable_routing import (TrainableConvCapsules, TrainableDenseCapsules,  # noqa: E402
                                          dense_capsules, trainable_routing)

__all__ += ["TrainableConvCapsules", "TrainableDenseCapsules", "dense_capsules", "trainable_routing"]
