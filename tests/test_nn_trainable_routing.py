"""capsgen.nn trainable routing (Chen et al., G-CapsNets) against loop references, in float64.

The references at the top are written straight from the paper's equations — u_hat_{j|i} =
W_ij u_i (or the matrix product U_i W_ij for matrix poses), s_j = sum_i c_ij u_hat_{j|i},
v_j = squash(s_j) — as scalar loops over samples, positions, children, parents and pose entries.
They import nothing from capsgen, so a shared bug cannot hide in both.
"""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

from capsgen.nn import DenseCapsules, capsule_votes
from capsgen.nn.trainable_routing import (COUPLING_INITS, TrainableConvCapsules,
                                          TrainableDenseCapsules, dense_capsules,
                                          trainable_routing)

try:
    from reference_capsules import REF_SQUASHES, ref_votes
except ImportError:  # tests/ imported as a package
    from tests.reference_capsules import REF_SQUASHES, ref_votes

DT = torch.float64
TOL = dict(rtol=1e-7, atol=1e-10)


# ============================================================================= loop references
def _relu(x):
    return torch.where(x > 0, x, torch.zeros((), dtype=x.dtype))


def _squash_or_zero(v, squash):
    """The reference squash, with its limit 0 at v = 0 (a ReLU can zero a whole capsule)."""
    return v if bool((v == 0).all()) else REF_SQUASHES[squash](v)


def ref_trainable_routing(u_hat, c, squash="exp", relu=False):
    """u_hat [B, I, J, D], c [I, J] or [I, J, D] -> v [B, J, D]: s_j = sum_i c_ij u_hat_ij."""
    B, I, J, D = u_hat.shape
    out = []
    for b in range(B):
        vs = []
        for j in range(J):
            entries = []
            for d in range(D):
                s = torch.zeros((), dtype=u_hat.dtype)
                for i in range(I):
                    cij = c[i, j] if c.dim() == 2 else c[i, j, d]
                    s = s + cij * u_hat[b, i, j, d]
                entries.append(_relu(s) if relu else s)
            vs.append(_squash_or_zero(torch.stack(entries), squash))
        out.append(torch.stack(vs))
    return torch.stack(out)


def ref_trainable_dense(u, weight, c, squash="exp", relu=False):
    """FC G-CapsNet layer: votes W_ij u_i (loops), then one trainable-routing pass."""
    return ref_trainable_routing(ref_votes(u, weight), c, squash, relu)


def ref_trainable_conv(x, weight, c, k, stride, padding, pose_rows, squash="exp", relu=False):
    """Convolutional G-CapsNet layer with scalar loops.

    x [B, Cin, H, W, Din]; weight [Cin*k*k, Cout, q, r]; c [Ho, Wo, Cin*k*k, Cout] (per position)
    or [Cin*k*k, Cout] (shared). For output position (oy, ox), type j: children are the capsules
    x[b, cin, oy*stride - padding + ky, ox*stride - padding + kx] (zero outside the grid), child
    n = cin*k*k + ky*k + kx, whose pose is the pose_rows x q matrix U (row-major) and whose vote
    is the matrix product U W[n, j]; s_j = sum_n c_nj vote_nj; v_j = squash(s_j) over all
    pose_rows * r entries.
    """
    B, Cin, H, W, Din = x.shape
    N, Cout, q, r = weight.shape
    p = pose_rows
    assert N == Cin * k * k and Din == p * q
    Ho = (H + 2 * padding - k) // stride + 1
    Wo = (W + 2 * padding - k) // stride + 1
    zero = torch.zeros((), dtype=x.dtype)
    out = []
    for b in range(B):
        per_j = []
        for j in range(Cout):
            rows = []
            for oy in range(Ho):
                cols = []
                for ox in range(Wo):
                    s = [[zero for _ in range(r)] for _ in range(p)]
                    for cin in range(Cin):
                        for ky in range(k):
                            for kx in range(k):
                                iy, ix = oy * stride - padding + ky, ox * stride - padding + kx
                                if not (0 <= iy < H and 0 <= ix < W):
                                    continue  # zero capsule: zero vote
                                n = cin * k * k + ky * k + kx
                                cnj = c[oy, ox, n, j] if c.dim() == 4 else c[n, j]
                                for a in range(p):
                                    for e in range(r):
                                        vote = zero
                                        for t in range(q):
                                            vote = vote + x[b, cin, iy, ix, a * q + t] * weight[n, j, t, e]
                                        s[a][e] = s[a][e] + cnj * vote
                    flat = torch.stack([s[a][e] for a in range(p) for e in range(r)])
                    cols.append(_squash_or_zero(_relu(flat) if relu else flat, squash))
                rows.append(torch.stack(cols))
            per_j.append(torch.stack(rows))
        out.append(torch.stack(per_j))
    return torch.stack(out)


# ============================================================================= helpers
def gen(seed):
    return torch.Generator().manual_seed(seed)


def rand(*shape, seed, scale=1.0):
    return scale * torch.randn(*shape, generator=gen(seed), dtype=DT)


def make_dense(I, Din, J, Dout, per_dim=False, relu=False, squash="exp", seed=0):
    layer = TrainableDenseCapsules(I, Din, J, Dout, squash=squash, coupling_per_dim=per_dim,
                                   relu=relu).double()
    with torch.no_grad():  # O(1) transforms and couplings of both signs, not summing to one
        layer.weight.copy_(rand(*layer.weight.shape, seed=seed, scale=Din ** -0.5))
        layer.coupling.copy_(rand(*layer.coupling.shape, seed=seed + 1))
    return layer


def make_conv(Cin, Din, Cout, Dout, k, stride=1, padding=0, pose_rows=1, input_size=None,
              relu=False, squash="exp", seed=0):
    layer = TrainableConvCapsules(Cin, Din, Cout, Dout, k, stride, padding, pose_rows, input_size,
                                  squash=squash, relu=relu).double()
    with torch.no_grad():
        layer.weight.copy_(rand(*layer.weight.shape, seed=seed, scale=(Din // pose_rows) ** -0.5))
        layer.coupling.copy_(rand(*layer.coupling.shape, seed=seed + 1))
    return layer


# ============================================================================= routing function
@pytest.mark.parametrize("per_dim", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("squash", ["exp", "sabour"])
def test_trainable_routing_matches_reference(per_dim, relu, squash):
    B, I, J, D = 2, 4, 3, 5
    u_hat = rand(B, I, J, D, seed=1)
    c = rand(*((I, J, D) if per_dim else (I, J)), seed=2)
    from capsgen.nn import get_squash
    v = trainable_routing(u_hat, c, get_squash(squash), relu)
    assert v.shape == (B, J, D)
    assert torch.allclose(v, ref_trainable_routing(u_hat, c, squash, relu), **TOL)


def test_trainable_routing_is_not_normalised():
    # Scaling every coefficient by 3 must scale every s_j by 3 (a softmax or a sum-to-one
    # normalisation would undo it): check through the exp-squash's length 1 - e^-||s||.
    u_hat = rand(2, 4, 3, 5, seed=3)
    c = rand(4, 3, seed=4).abs() + 0.1
    s = torch.einsum("bijd,ij->bjd", u_hat, c)
    v3 = trainable_routing(u_hat, 3 * c)
    assert torch.allclose(v3.norm(dim=-1), 1 - torch.exp(-3 * s.norm(dim=-1)), **TOL)


def test_trainable_routing_rejects_bad_shapes():
    with pytest.raises(ValueError):
        trainable_routing(torch.zeros(2, 3, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError):
        trainable_routing(torch.zeros(2, 3, 4, 5), torch.zeros(4, 3))


# ============================================================================= dense layer
DENSE_SHAPES = [(2, 3, 2, 2, 3), (3, 5, 4, 3, 2), (1, 4, 3, 1, 4)]  # (B, I, Din, J, Dout)


@pytest.mark.parametrize("shape", DENSE_SHAPES)
@pytest.mark.parametrize("per_dim", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_dense_matches_reference(shape, per_dim, relu):
    B, I, Din, J, Dout = shape
    layer = make_dense(I, Din, J, Dout, per_dim, relu, seed=sum(shape))
    u = rand(B, I, Din, seed=7)
    v = layer(u)
    assert v.shape == (B, J, Dout)
    ref = ref_trainable_dense(u, layer.weight, layer.coupling, relu=relu)
    assert torch.allclose(v, ref, **TOL)


def test_dense_sabour_squash_matches_reference():
    layer = make_dense(4, 3, 3, 2, squash="sabour", seed=8)
    u = rand(2, 4, 3, seed=9)
    ref = ref_trainable_dense(u, layer.weight, layer.coupling, squash="sabour")
    # Sabour's squash with the epsilon inside the square root departs from the exact one by
    # ~eps / (2 ||s||^2) relatively; one capsule here has ||s|| ~ 0.03 (~6e-6).
    assert torch.allclose(layer(u), ref, rtol=2e-5, atol=1e-10)


def test_dense_folded_equals_votes_formulation():
    # The layer folds c into W; the votes path (capsule_votes + trainable_routing) must agree.
    layer = make_dense(6, 3, 4, 5, seed=10)
    u = rand(3, 6, 3, seed=11)
    votes = capsule_votes(u, layer.weight)
    assert torch.allclose(layer(u), trainable_routing(votes, layer.coupling), rtol=1e-12, atol=1e-13)


def test_dense_single_parent_is_not_a_no_op():
    # With J = 1 dynamic routing's coupling is 1 for every child; here each child keeps a free
    # weight: changing one child's coefficient changes the output.
    layer = make_dense(4, 3, 1, 2, seed=12)
    u = rand(2, 4, 3, seed=13)
    before = layer(u)
    with torch.no_grad():
        layer.coupling[0, 0] += 1.0
    assert not torch.allclose(before, layer(u), atol=1e-6)


def test_dense_return_coupling_and_batch_independence():
    layer = make_dense(5, 3, 3, 4, seed=14)
    u = rand(4, 5, 3, seed=15)
    v, c = layer(u, return_coupling=True)
    assert c.shape == (4, 5, 3) and torch.equal(c[2], layer.coupling)
    stacked = torch.cat([layer(u[b:b + 1]) for b in range(4)])
    assert torch.allclose(v, stacked, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(v[0], v[1], atol=1e-3)


def test_dense_rejects_wrong_shape():
    layer = make_dense(5, 3, 2, 4)
    for bad in (torch.zeros(2, 4, 3, dtype=DT), torch.zeros(2, 5, 2, dtype=DT), torch.zeros(5, 3, dtype=DT)):
        with pytest.raises(ValueError):
            layer(bad)


@pytest.mark.parametrize("per_dim", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_dense_gradients_match_reference(per_dim, relu):
    layer = make_dense(4, 3, 3, 2, per_dim, relu, seed=16)
    u0 = rand(2, 4, 3, seed=17)
    g = rand(2, 3, 2, seed=18)
    u = u0.clone().requires_grad_()
    (layer(u) * g).sum().backward()
    u_r = u0.clone().requires_grad_()
    w_r = layer.weight.detach().clone().requires_grad_()
    c_r = layer.coupling.detach().clone().requires_grad_()
    (ref_trainable_dense(u_r, w_r, c_r, relu=relu) * g).sum().backward()
    for got, want in ((u.grad, u_r.grad), (layer.weight.grad, w_r.grad), (layer.coupling.grad, c_r.grad)):
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-9)
    assert layer.coupling.grad.abs().max() > 1e-3  # the couplings really are trained


@pytest.mark.parametrize("per_dim", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_gradcheck_dense(per_dim, relu):
    layer = make_dense(3, 2, 2, 3, per_dim, relu, seed=19)
    u = rand(2, 3, 2, seed=20).requires_grad_()
    w = layer.weight.detach().clone().requires_grad_()
    c = layer.coupling.detach().clone().requires_grad_()
    assert gradcheck(lambda u, w, c: functional_call(layer, {"weight": w, "coupling": c}, (u,)),
                     (u, w, c))


@pytest.mark.parametrize("how", COUPLING_INITS)
def test_coupling_inits(how):
    I, J = 12, 5
    layer = TrainableDenseCapsules(I, 3, J, 4, coupling_init=how)
    c = layer.coupling.detach()
    if how == "parents":
        assert torch.allclose(c, torch.full((I, J), 1 / J))
    elif how == "children":
        assert torch.allclose(c, torch.full((I, J), 1 / I))
    else:
        assert c.abs().max() <= (3 / I) ** 0.5 and c.std() > 0
    with pytest.raises(ValueError):
        TrainableDenseCapsules(I, 3, J, 4, coupling_init="softmax")


def test_parents_init_starts_like_one_iteration_dynamic_routing():
    # c = 1/J is dynamic routing's first coupling; with the same transforms and squash the two
    # layers give the same output before any training.
    dyn = DenseCapsules(6, 3, 4, 5, routing_iterations=1, squash="exp").double()
    tr = TrainableDenseCapsules(6, 3, 4, 5, squash="exp", coupling_init="parents").double()
    with torch.no_grad():
        tr.weight.copy_(dyn.weight)
    u = rand(3, 6, 3, seed=21)
    assert torch.allclose(tr(u), dyn(u), rtol=1e-12, atol=1e-14)


def test_dense_capsules_factory():
    dyn = dense_capsules("dynamic", 6, 3, 4, 5, routing_iterations=2, squash="exp")
    assert isinstance(dyn, DenseCapsules) and dyn.routing_iterations == 2
    tr = dense_capsules("trainable", 6, 3, 4, 5, squash="exp", init_std=0.05)
    assert isinstance(tr, TrainableDenseCapsules)
    assert tr.weight.shape == dyn.weight.shape
    assert 0.03 < tr.weight.std() < 0.07
    u = torch.rand(2, 6, 3)
    assert tr(u).shape == dyn(u).shape == (2, 4, 5)
    with pytest.raises(ValueError):
        dense_capsules("em", 6, 3, 4, 5)


# ============================================================================= conv layer
CONV_CONFIGS = [
    # (B, Cin, H, W, Din, Cout, Dout, k, stride, padding, pose_rows, per_position, relu)
    (2, 2, 4, 4, 2, 2, 3, 3, 1, 0, 1, True, False),
    (1, 2, 5, 4, 4, 3, 4, 2, 2, 1, 2, True, True),     # 2x2 matrix poses, padding
    (2, 1, 4, 5, 4, 2, 6, 3, 1, 0, 2, False, False),   # 2x2 poses -> 2x3 poses, shared
    (1, 3, 5, 5, 3, 2, 2, 3, 2, 1, 1, False, True),
    (2, 2, 3, 3, 4, 2, 4, 3, 1, 0, 2, True, False),    # kernel covers the grid: one position
]


@pytest.mark.parametrize("cfg", CONV_CONFIGS)
def test_conv_matches_reference(cfg):
    B, Cin, H, W, Din, Cout, Dout, k, stride, padding, rows, per_pos, relu = cfg
    layer = make_conv(Cin, Din, Cout, Dout, k, stride, padding, rows, (H, W) if per_pos else None,
                      relu, seed=H * W + k)
    x = rand(B, Cin, H, W, Din, seed=stride + padding)
    out = layer(x)
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    assert out.shape == (B, Cout, Ho, Wo, Dout)
    assert layer.coupling.shape == ((Ho, Wo, Cin * k * k, Cout) if per_pos else (Cin * k * k, Cout))
    ref = ref_trainable_conv(x, layer.weight, layer.coupling, k, stride, padding, rows, relu=relu)
    assert torch.allclose(out, ref, **TOL), (out - ref).abs().max().item()


def test_conv_shared_equals_per_position_with_equal_couplings():
    shared = make_conv(2, 4, 3, 4, 2, 1, 0, 2, None, seed=30)
    per = make_conv(2, 4, 3, 4, 2, 1, 0, 2, (4, 3), seed=30)
    with torch.no_grad():
        per.weight.copy_(shared.weight)
        per.coupling.copy_(shared.coupling.expand_as(per.coupling))
    x = rand(2, 2, 4, 3, 4, seed=31)
    assert torch.allclose(shared(x), per(x), rtol=1e-12, atol=1e-14)


def test_conv_shared_is_translation_equivariant_per_position_is_not():
    x = rand(1, 1, 4, 5, 2, seed=32)
    shared = make_conv(1, 2, 2, 2, 2, seed=33)
    assert torch.allclose(shared(x[:, :, :, 1:]), shared(x)[:, :, :, 1:], rtol=1e-12, atol=1e-14)
    per = make_conv(1, 2, 2, 2, 2, input_size=(4, 4), seed=33)
    assert not torch.allclose(per(x[:, :, :, 1:]), per(x[:, :, :, :4]), atol=1e-3)


def test_conv_full_kernel_equals_dense_layer_for_vector_poses():
    # One output position whose children are the Cin*k*k capsules in (cin, ky, kx) order and
    # vector poses: the FC layer with W_dense[n, j] = W_conv[n, j]^T.
    Cin, k, Din, Cout, Dout = 2, 3, 2, 3, 4
    conv = make_conv(Cin, Din, Cout, Dout, k, input_size=(k, k), seed=34)
    dense = make_dense(Cin * k * k, Din, Cout, Dout, seed=0)
    with torch.no_grad():
        dense.weight.copy_(conv.weight.transpose(2, 3))
        dense.coupling.copy_(conv.coupling[0, 0])
    x = rand(2, Cin, k, k, Din, seed=35)
    u = x.reshape(2, Cin * k * k, Din)   # (cin, ky, kx) order
    assert torch.allclose(conv(x)[:, :, 0, 0], dense(u), rtol=1e-12, atol=1e-14)


def test_conv_rejects_bad_input():
    layer = make_conv(2, 4, 2, 4, 2, pose_rows=2, input_size=(4, 4))
    for bad in (torch.zeros(1, 3, 4, 4, 4, dtype=DT), torch.zeros(1, 2, 4, 4, 2, dtype=DT),
                torch.zeros(1, 2, 5, 4, 4, dtype=DT), torch.zeros(1, 2, 4, 4, dtype=DT)):
        with pytest.raises(ValueError):
            layer(bad)
    with pytest.raises(ValueError):
        TrainableConvCapsules(2, 6, 2, 4, pose_rows=4)
    with pytest.raises(ValueError):
        TrainableConvCapsules(2, 4, 2, 4, kernel_size=5, input_size=(3, 3))


@pytest.mark.parametrize("per_pos", [False, True])
def test_conv_gradients_match_reference(per_pos):
    layer = make_conv(2, 4, 2, 2, 2, 1, 1, 2, (3, 3) if per_pos else None, relu=True, seed=36)
    x0 = rand(1, 2, 3, 3, 4, seed=37)
    g = rand(1, 2, 4, 4, 2, seed=38)
    x = x0.clone().requires_grad_()
    (layer(x) * g).sum().backward()
    x_r = x0.clone().requires_grad_()
    w_r = layer.weight.detach().clone().requires_grad_()
    c_r = layer.coupling.detach().clone().requires_grad_()
    (ref_trainable_conv(x_r, w_r, c_r, 2, 1, 1, 2, relu=True) * g).sum().backward()
    for got, want in ((x.grad, x_r.grad), (layer.weight.grad, w_r.grad), (layer.coupling.grad, c_r.grad)):
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("per_pos, rows", [(False, 1), (True, 2)])
def test_gradcheck_conv(per_pos, rows):
    layer = make_conv(1, 4, 2, 2 * rows, 2, 1, 1 if per_pos else 0, rows,
                      (3, 3) if per_pos else None, relu=per_pos, seed=39)
    x = rand(1, 1, 3, 3, 4, seed=40).requires_grad_()
    w = layer.weight.detach().clone().requires_grad_()
    c = layer.coupling.detach().clone().requires_grad_()
    assert gradcheck(lambda x, w, c: functional_call(layer, {"weight": w, "coupling": c}, (x,)),
                     (x, w, c))
