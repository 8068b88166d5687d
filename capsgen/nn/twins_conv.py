"""The non-capsule twin of a convolutional capsule layer (see :mod:`capsgen.nn.twins` for the
twin contract and the other twin layers).

:class:`ConvTwin` takes the place of :class:`~capsgen.nn.trainable_routing.TrainableConvCapsules`
(or :class:`~capsgen.nn.layers.ConvCapsules`): a capsule grid [B, Cin, H, W, Din] is read as
Cin * Din ordinary channels (channel c * Din + d, PrimaryCapsules' order), one Conv2d with the
capsule layer's kernel, stride and padding maps them to Cout * Dout channels, LeakyReLU instead of
the squash, and the result goes back to the grid layout [B, Cout, H', W', Dout], so the layers
around it do not change.

Why a plain convolution is the twin, and why it can have *more* weights than the capsule layer:
with trainable routing the couplings do not depend on the input, so the capsule layer is linear
in its children too — a convolution whose weight is c W folded per offset — followed by the
squash. Its transforms are q x r matrices acting on poses that are p x q matrices (p = Din / q
pose rows), i.e. each kernel weight block is kron(I_p, W): the same W for every pose row. That
sharing is part of what matrix capsules are, so the twin does not keep it; it has
Cin * Din * k^2 * Cout * Dout weights against Cin * k^2 * Cout * q * r, p^2 times as many
(equal for vector poses, p = 1), plus Cout * Dout biases, and no couplings.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from capsgen.nn.twins import TWIN_SLOPE


class ConvTwin(nn.Module):
    """The twin of a convolutional capsule layer: grid [B, Cin, H, W, Din] -> [B, Cout, H', W', Dout].

    One Conv2d(Cin * Din -> Cout * Dout, kernel_size, stride, padding) with PyTorch's default
    initialisation, then LeakyReLU(0.2) (``activation=False``: none).
    """

    def __init__(self, in_capsules: int, in_dim: int, out_capsules: int, out_dim: int,
                 kernel_size: int = 3, stride: int = 1, padding: int = 0, activation: bool = True):
        super().__init__()
        self.in_capsules, self.in_dim = in_capsules, in_dim
        self.out_capsules, self.out_dim = out_capsules, out_dim
        self.activation = activation
        self.conv = nn.Conv2d(in_capsules * in_dim, out_capsules * out_dim, kernel_size, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_capsules or x.shape[4] != self.in_dim:
            raise ValueError(f"ConvTwin expects [B, {self.in_capsules}, H, W, {self.in_dim}], got {tuple(x.shape)}")
        B, C, H, W, D = x.shape
        y = self.conv(x.permute(0, 1, 4, 2, 3).reshape(B, C * D, H, W))
        Ho, Wo = y.shape[-2:]
        y = y.view(B, self.out_capsules, self.out_dim, Ho, Wo).permute(0, 1, 3, 4, 2)
        return F.leaky_relu(y, TWIN_SLOPE) if self.activation else y
