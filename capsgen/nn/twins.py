"""The non-capsule counterparts of capsule layers, for a capsule model's matched *twin*.

A twin is the same network, loss, data and budget with only the capsule part replaced, so that a
comparison measures what the capsules buy and nothing else (``capsgen train FAMILY --twin``,
``capsgen reproduce twins``). Each layer here takes the place of one capsule layer and keeps its
input and output shapes and its width, so the rest of the network does not change:

- :class:`PrimaryFeatures` for :class:`~capsgen.nn.layers.PrimaryCapsules`: the same convolution,
  an element-wise LeakyReLU instead of the squash of each ``capsule_dim`` group, the same
  [B, N, D] layout (D consecutive channels of one position, as the capsules were);
- :class:`DenseTwin` for a fully connected capsule layer (dynamic or trainable routing):
  one Linear(I * Din -> J * Dout) + LeakyReLU, output [B, J, Dout];
- :class:`GroupScore` for a capsule's length as a score in [0, 1): a learnt linear read-out of
  each group, then a sigmoid, [B, J, D] -> [B, J].

Why a dense layer is *the* twin of trainable routing: with couplings that do not depend on the
input, s_j = sum_i c_ij W_ij u_i is linear in the children, so a trainable-routing layer is exactly
squash(Linear(I * Din -> J * Dout)) with the weight c_ij W_ij (tests/test_nn_twins.py checks it).
The twin of such a layer differs from it by the squash (and its grouping into capsules) alone.
With dynamic routing the twin also loses routing by agreement. Both twins have the same number
of weights as the capsule layer (the capsule transforms I * J * Dout * Din, plus J * Dout biases
here against I * J couplings there).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# The activation a twin uses where the capsule model squashes: LeakyReLU(0.2), the DCGAN
# discriminator's own, so a capsule GAN's twin is a DCGAN-style network throughout.
TWIN_SLOPE = 0.2


class PrimaryFeatures(nn.Module):
    """The twin of :class:`~capsgen.nn.layers.PrimaryCapsules`: conv + LeakyReLU, no capsules.

    Input [B, Cin, H, W] -> [B, num_capsules * H' * W', capsule_dim] in the capsule layer's
    layout (so a following :class:`DenseTwin` sees the same numbers in the same places), or the
    grid [B, num_capsules, H', W', capsule_dim] from :meth:`forward_grid`.
    """

    def __init__(self, in_channels: int, num_capsules: int = 32, capsule_dim: int = 8,
                 kernel_size: int = 9, stride: int = 2, padding: int = 0):
        super().__init__()
        self.num_capsules, self.capsule_dim = num_capsules, capsule_dim
        self.conv = nn.Conv2d(in_channels, num_capsules * capsule_dim, kernel_size, stride, padding)

    def forward_grid(self, x: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """[B, Cin, H, W] -> [B, num_capsules, H', W', capsule_dim]; ``shift`` [B, C] as in PrimaryCapsules."""
        y = self.conv(x)
        if shift is not None:
            y = y + shift[:, :, None, None]
        B, _, H, W = y.shape
        y = y.view(B, self.num_capsules, self.capsule_dim, H, W).permute(0, 1, 3, 4, 2)
        return F.leaky_relu(y, TWIN_SLOPE)

    def forward(self, x: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """[B, Cin, H, W] -> [B, num_capsules * H' * W', capsule_dim]."""
        g = self.forward_grid(x, shift)
        return g.reshape(g.shape[0], -1, self.capsule_dim)


class DenseTwin(nn.Module):
    """The twin of a fully connected capsule layer: [B, I, Din] -> [B, J, Dout].

    One Linear(I * Din -> J * Dout) with PyTorch's default initialisation, then LeakyReLU(0.2)
    (``activation=False``: no activation, for a layer whose output is read linearly, e.g. a
    decoder's input). ``forward(u, return_coupling=True)`` is refused: a dense layer has no
    coupling coefficients.
    """

    def __init__(self, in_capsules: int, in_dim: int, out_capsules: int, out_dim: int,
                 activation: bool = True):
        super().__init__()
        self.in_capsules, self.in_dim = in_capsules, in_dim
        self.out_capsules, self.out_dim = out_capsules, out_dim
        self.activation = activation
        self.linear = nn.Linear(in_capsules * in_dim, out_capsules * out_dim)

    def forward(self, u: torch.Tensor, return_coupling: bool = False) -> torch.Tensor:
        if return_coupling:
            raise ValueError("a dense twin layer has no coupling coefficients")
        if u.dim() != 3 or u.shape[1:] != (self.in_capsules, self.in_dim):
            raise ValueError(f"DenseTwin expects [B, {self.in_capsules}, {self.in_dim}], got {tuple(u.shape)}")
        s = self.linear(u.reshape(u.shape[0], -1)).view(u.shape[0], self.out_capsules, self.out_dim)
        return F.leaky_relu(s, TWIN_SLOPE) if self.activation else s


class GroupScore(nn.Module):
    """The twin of reading a capsule's length as a score: [B, J, D] -> [B, J] in (0, 1).

    score_j = sigmoid(a_j . v_j + b_j), one learnt vector a_j and bias b_j per group, so each
    score still depends only on its own group, as a length does (a margin loss, a length head and
    a length-based classifier then work unchanged). a starts at PyTorch's Linear default for D
    inputs, b at 0 (a score of 0.5 for a zero vector).
    """

    def __init__(self, groups: int, dim: int):
        super().__init__()
        bound = 1.0 / dim ** 0.5
        self.weight = nn.Parameter(torch.empty(groups, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(groups))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """[B, J, D] -> [B, J]."""
        return torch.sigmoid((v * self.weight).sum(-1) + self.bias)
