"""Self-attention routing against a float64 loop reference written from Efficient-CapsNet's
equations (A_j = U_j U_j^T / sqrt(D), c_ij = softmax over parents of the row sums of A_j,
s_j = sum_i (c_ij + b_ij) u_hat_{j|i}), with gradients checked."""
from __future__ import annotations

import math

import pytest
import torch

from capsgen.nn import squash
from capsgen.nn.attention_routing import AttentionDenseCapsules, self_attention_routing
from capsgen.nn.trainable_routing import dense_capsules


def reference(u_hat: torch.Tensor, b: torch.Tensor, normalize: str = "parents"):
    """Loops over the batch, parents and children, building every I x I matrix A_j."""
    B, I, J, D = u_hat.shape
    v = torch.zeros(B, J, D, dtype=u_hat.dtype)
    c_all = torch.zeros(B, I, J, dtype=u_hat.dtype)
    for n in range(B):
        row = torch.zeros(I, J, dtype=u_hat.dtype)         # sum_k A_j[i, k]
        for j in range(J):
            U = u_hat[n, :, j, :]                           # [I, D]
            A = U @ U.T / math.sqrt(D)
            for i in range(I):
                row[i, j] = sum(A[i, k] for k in range(I))
        for i in range(I):
            for j in range(J):
                denom = sum(torch.exp(row[i, jj]) for jj in range(J)) if normalize == "parents" \
                    else sum(torch.exp(row[ii, j]) for ii in range(I))
                c_all[n, i, j] = torch.exp(row[i, j]) / denom
        for j in range(J):
            s = sum((c_all[n, i, j] + b[i, j]) * u_hat[n, i, j] for i in range(I))
            v[n, j] = squash(s)
    return v, c_all


@pytest.mark.parametrize("normalize", ["parents", "children"])
def test_matches_the_loop_reference(normalize):
    torch.manual_seed(0)
    u_hat = torch.randn(3, 5, 4, 6, dtype=torch.float64)
    b = torch.randn(5, 4, dtype=torch.float64) * 0.1
    v, c = self_attention_routing(u_hat, b, normalize=normalize, return_coupling=True)
    v_ref, c_ref = reference(u_hat, b, normalize)
    torch.testing.assert_close(v, v_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, c_ref, rtol=1e-12, atol=1e-12)
    axis = 2 if normalize == "parents" else 1
    torch.testing.assert_close(c.sum(axis), torch.ones_like(c.sum(axis)))


def test_gradients_of_votes_and_prior():
    torch.manual_seed(1)
    u_hat = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    b = (torch.randn(4, 3, dtype=torch.float64) * 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda u, p: self_attention_routing(u, p), (u_hat, b))


def test_agreeing_children_get_the_parent():
    # children 0-2 vote the same direction for parent 0 and at random for parent 1: the agreeing
    # votes should couple to parent 0
    torch.manual_seed(2)
    u_hat = torch.randn(1, 3, 2, 8) * 0.1
    u_hat[0, :, 0] = torch.ones(8)
    _, c = self_attention_routing(u_hat, return_coupling=True)
    assert bool((c[0, :, 0] > 0.9).all())


def test_layer_shapes_prior_starts_at_zero_and_dense_capsules_builds_it():
    torch.manual_seed(0)
    layer = dense_capsules("self-attention", 12, 4, 3, 5)
    assert isinstance(layer, AttentionDenseCapsules)
    assert torch.equal(layer.log_prior, torch.zeros(12, 3))
    v, c = layer(torch.randn(2, 12, 4), return_coupling=True)
    assert v.shape == (2, 3, 5) and c.shape == (2, 12, 3)
    with pytest.raises(ValueError, match="expects"):
        layer(torch.randn(2, 11, 4))
    with pytest.raises(ValueError, match="normalize"):
        AttentionDenseCapsules(2, 2, 2, 2, normalize="rows")
