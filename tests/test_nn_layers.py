"""capsgen.nn layers (votes, PrimaryCapsules, DenseCapsules, ConvCapsules) against the
loop references of tests/reference_capsules.py, in float64."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck
from torch.func import functional_call

from capsgen.nn import ConvCapsules, DenseCapsules, PrimaryCapsules, capsule_votes, squash

try:
    from reference_capsules import (REF_SQUASHES, ref_conv_capsules, ref_dense_capsules,
                                    ref_primary_flat, ref_primary_grid, ref_squash, ref_votes)
except ImportError:  # tests/ imported as a package
    from tests.reference_capsules import (REF_SQUASHES, ref_conv_capsules, ref_dense_capsules,
                                          ref_primary_flat, ref_primary_grid, ref_squash,
                                          ref_votes)

DT = torch.float64
TOL = dict(rtol=1e-6, atol=1e-9)
GTOL = dict(rtol=1e-5, atol=1e-8)
# Cosine agreement: normalising a short vector with an epsilon inside the square root departs
# from the exact cosine by ~eps / (2 ||x||^2) relatively. Normalising s_j (or v_j) and the votes
# that way keeps the departure ~1e-6 on these inputs; the tolerance below allows that and still
# catches any algorithmic difference. (capsgen currently normalises the *squashed* v_j, whose
# length is ~||s_j||^2, which makes the departure much larger for inactive parents — see
# test_nn_routing.py::test_cosine_coupling_is_scale_invariant and the padded conv case below.)
COS_TOL = dict(rtol=1e-5, atol=1e-5)


def tol(agreement, grad=False):
    if agreement == "cosine":
        return COS_TOL
    return GTOL if grad else TOL


def gen(seed):
    return torch.Generator().manual_seed(seed)


def coherent_weight(shape, seed, noise=0.3):
    """Transforms [N, J, Dout, Din] = M_j + noise: all children's transforms for parent j are
    close, so with inputs that share a direction the votes for j agree roughly and no routed
    sum s_j cancels to ~0 (where capsgen's epsilon legitimately departs from the exact maths)."""
    N, J, Dout, Din = shape
    g = gen(seed)
    m = torch.randn(1, J, Dout, Din, generator=g, dtype=DT) / Din ** 0.5
    return m + noise * torch.randn(N, J, Dout, Din, generator=g, dtype=DT) / Din ** 0.5


def coherent_inputs(shape, seed, noise=0.5):
    """Capsules [..., D] = a shared unit direction + noise, lengths O(1)."""
    g = gen(seed)
    a = torch.randn(shape[-1], generator=g, dtype=DT)
    a = a / a.norm()
    return a + noise * torch.randn(*shape, generator=g, dtype=DT) / shape[-1] ** 0.5


def cotangent(shape, seed=321):
    return torch.randn(shape, generator=gen(seed), dtype=DT)


def make_dense(I, Din, J, Dout, iterations=3, agreement="dot", grad_through=True, squash="sabour",
               seed=0):
    layer = DenseCapsules(I, Din, J, Dout, routing_iterations=iterations, agreement=agreement,
                          grad_through_iterations=grad_through, squash=squash).double()
    with torch.no_grad():
        layer.weight.copy_(coherent_weight(layer.weight.shape, seed))
    return layer


def make_conv(Cin, Din, Cout, Dout, k, stride, padding, iterations=3, agreement="dot",
              grad_through=True, squash="sabour", seed=0):
    layer = ConvCapsules(Cin, Din, Cout, Dout, kernel_size=k, stride=stride, padding=padding,
                         routing_iterations=iterations, agreement=agreement,
                         grad_through_iterations=grad_through, squash=squash).double()
    with torch.no_grad():
        layer.weight.copy_(coherent_weight(layer.weight.shape, seed))
    return layer


# ============================================================================= votes
@pytest.mark.parametrize("B, I, J, Dout, Din", [(1, 1, 1, 1, 1), (2, 3, 4, 5, 2), (3, 4, 2, 3, 6)])
def test_capsule_votes_matches_reference(B, I, J, Dout, Din):
    u = torch.randn(B, I, Din, generator=gen(B + I), dtype=DT)
    w = torch.randn(I, J, Dout, Din, generator=gen(J + Dout), dtype=DT)
    out = capsule_votes(u, w)
    assert out.shape == (B, I, J, Dout)
    assert torch.allclose(out, ref_votes(u, w), rtol=1e-12, atol=1e-12)


def test_capsule_votes_uses_each_pairs_own_matrix():
    # u_hat_{j|i} = W_ij u_i: setting W_ij = (10 i + j) * Identity exposes any index mix-up.
    I, J, D = 3, 4, 2
    w = torch.zeros(I, J, D, D, dtype=DT)
    for i in range(I):
        for j in range(J):
            w[i, j] = (10 * i + j) * torch.eye(D, dtype=DT)
    u = torch.arange(1, 2 * I * D + 1, dtype=DT).view(2, I, D)
    out = capsule_votes(u, w)
    for b in range(2):
        for i in range(I):
            for j in range(J):
                assert torch.equal(out[b, i, j], (10 * i + j) * u[b, i])


def test_gradcheck_capsule_votes():
    u = torch.randn(2, 3, 2, generator=gen(1), dtype=DT, requires_grad=True)
    w = torch.randn(3, 2, 3, 2, generator=gen(2), dtype=DT, requires_grad=True)
    assert gradcheck(capsule_votes, (u, w))


# ============================================================================= PrimaryCapsules
PRIMARY_CONFIGS = [
    # (B, Cin, H, W, num_caps, dim, k, stride, padding, squash)
    (2, 1, 5, 5, 2, 3, 3, 1, 0, "sabour"),
    (1, 2, 6, 7, 3, 2, 3, 2, 1, "sabour"),
    (2, 3, 4, 4, 2, 4, 2, 2, 0, "exp"),
]


def make_primary(Cin, T, D, k, stride, padding, squash="sabour", seed=0):
    layer = PrimaryCapsules(Cin, T, D, kernel_size=k, stride=stride, padding=padding,
                            squash=squash).double()
    with torch.no_grad():
        layer.conv.weight.copy_(torch.randn(layer.conv.weight.shape, generator=gen(seed), dtype=DT))
        layer.conv.bias.copy_(torch.randn(layer.conv.bias.shape, generator=gen(seed + 1), dtype=DT))
    return layer


@pytest.mark.parametrize("cfg", PRIMARY_CONFIGS)
def test_primary_capsules_match_reference(cfg):
    B, Cin, H, W, T, D, k, stride, padding, sq = cfg
    layer = make_primary(Cin, T, D, k, stride, padding, sq, seed=H + W)
    x = torch.randn(B, Cin, H, W, generator=gen(7), dtype=DT)
    grid = layer.forward_grid(x)
    ref = ref_primary_grid(x, layer.conv.weight, layer.conv.bias, T, D, stride, padding,
                           squash=REF_SQUASHES[sq])
    Ho = (H + 2 * padding - k) // stride + 1
    Wo = (W + 2 * padding - k) // stride + 1
    assert grid.shape == (B, T, Ho, Wo, D)
    assert torch.allclose(grid, ref, **TOL)
    flat = layer(x)
    assert flat.shape == (B, T * Ho * Wo, D)
    assert torch.allclose(flat, ref_primary_flat(ref), **TOL)


def test_primary_channel_order_constant_maps():
    # Conv weight 0 and bias b_c make output channel c the constant map b_c. Capsule type t must
    # then be squash(b[t*dim : (t+1)*dim]) at every position.
    T, D = 3, 4
    layer = PrimaryCapsules(2, T, D, kernel_size=3, stride=1).double()
    bias = torch.tensor([(c + 1) * (-1) ** c * 0.25 for c in range(T * D)], dtype=DT)
    with torch.no_grad():
        layer.conv.weight.zero_()
        layer.conv.bias.copy_(bias)
    x = torch.randn(2, 2, 5, 6, generator=gen(3), dtype=DT)
    grid = layer.forward_grid(x)  # [2, T, 3, 4, D]
    assert grid.shape == (2, T, 3, 4, D)
    for t in range(T):
        pose = bias[t * D:(t + 1) * D]
        expected = ref_squash(pose)
        for b in range(2):
            for h in range(3):
                for w in range(4):
                    assert torch.allclose(grid[b, t, h, w], expected, **TOL), (t, h, w)


def test_primary_channel_order_position_dependent():
    # 1x1 conv from one input plane: channel c at (h, w) is wc[c] * x[h, w] + bc[c], a known
    # value for every (channel, position). The capsule (t, h, w) must point along the vector of
    # channels t*dim .. t*dim + dim - 1 at (h, w) (direction before the squash), with the
    # squashed length, and the flat layout must be type-major: n = t*H*W + h*W + w.
    T, D, H, W = 2, 3, 3, 4
    layer = PrimaryCapsules(1, T, D, kernel_size=1, stride=1).double()
    wc = torch.tensor([0.1 * (c + 1) for c in range(T * D)], dtype=DT)
    bc = torch.tensor([0.05 * c * (-1) ** c for c in range(T * D)], dtype=DT)
    with torch.no_grad():
        layer.conv.weight.copy_(wc.view(T * D, 1, 1, 1))
        layer.conv.bias.copy_(bc)
    xmap = torch.tensor([[h - 2.0 * w + 0.5 for w in range(W)] for h in range(H)], dtype=DT)
    x = xmap.view(1, 1, H, W)
    grid = layer.forward_grid(x)
    flat = layer(x)
    for t in range(T):
        for h in range(H):
            for w in range(W):
                pre = torch.stack([wc[t * D + d] * xmap[h, w] + bc[t * D + d] for d in range(D)])
                got = grid[0, t, h, w]
                assert torch.allclose(got / got.norm(), pre / pre.norm(), **TOL), (t, h, w)
                n = pre.norm()
                assert torch.allclose(got.norm(), n * n / (1 + n * n), **TOL)
                assert torch.equal(flat[0, t * H * W + h * W + w], got)


def test_primary_channel_order_discriminates_naive_view():
    # The common bug views the conv output [B, T*D, H, W] directly as [B, -1, D], making capsules
    # out of D neighbouring pixels of one channel. It must not agree with capsgen.
    layer = make_primary(1, 2, 3, 2, 1, 0, seed=5)
    x = torch.randn(1, 1, 4, 4, generator=gen(6), dtype=DT)
    y = layer.conv(x)
    naive = squash(y.reshape(1, -1, 3))
    assert naive.shape == layer(x).shape
    assert not torch.allclose(naive, layer(x), atol=1e-3)


def test_gradcheck_primary_capsules():
    layer = make_primary(2, 2, 3, 2, 1, 0, seed=9)
    x = torch.randn(1, 2, 3, 3, generator=gen(10), dtype=DT, requires_grad=True)
    w = layer.conv.weight.detach().clone().requires_grad_()
    b = layer.conv.bias.detach().clone().requires_grad_()

    def f(x, w, b):
        return functional_call(layer, {"conv.weight": w, "conv.bias": b}, (x,))

    assert gradcheck(f, (x, w, b), fast_mode=True)


# ============================================================================= DenseCapsules
DENSE_SHAPES = [(2, 3, 2, 2, 3), (3, 5, 4, 3, 2), (1, 4, 1, 2, 4)]  # (B, I, Din, J, Dout)


@pytest.mark.parametrize("shape", DENSE_SHAPES)
@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("agreement", ["dot", "cosine"])
def test_dense_capsules_match_reference(shape, iterations, agreement):
    B, I, Din, J, Dout = shape
    layer = make_dense(I, Din, J, Dout, iterations, agreement, seed=sum(shape))
    u = coherent_inputs((B, I, Din), seed=iterations)
    out = layer(u)
    assert out.shape == (B, J, Dout)
    assert torch.allclose(out, ref_dense_capsules(u, layer.weight, iterations, agreement),
                          **tol(agreement))


@pytest.mark.parametrize("agreement", ["dot", "cosine"])
def test_dense_capsules_exp_squash_match_reference(agreement):
    layer = make_dense(4, 3, 3, 2, 3, agreement, squash="exp", seed=11)
    u = coherent_inputs((2, 4, 3), seed=12)
    ref = ref_dense_capsules(u, layer.weight, 3, agreement, squash=REF_SQUASHES["exp"])
    assert torch.allclose(layer(u), ref, **tol(agreement))


def test_dense_capsules_coupling_sums_to_one_over_parents():
    layer = make_dense(5, 2, 3, 4, 3, seed=13)
    u = coherent_inputs((2, 5, 2), seed=14)
    v, c = layer(u, return_coupling=True)
    assert c.shape == (2, 5, 3)
    assert torch.allclose(c.sum(dim=2), torch.ones(2, 5, dtype=DT), **TOL)
    assert torch.allclose(v, layer(u), rtol=0, atol=0)


@pytest.mark.parametrize("agreement", ["dot", "cosine"])
def test_dense_capsules_batch_equals_stacked_samples(agreement):
    # Vectorisation check: no cross-talk between the samples of a batch.
    layer = make_dense(5, 3, 3, 4, 3, agreement, seed=15)
    u = coherent_inputs((4, 5, 3), seed=16)
    full = layer(u)
    stacked = torch.cat([layer(u[b:b + 1]) for b in range(4)])
    assert torch.allclose(full, stacked, rtol=1e-12, atol=1e-14)
    # and the samples really differ (the check is not vacuous)
    assert not torch.allclose(full[0], full[1], atol=1e-3)


def test_dense_capsules_rejects_wrong_shape():
    layer = make_dense(5, 3, 2, 4)
    with pytest.raises(ValueError):
        layer(torch.zeros(2, 4, 3, dtype=DT))
    with pytest.raises(ValueError):
        layer(torch.zeros(2, 5, 2, dtype=DT))
    with pytest.raises(ValueError):
        layer(torch.zeros(5, 3, dtype=DT))


@pytest.mark.parametrize("agreement", ["dot", "cosine"])
@pytest.mark.parametrize("grad_through", [True, False])
def test_dense_capsules_gradients_match_reference(agreement, grad_through):
    layer = make_dense(4, 3, 3, 2, 3, agreement, grad_through, seed=17)
    u0 = coherent_inputs((2, 4, 3), seed=18)
    g = cotangent((2, 3, 2))

    u = u0.clone().requires_grad_()
    (layer(u) * g).sum().backward()

    u_r = u0.clone().requires_grad_()
    w_r = layer.weight.detach().clone().requires_grad_()
    (ref_dense_capsules(u_r, w_r, 3, agreement, detach_inner=not grad_through) * g).sum().backward()
    assert torch.allclose(u.grad, u_r.grad, **tol(agreement, grad=True))
    assert torch.allclose(layer.weight.grad, w_r.grad, **tol(agreement, grad=True))


def test_dense_capsules_grad_flag_changes_weight_gradient():
    grads = []
    for flag in (True, False):
        layer = make_dense(4, 3, 3, 2, 3, grad_through=flag, seed=19)
        u = coherent_inputs((2, 4, 3), seed=20)
        (layer(u) * cotangent((2, 3, 2))).sum().backward()
        grads.append(layer.weight.grad)
    assert not torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("agreement", ["dot", "cosine"])
def test_gradcheck_dense_capsules(agreement):
    layer = make_dense(3, 2, 2, 2, 3, agreement, True, seed=21)
    u = coherent_inputs((2, 3, 2), seed=22).requires_grad_()
    w = layer.weight.detach().clone().requires_grad_()
    assert gradcheck(lambda u, w: functional_call(layer, {"weight": w}, (u,)), (u, w),
                     fast_mode=True)


def test_gradcheck_dense_capsules_no_grad_through_single_iteration():
    # With one iteration the truncated gradient equals the true one.
    layer = make_dense(3, 2, 2, 2, 1, "dot", False, seed=23)
    u = coherent_inputs((2, 3, 2), seed=24).requires_grad_()
    w = layer.weight.detach().clone().requires_grad_()
    assert gradcheck(lambda u, w: functional_call(layer, {"weight": w}, (u,)), (u, w),
                     fast_mode=True)


# ============================================================================= ConvCapsules
CONV_CONFIGS = [
    # (B, Cin, H, W, Din, Cout, Dout, k, stride, padding, iterations, agreement)
    (2, 2, 4, 4, 2, 2, 3, 3, 1, 0, 3, "dot"),
    # cosine + zero padding: border positions have few non-zero children, so short s_j
    (1, 1, 5, 4, 3, 3, 2, 2, 2, 1, 2, "cosine"),
    (2, 2, 3, 3, 2, 2, 2, 2, 1, 1, 1, "dot"),
    (1, 3, 5, 5, 2, 2, 2, 3, 2, 0, 3, "cosine"),
]


@pytest.mark.parametrize("cfg", CONV_CONFIGS)
def test_conv_capsules_match_reference(cfg):
    B, Cin, H, W, Din, Cout, Dout, k, stride, padding, iterations, agreement = cfg
    layer = make_conv(Cin, Din, Cout, Dout, k, stride, padding, iterations, agreement, seed=H * W)
    x = coherent_inputs((B, Cin, H, W, Din), seed=k + stride)
    out = layer(x)
    Ho = (H + 2 * padding - k) // stride + 1
    Wo = (W + 2 * padding - k) // stride + 1
    assert out.shape == (B, Cout, Ho, Wo, Dout)
    ref = ref_conv_capsules(x, layer.weight, k, stride, padding, iterations, agreement)
    assert torch.allclose(out, ref, **tol(agreement)), (out - ref).abs().max().item()


def test_conv_capsules_exp_squash_match_reference():
    layer = make_conv(2, 2, 2, 3, 2, 1, 0, 3, "dot", squash="exp", seed=31)
    x = coherent_inputs((1, 2, 3, 3, 2), seed=32)
    ref = ref_conv_capsules(x, layer.weight, 2, 1, 0, 3, "dot", squash=REF_SQUASHES["exp"])
    assert torch.allclose(layer(x), ref, **TOL)


def test_conv_capsules_full_kernel_equals_dense_capsules():
    # A kernel covering the whole input has one output position whose children are the
    # Cin*k*k capsules in (cin, ky, kx) order: exactly a DenseCapsules layer with that weight.
    Cin, k, Din, Cout, Dout = 2, 3, 2, 3, 2
    conv = make_conv(Cin, Din, Cout, Dout, k, 1, 0, 3, "dot", seed=33)
    dense = make_dense(Cin * k * k, Din, Cout, Dout, 3, "dot", seed=0)
    with torch.no_grad():
        dense.weight.copy_(conv.weight)
    x = coherent_inputs((2, Cin, k, k, Din), seed=34)
    u = torch.stack([torch.stack([x[b, c, ky, kx] for c in range(Cin) for ky in range(k)
                                  for kx in range(k)]) for b in range(2)])
    assert torch.allclose(conv(x)[:, :, 0, 0], dense(u), rtol=1e-12, atol=1e-14)


def test_conv_capsules_batch_equals_stacked_samples():
    layer = make_conv(2, 2, 2, 2, 2, 1, 0, 3, "dot", seed=35)
    x = coherent_inputs((3, 2, 4, 4, 2), seed=36)
    stacked = torch.cat([layer(x[b:b + 1]) for b in range(3)])
    assert torch.allclose(layer(x), stacked, rtol=1e-12, atol=1e-14)


def test_conv_capsules_translation_equivariance():
    # Shared transforms + per-position routing: shifting the input by one stride shifts the
    # output by one position (no padding, so interior positions only).
    layer = make_conv(1, 2, 2, 2, 2, 1, 0, 3, "dot", seed=37)
    x = coherent_inputs((1, 1, 4, 5, 2), seed=38)
    out = layer(x)
    shifted = layer(x[:, :, :, 1:])
    assert torch.allclose(shifted, out[:, :, :, 1:], rtol=1e-12, atol=1e-14)


def test_conv_capsules_rejects_wrong_shape():
    layer = make_conv(2, 3, 2, 2, 2, 1, 0)
    with pytest.raises(ValueError):
        layer(torch.zeros(1, 3, 4, 4, 3, dtype=DT))
    with pytest.raises(ValueError):
        layer(torch.zeros(1, 2, 4, 4, 2, dtype=DT))
    with pytest.raises(ValueError):
        layer(torch.zeros(1, 2, 4, 4, dtype=DT))


@pytest.mark.parametrize("grad_through", [True, False])
def test_conv_capsules_gradients_match_reference(grad_through):
    layer = make_conv(2, 2, 2, 2, 2, 1, 1, 3, "dot", grad_through, seed=39)
    x0 = coherent_inputs((1, 2, 3, 3, 2), seed=40)
    g = cotangent((1, 2, 4, 4, 2))
    x = x0.clone().requires_grad_()
    (layer(x) * g).sum().backward()
    x_r = x0.clone().requires_grad_()
    w_r = layer.weight.detach().clone().requires_grad_()
    ref = ref_conv_capsules(x_r, w_r, 2, 1, 1, 3, "dot", detach_inner=not grad_through)
    (ref * g).sum().backward()
    assert torch.allclose(x.grad, x_r.grad, **GTOL)
    assert torch.allclose(layer.weight.grad, w_r.grad, **GTOL)


@pytest.mark.parametrize("agreement", ["dot", "cosine"])
def test_gradcheck_conv_capsules(agreement):
    layer = make_conv(1, 2, 2, 2, 2, 1, 0, 3, agreement, True, seed=41)
    x = coherent_inputs((1, 1, 3, 3, 2), seed=42).requires_grad_()
    w = layer.weight.detach().clone().requires_grad_()
    assert gradcheck(lambda x, w: functional_call(layer, {"weight": w}, (x,)), (x, w),
                     fast_mode=True)
