"""Capsule layers as plain ``nn.Module``s.

Layouts used throughout capsgen:
- a flat set of capsules: [B, N, D] (N capsules of D pose dimensions);
- a capsule grid (convolutional capsules): [B, C, H, W, D] (C capsule types per position).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from capsgen.nn.routing import dynamic_routing
from capsgen.nn.squash import get_squash


def capsule_votes(u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Predictions u_hat_{j|i} = W_ij u_i for every (i, j) pair in one batched matmul.

    Args:
        u: child capsules [B, I, Din].
        weight: transforms [I, J, Dout, Din].
    Returns:
        votes [B, I, J, Dout].
    """
    I, J, Dout, Din = weight.shape
    # [I, B, Din] @ [I, Din, J*Dout] -> [I, B, J*Dout]: one bmm over the children.
    w = weight.reshape(I, J * Dout, Din).transpose(1, 2)
    out = torch.bmm(u.transpose(0, 1), w)
    return out.view(I, u.shape[0], J, Dout).transpose(0, 1)


class PrimaryCapsules(nn.Module):
    """Convolution whose output channels are grouped into capsules (Sabour's PrimaryCaps).

    Input [B, Cin, H, W] -> capsule grid [B, num_capsules, H', W', capsule_dim], squashed.

    Channel c of the convolution belongs to capsule type c // capsule_dim and pose dimension
    c % capsule_dim (as in the original NHWC code). The pose dimensions are permuted last
    *before* any reshape; viewing [B, 256, 6, 6] directly as [B, -1, 8] would instead make
    capsules out of neighbouring pixels of one channel — a common bug.
    """

    def __init__(self, in_channels: int, num_capsules: int = 32, capsule_dim: int = 8,
                 kernel_size: int = 9, stride: int = 2, padding: int = 0, squash: str = "sabour"):
        super().__init__()
        self.num_capsules, self.capsule_dim = num_capsules, capsule_dim
        self.conv = nn.Conv2d(in_channels, num_capsules * capsule_dim, kernel_size, stride, padding)
        self.squash = get_squash(squash)

    def forward_grid(self, x: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """[B, Cin, H, W] -> [B, num_capsules, H', W', capsule_dim].

        ``shift`` [B, num_capsules * capsule_dim], if given, is added to the convolution's output
        at every position before the squash (a per-image bias, e.g. a batch statistic).
        """
        y = self.conv(x)
        if shift is not None:
            y = y + shift[:, :, None, None]
        B, _, H, W = y.shape
        y = y.view(B, self.num_capsules, self.capsule_dim, H, W).permute(0, 1, 3, 4, 2)
        return self.squash(y)

    def forward(self, x: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """[B, Cin, H, W] -> flat capsules [B, num_capsules * H' * W', capsule_dim]."""
        g = self.forward_grid(x, shift)
        return g.reshape(g.shape[0], -1, self.capsule_dim)


class DenseCapsules(nn.Module):
    """Fully connected capsule layer with routing by agreement (Sabour's DigitCaps).

    Input [B, I, Din] -> output [B, J, Dout]. Each (i, j) pair has its own transform W_ij.
    """

    def __init__(self, in_capsules: int, in_dim: int, out_capsules: int, out_dim: int,
                 routing_iterations: int = 3, agreement: str = "dot",
                 grad_through_iterations: bool = True, squash: str = "sabour",
                 init_std: float = 0.01):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(in_capsules, out_capsules, out_dim, in_dim) * init_std)
        self.routing_iterations = routing_iterations
        self.agreement = agreement
        self.grad_through_iterations = grad_through_iterations
        self.squash = get_squash(squash)

    def forward(self, u: torch.Tensor, return_coupling: bool = False):
        if u.dim() != 3 or u.shape[1:] != (self.weight.shape[0], self.weight.shape[3]):
            raise ValueError(f"DenseCapsules expects [B, {self.weight.shape[0]}, {self.weight.shape[3]}], "
                             f"got {tuple(u.shape)}")
        u_hat = capsule_votes(u, self.weight)
        return dynamic_routing(u_hat, self.routing_iterations, self.agreement,
                               self.grad_through_iterations, self.squash,
                               return_coupling=return_coupling)


class ConvCapsules(nn.Module):
    """Convolutional capsule layer: transforms shared across positions, routing per position.

    Input grid [B, Cin, H, W, Din] -> output grid [B, Cout, H', W', Dout].

    The children of an output position are the Cin * k * k capsules of its receptive field;
    each (input type, kernel offset, output type) triple has its own Dout x Din transform,
    shared over all positions (as a convolution shares its filters). Routing runs
    independently at every output position (locally constrained routing), all positions
    batched together.
    """

    def __init__(self, in_capsules: int, in_dim: int, out_capsules: int, out_dim: int,
                 kernel_size: int = 3, stride: int = 1, padding: int = 0,
                 routing_iterations: int = 3, agreement: str = "dot",
                 grad_through_iterations: bool = True, squash: str = "sabour",
                 init_std: float | None = None):
        super().__init__()
        self.in_capsules, self.in_dim = in_capsules, in_dim
        self.out_capsules, self.out_dim = out_capsules, out_dim
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        k2 = kernel_size * kernel_size
        std = init_std if init_std is not None else 1.0 / math.sqrt(in_dim)
        # [Cin * k * k, Cout, Dout, Din]; child index i = cin * k*k + offset (unfold's order).
        self.weight = nn.Parameter(torch.randn(in_capsules * k2, out_capsules, out_dim, in_dim) * std)
        self.routing_iterations = routing_iterations
        self.agreement = agreement
        self.grad_through_iterations = grad_through_iterations
        self.squash = get_squash(squash)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_capsules or x.shape[4] != self.in_dim:
            raise ValueError(f"ConvCapsules expects [B, {self.in_capsules}, H, W, {self.in_dim}], "
                             f"got {tuple(x.shape)}")
        B, C, H, W, D = x.shape
        k = self.kernel_size
        # Put pose dims next to the type dim so unfold's channel axis is (cin, d).
        planes = x.permute(0, 1, 4, 2, 3).reshape(B, C * D, H, W)
        cols = F.unfold(planes, k, padding=self.padding, stride=self.stride)  # [B, C*D*k*k, L]
        L = cols.shape[-1]
        cols = cols.view(B, C, D, k * k, L).permute(0, 4, 1, 3, 2)  # [B, L, C, k*k, D]
        u = cols.reshape(B * L, C * k * k, D)
        u_hat = capsule_votes(u, self.weight)  # [B*L, C*k*k, Cout, Dout]
        v = dynamic_routing(u_hat, self.routing_iterations, self.agreement,
                            self.grad_through_iterations, self.squash)
        Ho = (H + 2 * self.padding - k) // self.stride + 1
        Wo = (W + 2 * self.padding - k) // self.stride + 1
        return v.view(B, Ho, Wo, self.out_capsules, self.out_dim).permute(0, 3, 1, 2, 4)
