"""Trainable routing: the coupling coefficients of Chen et al. (G-CapsNets) as ordinary parameters.

A capsule layer with trainable routing makes one pass and nothing else:

    u_hat_{j|i} = W_ij u_i,    s_j = sum_i c_ij u_hat_{j|i},    v_j = squash(s_j)

with c_ij learnt by gradient descent like W_ij: no softmax, no sum-to-one constraint, no
iterations, no agreement. Chen et al. use the exp-squash (1 - e^-||s||) s / ||s||, the default
here; the supplementary adds "one ReLU layer and one squash layer" after each capsule layer
(``relu=True`` applies max(0, s) element-wise before the squash, the order of the authors'
MNIST-conv and CIFAR-FC prototxts; their CIFAR multi-layer prototxt puts it after the squash).

Because c does not depend on the input, s is *linear* in the child capsules:
s_j = sum_i (c_ij W_ij) u_i. The layers below fold the couplings into the transforms and compute
every s_j with one matrix product, never materialising the [B, I, J, D] votes: routing costs
one elementwise product of the parameters per step, whatever the batch size. Measured with
benchmarks/routing_trainable.py (1152 x 8-D -> 10 x 16-D, batch 100, forward + backward, 1
thread): 58 ms against 956 ms for DenseCapsules with 3 iterations (16x); the same maths on
explicit votes took 999 ms, most of it strided copies of the [B, I, J, D] votes. The product c_ij W_ij is
over-parameterised, as in the paper; both factors get their own gradients.

With a single parent (J = 1) trainable routing is *not* a no-op, unlike dynamic routing with
the softmax over parents (where c == 1): each child keeps a free weight c_i1.

Layouts as in :mod:`capsgen.nn.layers`: flat capsules [B, N, D]; capsule grids [B, C, H, W, D].
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from capsgen.nn.layers import DenseCapsules
from capsgen.nn.squash import get_squash, squash_exp

# Initial value of c_ij (I children, J parents per position).
#   "parents":  1/J, the uniform coupling of dynamic routing's first iteration (softmax over J
#               parents of zero logits): with the same transforms the layer starts exactly where
#               a one-iteration DenseCapsules starts.
#   "children": 1/I, so s_j starts as the mean vote.
#   "xavier":   uniform in +-sqrt(3 / I), zero mean: the Caffe filler of the authors' prototxts.
# Default "parents". Measured with benchmarks/routing_trainable.py --init-study ARCH (mnist-5k,
# 300 Adam steps at lr 1e-3, batch 32, 1 thread; test error on the 500 test digits, mean of 2
# seeds; parents / children / xavier):
#   fc (conv 64, 8 x 8-D primary -> 10 x 16-D):        3.7 / 4.0 / 3.6 %
#   conv (the same body, 2x4 poses, 4x4 transforms):   4.0 / 3.7 / 4.2 %
#   multilayer (supplementary table 1 on 28x28):       3.7 / 11.0 / 3.7 %
# One layer does not care (differences within the ~0.8 % noise of 500 digits); in the deep stack
# the mean vote (1/I, with I up to 256 children per parent) shrinks the signal layer after layer
# and trains far worse. 1/J keeps dynamic routing's starting point and never lost.
COUPLING_INITS = ("parents", "children", "xavier")
DEFAULT_COUPLING_INIT = "parents"

ROUTINGS = ("dynamic", "trainable", "self-attention")


def init_coupling_(c: torch.Tensor, children: int, parents: int, how: str) -> torch.Tensor:
    """Fill coupling coefficients ``c`` in place by rule ``how`` (see COUPLING_INITS)."""
    with torch.no_grad():
        if how == "parents":
            return c.fill_(1.0 / parents)
        if how == "children":
            return c.fill_(1.0 / children)
        if how == "xavier":
            bound = math.sqrt(3.0 / children)
            return c.uniform_(-bound, bound)
    raise ValueError(f"unknown coupling_init {how!r}; choose one of {COUPLING_INITS}")


def trainable_routing(u_hat: torch.Tensor, coupling: torch.Tensor, squash_fn=squash_exp,
                      relu: bool = False) -> torch.Tensor:
    """One routing pass with fixed coefficients: votes ``u_hat`` [B, I, J, D] -> v [B, J, D].

    ``coupling`` is [I, J] (one scalar c_ij per child-parent pair, Chen et al.) or [I, J, D]
    (one coefficient per pose dimension: s_jd = sum_i c_ijd u_hat_{j|i,d}). Nothing is
    normalised. This is the reference formulation on explicit votes; the layers below compute
    the same numbers without building the votes.
    """
    if u_hat.dim() != 4:
        raise ValueError(f"u_hat must be [B, I, J, D], got shape {tuple(u_hat.shape)}")
    if coupling.shape not in (u_hat.shape[1:3], u_hat.shape[1:]):
        raise ValueError(f"coupling must be [I, J] or [I, J, D] = {tuple(u_hat.shape[1:])}, "
                         f"got {tuple(coupling.shape)}")
    if coupling.dim() == 2:
        s = torch.einsum("bijd,ij->bjd", u_hat, coupling)
    else:
        s = torch.einsum("bijd,ijd->bjd", u_hat, coupling)
    if relu:
        s = F.relu(s)
    return squash_fn(s)


class TrainableDenseCapsules(nn.Module):
    """Fully connected capsule layer with trainable routing (Chen et al.'s FC G-CapsNet layer).

    Input [B, I, Din] -> output [B, J, Dout]. ``weight`` [I, J, Dout, Din] has DenseCapsules'
    layout (the two layers' transforms are interchangeable); ``coupling`` is [I, J], or
    [I, J, Dout] with ``coupling_per_dim`` (a coefficient per child, parent and pose dimension —
    what the 11.5K "FC Caps Routing" row of Chen et al.'s supplementary table 1 counts).
    The positional arguments and ``squash`` / ``init_std`` are DenseCapsules'; see
    :func:`dense_capsules` to choose between the two by name.
    """

    def __init__(self, in_capsules: int, in_dim: int, out_capsules: int, out_dim: int,
                 squash: str = "exp", init_std: float = 0.01,
                 coupling_init: str = DEFAULT_COUPLING_INIT, coupling_per_dim: bool = False,
                 relu: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(in_capsules, out_capsules, out_dim, in_dim) * init_std)
        shape = (in_capsules, out_capsules, out_dim) if coupling_per_dim else (in_capsules, out_capsules)
        self.coupling = nn.Parameter(torch.empty(shape))
        init_coupling_(self.coupling, in_capsules, out_capsules, coupling_init)
        self.relu = relu
        self.squash = get_squash(squash)

    def folded_weight(self) -> torch.Tensor:
        """c_ij W_ij as one matrix [I * Din, J * Dout] (row i * Din + d, column j * Dout + o)."""
        I, J, Dout, Din = self.weight.shape
        c = self.coupling.unsqueeze(-1)
        if c.dim() == 3:
            c = c.unsqueeze(-1)
        return (c * self.weight).permute(0, 3, 1, 2).reshape(I * Din, J * Dout)

    def forward(self, u: torch.Tensor, return_coupling: bool = False):
        I, J, Dout, Din = self.weight.shape
        if u.dim() != 3 or u.shape[1:] != (I, Din):
            raise ValueError(f"TrainableDenseCapsules expects [B, {I}, {Din}], got {tuple(u.shape)}")
        s = (u.reshape(u.shape[0], I * Din) @ self.folded_weight()).view(u.shape[0], J, Dout)
        if self.relu:
            s = F.relu(s)
        v = self.squash(s)
        if return_coupling:
            return v, self.coupling.expand(u.shape[0], *self.coupling.shape)
        return v


class TrainableConvCapsules(nn.Module):
    """Convolutional capsule layer with trainable routing (Chen et al.'s conv G-CapsNet layer).

    Input grid [B, Cin, H, W, Din] -> output grid [B, Cout, H', W', Dout].

    Poses are matrices: a ``Din``-D capsule is a ``pose_rows`` x q matrix U (q = Din / pose_rows,
    row-major), and each (input type, kernel offset, output type) triple has its own q x r
    transform W, shared over all positions, voting U W (a pose_rows x r matrix, Dout =
    pose_rows * r). pose_rows = 1 is the vector case (u^T W); Chen et al.'s MNIST network uses
    8-D capsules as 2 x 4 matrices with 4 x 4 transforms, matrix capsules (Hinton et al. 2018)
    are 4 x 4 with 4 x 4 transforms. ``weight`` is [Cin * k * k, Cout, q, r]; child index
    n = cin * k * k + ky * k + kx (unfold's order, as in ConvCapsules).

    Couplings: with ``input_size`` = (H, W) every output position has its own coefficients,
    ``coupling`` [H', W', Cin * k * k, Cout] — the authors' CapsuleConvRouting layer, whose
    counts (e.g. 3*3*8 x 3*3*16 = 10.4K) the supplementary table lists; a fixed input size is
    then required. Without it one [Cin * k * k, Cout] set is shared by all positions (the layer
    is then translation-equivariant, like a convolution). A kernel covering the whole grid has
    one position, where the two coincide.
    """

    def __init__(self, in_capsules: int, in_dim: int, out_capsules: int, out_dim: int,
                 kernel_size: int = 3, stride: int = 1, padding: int = 0, pose_rows: int = 1,
                 input_size: tuple[int, int] | None = None, squash: str = "exp", relu: bool = False,
                 init_std: float | None = None, coupling_init: str = DEFAULT_COUPLING_INIT):
        super().__init__()
        if in_dim % pose_rows or out_dim % pose_rows:
            raise ValueError(f"capsule dims {in_dim} and {out_dim} must be multiples of pose_rows={pose_rows}")
        self.in_capsules, self.in_dim = in_capsules, in_dim
        self.out_capsules, self.out_dim = out_capsules, out_dim
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.pose_rows = pose_rows
        q, r = in_dim // pose_rows, out_dim // pose_rows
        n = in_capsules * kernel_size * kernel_size
        # Votes keep the scale of the poses: each entry of U W sums q products.
        std = init_std if init_std is not None else 1.0 / math.sqrt(q)
        self.weight = nn.Parameter(torch.randn(n, out_capsules, q, r) * std)
        self.input_size = tuple(input_size) if input_size is not None else None
        if self.input_size is not None:
            ho, wo = self.output_size(*self.input_size)
            if ho < 1 or wo < 1:
                raise ValueError(f"kernel {kernel_size} (stride {stride}, padding {padding}) does "
                                 f"not fit a {self.input_size} capsule grid")
            self.coupling = nn.Parameter(torch.empty(ho, wo, n, out_capsules))
        else:
            self.coupling = nn.Parameter(torch.empty(n, out_capsules))
        init_coupling_(self.coupling, n, out_capsules, coupling_init)
        self.relu = relu
        self.squash = get_squash(squash)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        k, s, p = self.kernel_size, self.stride, self.padding
        return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_capsules or x.shape[4] != self.in_dim:
            raise ValueError(f"TrainableConvCapsules expects [B, {self.in_capsules}, H, W, "
                             f"{self.in_dim}], got {tuple(x.shape)}")
        B, C, H, W, D = x.shape
        if self.input_size is not None and (H, W) != self.input_size:
            raise ValueError(f"this layer has per-position couplings for a {self.input_size} grid, "
                             f"got {(H, W)}")
        k, p = self.kernel_size, self.pose_rows
        q = D // p
        Ho, Wo = self.output_size(H, W)
        planes = x.permute(0, 1, 4, 2, 3).reshape(B, C * D, H, W)
        cols = F.unfold(planes, k, padding=self.padding, stride=self.stride)  # [B, C*D*k*k, L]
        L = cols.shape[-1]
        # channel (c, row, col) and offset -> [L, B * rows, (c, offset, col)]: per position, one
        # row per pose-matrix row, the contraction index (child n, column) last.
        u = cols.view(B, C, p, q, k * k, L).permute(5, 0, 2, 1, 4, 3).reshape(L, B * p, C * k * k * q)
        N, Cout, _, r = self.weight.shape
        if self.coupling.dim() == 2:   # shared: one folded matrix for every position
            w = (self.coupling[:, :, None, None] * self.weight).permute(0, 2, 1, 3).reshape(N * q, Cout * r)
            s = (u.reshape(L * B * p, N * q) @ w)
        else:                          # per position: a batch of L folded matrices
            c = self.coupling.reshape(L, N, Cout)[..., None, None]
            w = (c * self.weight).permute(0, 1, 3, 2, 4).reshape(L, N * q, Cout * r)
            s = torch.bmm(u, w)
        s = s.view(L, B, p, Cout, r).permute(1, 3, 0, 2, 4).reshape(B, Cout, Ho, Wo, p * r)
        if self.relu:
            s = F.relu(s)
        return self.squash(s)


def dense_capsules(routing: str, in_capsules: int, in_dim: int, out_capsules: int, out_dim: int, *,
                   routing_iterations: int = 3, agreement: str = "dot",
                   grad_through_iterations: bool = True, squash: str = "sabour",
                   init_std: float = 0.01, coupling_init: str = DEFAULT_COUPLING_INIT) -> nn.Module:
    """A fully connected capsule layer [B, I, Din] -> [B, J, Dout] by routing name.

    ``routing="dynamic"``: :class:`DenseCapsules` (routing by agreement; ``coupling_init`` unused).
    ``routing="trainable"``: :class:`TrainableDenseCapsules` — one pass by definition, so
    ``routing_iterations``, ``agreement`` and ``grad_through_iterations`` do not apply to it.
    ``routing="self-attention"``: :class:`~capsgen.nn.attention_routing.AttentionDenseCapsules`,
    agreement in one pass (Efficient-CapsNet); the same three do not apply.
    """
    if routing == "dynamic":
        return DenseCapsules(in_capsules, in_dim, out_capsules, out_dim, routing_iterations, agreement,
                             grad_through_iterations, squash, init_std)
    if routing == "trainable":
        return TrainableDenseCapsules(in_capsules, in_dim, out_capsules, out_dim, squash=squash,
                                      init_std=init_std, coupling_init=coupling_init)
    if routing == "self-attention":
        from capsgen.nn.attention_routing import AttentionDenseCapsules

        return AttentionDenseCapsules(in_capsules, in_dim, out_capsules, out_dim, squash=squash, init_std=init_std)
    raise ValueError(f"unknown routing {routing!r}; choose one of {ROUTINGS}")
