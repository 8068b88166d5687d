"""The non-capsule twin layers (capsgen.nn.twins), and the fold that makes a dense layer the exact
twin of trainable routing: s_j = sum_i c_ij W_ij u_i is one linear map of the children."""
from __future__ import annotations

import pytest
import torch

from capsgen.nn import PrimaryCapsules, squash
from capsgen.nn.trainable_routing import TrainableDenseCapsules
from capsgen.nn.twins import TWIN_SLOPE, DenseTwin, GroupScore, PrimaryFeatures


def test_trainable_routing_layer_is_squash_of_one_linear_map():
    torch.manual_seed(0)
    I, Din, J, Dout = 12, 4, 3, 5
    layer = TrainableDenseCapsules(I, Din, J, Dout, squash="sabour").double()
    with torch.no_grad():
        layer.coupling.uniform_(-1, 1)                      # any couplings, not only the initial 1/J
    u = torch.randn(6, I, Din, dtype=torch.float64)
    # the folded weight, written from the equation: M[(j, d), (i, e)] = c_ij W_ij[d, e]
    W, c = layer.weight, layer.coupling                   # [I, J, Dout, Din], [I, J]
    M = torch.einsum("ij,ijde->jdie", c, W).reshape(J * Dout, I * Din)
    s = (u.reshape(6, -1) @ M.T).view(6, J, Dout)
    torch.testing.assert_close(layer(u), squash(s), rtol=1e-12, atol=1e-12)


def test_primary_features_are_the_capsule_convolution_with_leaky_relu_instead_of_the_squash():
    torch.manual_seed(0)
    caps = PrimaryCapsules(6, num_capsules=3, capsule_dim=4, kernel_size=3, stride=1, padding=1)
    feats = PrimaryFeatures(6, num_capsules=3, capsule_dim=4, kernel_size=3, stride=1, padding=1)
    feats.load_state_dict(caps.state_dict())
    x, shift = torch.randn(2, 6, 5, 5), torch.randn(2, 12)
    caps.squash = lambda y: y                               # the same layout without the squash
    pre = caps(x, shift)
    torch.testing.assert_close(feats(x, shift), torch.nn.functional.leaky_relu(pre, TWIN_SLOPE))
    assert feats(x).shape == (2, 3 * 25, 4)
    assert feats.forward_grid(x).shape == (2, 3, 5, 5, 4)


def test_dense_twin_has_the_width_and_weights_of_the_capsule_layer():
    I, Din, J, Dout = 392, 8, 10, 16
    twin, caps = DenseTwin(I, Din, J, Dout), TrainableDenseCapsules(I, Din, J, Dout)
    assert twin(torch.randn(3, I, Din)).shape == (3, J, Dout)
    n_twin = sum(p.numel() for p in twin.parameters())
    n_caps = sum(p.numel() for p in caps.parameters())
    assert n_twin - J * Dout == n_caps - I * J == I * J * Dout * Din
    with pytest.raises(ValueError, match="expects"):
        twin(torch.randn(3, I + 1, Din))
    with pytest.raises(ValueError, match="no coupling"):
        twin(torch.randn(3, I, Din), return_coupling=True)
    lin = DenseTwin(4, 2, 3, 2, activation=False)
    u = torch.randn(5, 4, 2)
    torch.testing.assert_close(lin(u), lin.linear(u.reshape(5, -1)).view(5, 3, 2))


def test_group_score_reads_each_group_alone_and_is_a_probability():
    torch.manual_seed(0)
    score = GroupScore(3, 4)
    v = torch.randn(7, 3, 4) * 10
    p = score(v)
    assert p.shape == (7, 3) and bool(((p > 0) & (p < 1)).all())
    w = v.clone()
    w[:, 1] += 5                                            # changing group 1 moves score 1 only
    q = score(w)
    torch.testing.assert_close(q[:, [0, 2]], p[:, [0, 2]])
    assert not torch.allclose(q[:, 1], p[:, 1])
    torch.testing.assert_close(score(torch.zeros(1, 3, 4)), torch.full((1, 3), 0.5))
    p.sum().backward()
    assert score.weight.grad is not None and score.bias.grad is not None
