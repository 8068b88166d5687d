"""CapsNet classifier of Sabour, Frosst & Hinton (2017), "Dynamic routing between capsules".

conv 256 9x9 + ReLU -> primary capsules 32 x 8-D (9x9, stride 2) -> K x 16-D class capsules
(3 routing iterations) -> decoder 512-1024-pixels (sigmoid), masked by the true class in
training and by the longest capsule at test time. Loss: margin loss + 0.0005 x summed squared
reconstruction error. Works for any (C, H, W) input, e.g. 28x28x1 and 32x32x3.

The matched non-capsule twin (``cfg.twin``, :mod:`capsgen.nn.twins`) keeps the conv, the decoder,
the loss and the masking and replaces exactly the three capsule operations:

- ``primary``: PrimaryCapsules -> PrimaryFeatures, the same 9x9/2 convolution with LeakyReLU
  instead of the squash of each 8-D group;
- ``classes``: the routed DenseCapsules -> DenseTwin, one Linear(1152 x 8 -> K x 16) + LeakyReLU,
  so the decoder still reads K groups of 16 numbers and the masking still keeps one class's group;
- ``score``: a class's score, the capsule's length, -> GroupScore, sigmoid(a_k . v_k + b_k), a
  number in (0, 1) that, like the length, depends only on that class's own 16-D vector.

So the margin loss (m+ = 0.9, m- = 0.1 are targets for a score in [0, 1)), "mask the true class
in training, the winning class at test time" and the decoder apply unchanged, and twin and CapsNet
differ by squash + routing by agreement + length read-out alone. The twin has the weights of the
capsule layer (1152 x 10 x 16 x 8 transforms there, the same Linear weight here) plus 160 biases
and the 170 weights of the scores: 8,215,898 against 8,215,568 on 28x28 digits (+0.004 %).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from capsgen.models.capsnet.config import CapsNetConfig
from capsgen.nn import DenseCapsules, PrimaryCapsules, margin_loss, safe_norm
from capsgen.nn.twins import DenseTwin, GroupScore, PrimaryFeatures


class CapsNet(nn.Module):
    """Input [B, C, H, W] in [0, 1] -> class capsules [B, K, class_dim] (or the twin's class vectors)."""

    def __init__(self, cfg: CapsNetConfig, shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        C, H, W = shape
        self.cfg, self.shape, self.num_classes = cfg, shape, num_classes
        self.conv = nn.Conv2d(C, cfg.conv_channels, cfg.conv_kernel)
        primary_args = (cfg.conv_channels, cfg.primary_capsules, cfg.primary_dim, cfg.primary_kernel,
                        cfg.primary_stride)
        self.primary = PrimaryFeatures(*primary_args) if cfg.twin else \
            PrimaryCapsules(*primary_args, squash=cfg.squash)
        h = (H - cfg.conv_kernel + 1 - cfg.primary_kernel) // cfg.primary_stride + 1
        w = (W - cfg.conv_kernel + 1 - cfg.primary_kernel) // cfg.primary_stride + 1
        if h < 1 or w < 1:
            raise ValueError(f"input {H}x{W} is too small for kernels {cfg.conv_kernel} and "
                             f"{cfg.primary_kernel}")
        self.num_primary = cfg.primary_capsules * h * w
        if cfg.twin:
            self.classes: nn.Module = DenseTwin(self.num_primary, cfg.primary_dim, num_classes, cfg.class_dim)
        else:
            self.classes = DenseCapsules(self.num_primary, cfg.primary_dim, num_classes, cfg.class_dim,
                                         cfg.routing_iterations,
                                         grad_through_iterations=cfg.grad_through_routing,
                                         squash=cfg.squash)
        # the capsule model reads lengths and has no score module (its state_dict is unchanged)
        self.score = GroupScore(num_classes, cfg.class_dim) if cfg.twin else None
        layers: list[nn.Module] = []
        width = num_classes * cfg.class_dim
        for hidden in cfg.decoder_hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        layers += [nn.Linear(width, C * H * W), nn.Sigmoid()]
        self.decoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> class capsule poses (twin: class vectors) [B, K, D]."""
        return self.classes(self.primary(F.relu(self.conv(x))))

    def scores(self, poses: torch.Tensor) -> torch.Tensor:
        """Class scores [B, K] in [0, 1) from poses [B, K, D]: capsule lengths, or the twin's GroupScore."""
        return self.score(poses) if self.score is not None else safe_norm(poses)

    def decode(self, poses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Reconstruct images [B, C, H, W] from poses [B, K, D] keeping only class ``mask`` [B]."""
        keep = F.one_hot(mask, self.num_classes).to(poses.dtype).unsqueeze(-1)
        return self.decoder((poses * keep).flatten(1)).view(-1, *self.shape)


def capsnet_loss(model: CapsNet, x: torch.Tensor, y: torch.Tensor):
    """Margin loss on the class scores + recon_weight x per-image summed squared error; returns (loss, parts)."""
    cfg = model.cfg
    poses = model(x)
    scores = model.scores(poses)
    margin = margin_loss(scores, y, cfg.m_pos, cfg.m_neg, cfg.lam)
    recon = model.decode(poses, y)
    sse = (recon - x).pow(2).flatten(1).sum(1).mean()
    loss = margin + cfg.recon_weight * sse
    return loss, {"margin": margin, "recon_sse": sse, "scores": scores}
