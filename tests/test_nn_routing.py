"""capsgen.nn.dynamic_routing against the scalar-loop reference of Sabour et al.'s procedure 1.

Covers both agreements (dot, cosine), both normalisations (softmax over parents j — Sabour —
and over children i — the products-of-expert-capsules paper), 1–3 iterations, batch > 1,
gradients with and without gradient flow through the inner iterations, and the pitfalls
listed in DESIGN.md.
"""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from capsgen.nn import dynamic_routing, squash, squash_exp

try:
    from reference_capsules import ref_frozen_routing, ref_routing, ref_squash, ref_squash_exp
except ImportError:  # tests/ imported as a package
    from tests.reference_capsules import (ref_frozen_routing, ref_routing, ref_squash,
                                          ref_squash_exp)

DT = torch.float64
TOL = dict(rtol=1e-6, atol=1e-9)
GTOL = dict(rtol=1e-5, atol=1e-8)


def rand_votes(B, I, J, D, seed, min_norm=0.3, max_norm=2.0):
    """Well-conditioned votes u_hat [B, I, J, D] with norms in [min_norm, max_norm].

    Every vote for parent j lies within 53 degrees of a random direction m_j (vote = m_j + 0.8 z,
    ||z|| <= 1), so no weighted sum s_j can cancel to ~0 whatever the couplings are. Near
    s_j = 0 capsgen's epsilon-inside-the-square-root (a deliberate choice) departs from the
    exact reference; these inputs keep that effect below the test tolerances. The votes still
    disagree enough for routing to move the couplings.
    """
    g = torch.Generator().manual_seed(seed)

    def unit(*shape):
        x = torch.randn(*shape, generator=g, dtype=DT)
        return x / x.norm(dim=-1, keepdim=True)

    m = unit(B, 1, J, D)
    z = unit(B, I, J, D) * torch.rand(B, I, J, 1, generator=g, dtype=DT)
    x = m + 0.8 * z
    x = x / x.norm(dim=-1, keepdim=True)
    return x * (min_norm + (max_norm - min_norm) * torch.rand(B, I, J, 1, generator=g, dtype=DT))


def cotangent(shape, seed=123):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


SHAPES = [(2, 3, 2, 4), (3, 5, 4, 3), (1, 2, 3, 2)]
ITERS = [1, 2, 3]
AGREEMENTS = ["dot", "cosine"]
NORMALIZE = ["parents", "children"]


# ----------------------------------------------------------------------------- forward vs reference
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("iterations", ITERS)
@pytest.mark.parametrize("agreement", AGREEMENTS)
@pytest.mark.parametrize("normalize", NORMALIZE)
def test_routing_matches_reference(shape, iterations, agreement, normalize):
    u_hat = rand_votes(*shape, seed=sum(shape) + iterations)
    v, c = dynamic_routing(u_hat, iterations, agreement, normalize=normalize, return_coupling=True)
    v_ref, c_ref = ref_routing(u_hat, iterations, agreement, normalize)
    assert v.shape == (shape[0], shape[2], shape[3])
    assert c.shape == shape[:3]
    assert torch.allclose(v, v_ref, **TOL)
    assert torch.allclose(c, c_ref, **TOL)


@pytest.mark.parametrize("iterations", ITERS)
@pytest.mark.parametrize("agreement", AGREEMENTS)
def test_routing_with_exp_squash_matches_reference(iterations, agreement):
    u_hat = rand_votes(2, 4, 3, 3, seed=40 + iterations)
    v, c = dynamic_routing(u_hat, iterations, agreement, squash_fn=squash_exp, return_coupling=True)
    v_ref, c_ref = ref_routing(u_hat, iterations, agreement, squash=ref_squash_exp)
    assert torch.allclose(v, v_ref, **TOL)
    assert torch.allclose(c, c_ref, **TOL)


def test_default_arguments_are_sabour():
    # Sabour et al.: r = 3 iterations, dot-product agreement, softmax over parents.
    u_hat = rand_votes(2, 4, 3, 5, seed=50)
    v_ref, _ = ref_routing(u_hat, 3, "dot", "parents")
    assert torch.allclose(dynamic_routing(u_hat), v_ref, **TOL)


def test_grad_flag_does_not_change_forward():
    u_hat = rand_votes(2, 4, 3, 5, seed=51)
    for agreement in AGREEMENTS:
        a = dynamic_routing(u_hat, 3, agreement, grad_through_iterations=True)
        b = dynamic_routing(u_hat, 3, agreement, grad_through_iterations=False)
        assert torch.allclose(a, b, rtol=0, atol=0)


def test_batch_has_no_cross_talk():
    u_hat = rand_votes(4, 5, 3, 4, seed=52)
    for normalize in NORMALIZE:
        full = dynamic_routing(u_hat, 3, normalize=normalize)
        per = torch.cat([dynamic_routing(u_hat[b:b + 1], 3, normalize=normalize) for b in range(4)])
        assert torch.allclose(full, per, **TOL)


def test_agreements_differ():
    # dot and cosine agreement are different algorithms once there is an update (r >= 2).
    u_hat = rand_votes(2, 5, 3, 4, seed=53)
    assert not torch.allclose(dynamic_routing(u_hat, 3, "dot"), dynamic_routing(u_hat, 3, "cosine"),
                              atol=1e-6)


# ----------------------------------------------------------------------------- pitfalls
@pytest.mark.parametrize("agreement", AGREEMENTS)
@pytest.mark.parametrize("iterations", ITERS)
def test_coupling_sums_to_one_over_parents(agreement, iterations):
    u_hat = rand_votes(3, 5, 4, 3, seed=60 + iterations)
    _, c = dynamic_routing(u_hat, iterations, agreement, return_coupling=True)
    assert (c > 0).all()
    assert torch.allclose(c.sum(dim=2), torch.ones(3, 5, dtype=DT), **TOL)
    if iterations > 1:
        # and NOT over the children (I != J, so a children softmax would show here)
        assert not torch.allclose(c.sum(dim=1), torch.ones(3, 4, dtype=DT), atol=1e-3)


def test_children_normalisation_sums_over_children_and_differs():
    u_hat = rand_votes(2, 5, 3, 4, seed=70)
    v_par, c_par = dynamic_routing(u_hat, 3, return_coupling=True)
    v_ch, c_ch = dynamic_routing(u_hat, 3, normalize="children", return_coupling=True)
    assert torch.allclose(c_ch.sum(dim=1), torch.ones(2, 3, dtype=DT), **TOL)
    # The softmax-over-children variant is a different algorithm: different c and v.
    assert not torch.allclose(c_par, c_ch, atol=1e-3)
    assert not torch.allclose(v_par, v_ch, atol=1e-3)
    # ... and the reference agrees that capsgen's default is the parents one.
    v_ref_par, _ = ref_routing(u_hat, 3, "dot", "parents")
    v_ref_ch, _ = ref_routing(u_hat, 3, "dot", "children")
    assert torch.allclose(v_par, v_ref_par, **TOL)
    assert not torch.allclose(v_par, v_ref_ch, atol=1e-3)


def test_one_iteration_is_uniform_coupling():
    u_hat = rand_votes(2, 4, 3, 2, seed=71)
    v, c = dynamic_routing(u_hat, 1, return_coupling=True)
    assert torch.allclose(c, torch.full_like(c, 1 / 3), **TOL)
    assert torch.allclose(v, squash(u_hat.sum(dim=1) / 3), **TOL)


@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
@pytest.mark.parametrize("agreement", AGREEMENTS)
def test_single_parent_is_a_no_op(iterations, agreement):
    # J = 1 with softmax over parents: c == 1, v = squash(sum_i u_hat_i), whatever r is.
    u_hat = rand_votes(3, 4, 1, 5, seed=80 + iterations)
    v, c = dynamic_routing(u_hat, iterations, agreement, return_coupling=True)
    assert torch.equal(c, torch.ones_like(c))
    expected = torch.stack([ref_squash(u_hat[b, :, 0].sum(dim=0)) for b in range(3)]).unsqueeze(1)
    assert torch.allclose(v, expected, **TOL)


def test_single_parent_children_normalisation_is_not_a_no_op():
    # Discriminates the previous test: with the children softmax a single parent gets
    # c = 1/I at r = 1 and routing does change c at r >= 2.
    u_hat = rand_votes(2, 4, 1, 3, seed=90)
    _, c1 = dynamic_routing(u_hat, 1, normalize="children", return_coupling=True)
    _, c3 = dynamic_routing(u_hat, 3, normalize="children", return_coupling=True)
    assert torch.allclose(c1, torch.full_like(c1, 0.25), **TOL)
    assert not torch.allclose(c3, c1, atol=1e-4)


def test_cosine_coupling_does_not_depend_on_squash_magnitude():
    # Hauser §2.2: with cosine agreement only directions matter, so Sabour's and the exp squash
    # (same direction, different length) give identical coupling; with dot agreement they differ.
    u_hat = rand_votes(2, 5, 3, 4, seed=91)
    _, c_sab = dynamic_routing(u_hat, 3, "cosine", squash_fn=squash, return_coupling=True)
    _, c_exp = dynamic_routing(u_hat, 3, "cosine", squash_fn=squash_exp, return_coupling=True)
    assert torch.allclose(c_sab, c_exp, **TOL)
    _, d_sab = dynamic_routing(u_hat, 3, "dot", squash_fn=squash, return_coupling=True)
    _, d_exp = dynamic_routing(u_hat, 3, "dot", squash_fn=squash_exp, return_coupling=True)
    assert not torch.allclose(d_sab, d_exp, atol=1e-4)


@pytest.mark.parametrize("scale", [1.0, 0.1, 0.03, 0.01])
def test_cosine_coupling_is_scale_invariant(scale):
    # Cosine agreement only sees directions, and squash keeps the direction of s_j, so scaling
    # every vote by the same factor must not change the couplings (exact in the reference).
    # Votes of norm ~0.01 are what DenseCapsules' default init_std=0.01 produces. The epsilon of
    # a safe norm may cost a little accuracy at small scales (normalising s_j rather than the
    # squashed v_j, whose length is ~||s_j||^2, keeps it ~1e-4 here), but not 1e-3 on a coupling.
    u_hat = rand_votes(2, 5, 3, 4, seed=3)
    _, c_ref = ref_routing(u_hat, 3, "cosine")
    _, c_ref_scaled = ref_routing(u_hat * scale, 3, "cosine")
    assert torch.allclose(c_ref_scaled, c_ref, rtol=0, atol=1e-9)  # the reference is invariant
    _, c = dynamic_routing(u_hat * scale, 3, "cosine", return_coupling=True)
    assert torch.allclose(c, c_ref, rtol=0, atol=1e-3), (c - c_ref).abs().max().item()


@pytest.mark.parametrize("agreement", AGREEMENTS)
@pytest.mark.parametrize("grad_through", [True, False])
def test_zero_votes_finite_values_and_gradients(agreement, grad_through):
    # All-zero votes (e.g. from zero-padded positions): finite v, c and gradients.
    u_hat = torch.zeros(2, 3, 2, 4, dtype=DT, requires_grad=True)
    v, c = dynamic_routing(u_hat, 3, agreement, grad_through, return_coupling=True)
    assert torch.isfinite(v).all() and torch.isfinite(c).all()
    assert torch.equal(v, torch.zeros_like(v))
    (v * cotangent(v.shape)).sum().backward()
    assert torch.isfinite(u_hat.grad).all()


@pytest.mark.parametrize("agreement", AGREEMENTS)
def test_some_zero_votes_finite_gradients(agreement):
    u_hat = rand_votes(2, 4, 3, 3, seed=92)
    u_hat[:, 1] = 0.0
    u_hat.requires_grad_()
    v = dynamic_routing(u_hat, 3, agreement)
    (v * cotangent(v.shape)).sum().backward()
    assert torch.isfinite(v).all() and torch.isfinite(u_hat.grad).all()


def test_invalid_arguments():
    u_hat = rand_votes(1, 2, 2, 2, seed=93)
    with pytest.raises(ValueError):
        dynamic_routing(u_hat[0], 3)  # [I, J, D] without the batch dim
    with pytest.raises(ValueError):
        dynamic_routing(u_hat, 0)
    with pytest.raises(ValueError):
        dynamic_routing(u_hat, 3, agreement="em")
    with pytest.raises(ValueError):
        dynamic_routing(u_hat, 3, normalize="both")


# ----------------------------------------------------------------------------- gradients
def _grad(fn, u_hat, seed=7):
    x = u_hat.detach().clone().requires_grad_()
    out = fn(x)
    (out * cotangent(out.shape, seed)).sum().backward()
    return x.grad


@pytest.mark.parametrize("iterations", ITERS)
@pytest.mark.parametrize("agreement", AGREEMENTS)
@pytest.mark.parametrize("normalize", NORMALIZE)
def test_gradcheck_grad_through_iterations(iterations, agreement, normalize):
    # fast_mode checks random projections v^T J u of the Jacobian against finite differences
    # (sound, and several times faster); one full-Jacobian check follows.
    u_hat = rand_votes(2, 3, 2, 3, seed=100 + iterations).requires_grad_()
    assert gradcheck(lambda x: dynamic_routing(x, iterations, agreement, True, normalize=normalize),
                     (u_hat,), fast_mode=True)


def test_gradcheck_grad_through_iterations_full_jacobian():
    u_hat = rand_votes(1, 3, 2, 2, seed=99).requires_grad_()
    assert gradcheck(lambda x: dynamic_routing(x, 3, "dot", True), (u_hat,))


@pytest.mark.parametrize("agreement", AGREEMENTS)
def test_gradcheck_no_grad_through_iterations_one_iteration(agreement):
    # With r = 1 there is no inner iteration: the truncated gradient is the true one.
    u_hat = rand_votes(2, 3, 2, 3, seed=110).requires_grad_()
    assert gradcheck(lambda x: dynamic_routing(x, 1, agreement, False), (u_hat,))


@pytest.mark.parametrize("iterations", [2, 3])
@pytest.mark.parametrize("agreement", AGREEMENTS)
def test_no_grad_through_iterations_is_frozen_coupling_jacobian(iterations, agreement):
    # With grad_through_iterations=False the gradient is, by definition, the Jacobian of
    # x -> squash(sum_i c_ij(u0) x_ij) at x = u0, the couplings frozen at their routed value.
    # Check capsgen's analytic Jacobian against central finite differences of the reference
    # frozen-coupling map (couplings from the reference routing); and check that gradcheck of
    # the raw function *fails* (the truncated gradient is not the gradient of the forward map).
    u0 = rand_votes(1, 3, 2, 3, seed=120 + iterations)
    _, c_ref = ref_routing(u0, iterations, agreement)
    jac = torch.autograd.functional.jacobian(
        lambda x: dynamic_routing(x, iterations, agreement, False), u0)
    h = 1e-6
    num = torch.zeros_like(jac)
    flat = u0.reshape(-1)
    for n in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[n] = h
        plus = ref_frozen_routing((flat + e).view_as(u0), c_ref)
        minus = ref_frozen_routing((flat - e).view_as(u0), c_ref)
        num.view(*plus.shape, -1)[..., n] = (plus - minus) / (2 * h)
    assert torch.allclose(jac, num, rtol=1e-5, atol=1e-7)
    assert not gradcheck(lambda x: dynamic_routing(x, iterations, agreement, False),
                         (u0.clone().requires_grad_(),), raise_exception=False)


@pytest.mark.parametrize("iterations", ITERS)
@pytest.mark.parametrize("agreement", AGREEMENTS)
@pytest.mark.parametrize("normalize", NORMALIZE)
def test_gradient_matches_reference_through_iterations(iterations, agreement, normalize):
    u_hat = rand_votes(2, 4, 3, 3, seed=130 + iterations)
    g = _grad(lambda x: dynamic_routing(x, iterations, agreement, True, normalize=normalize), u_hat)
    g_ref = _grad(lambda x: ref_routing(x, iterations, agreement, normalize)[0], u_hat)
    assert torch.allclose(g, g_ref, **GTOL)


@pytest.mark.parametrize("iterations", ITERS)
@pytest.mark.parametrize("agreement", AGREEMENTS)
@pytest.mark.parametrize("normalize", NORMALIZE)
def test_gradient_matches_detached_reference(iterations, agreement, normalize):
    u_hat = rand_votes(2, 4, 3, 3, seed=140 + iterations)
    g = _grad(lambda x: dynamic_routing(x, iterations, agreement, False, normalize=normalize),
              u_hat)
    g_ref = _grad(lambda x: ref_routing(x, iterations, agreement, normalize,
                                        detach_inner=True)[0], u_hat)
    assert torch.allclose(g, g_ref, **GTOL)


@pytest.mark.parametrize("agreement", AGREEMENTS)
def test_gradient_with_exp_squash_matches_reference(agreement):
    u_hat = rand_votes(2, 4, 3, 3, seed=150)
    g = _grad(lambda x: dynamic_routing(x, 3, agreement, True, squash_exp), u_hat)
    g_ref = _grad(lambda x: ref_routing(x, 3, agreement, squash=ref_squash_exp)[0], u_hat)
    assert torch.allclose(g, g_ref, **GTOL)


@pytest.mark.parametrize("agreement", AGREEMENTS)
@pytest.mark.parametrize("normalize", NORMALIZE)
def test_grad_flag_matters_only_with_inner_iterations(agreement, normalize):
    u_hat = rand_votes(2, 4, 3, 3, seed=160)
    for iterations in (1, 2, 3):
        g_on = _grad(lambda x: dynamic_routing(x, iterations, agreement, True, normalize=normalize),
                     u_hat)
        g_off = _grad(
            lambda x: dynamic_routing(x, iterations, agreement, False, normalize=normalize), u_hat)
        if iterations == 1:
            assert torch.allclose(g_on, g_off, rtol=0, atol=1e-12)
        else:
            assert not torch.allclose(g_on, g_off, rtol=1e-3, atol=1e-6), iterations


# ----------------------------------------------------------------------------- fused dot routing
# Dot agreement with the softmax over parents runs through a hand-written backward
# (routing._DotRouting). Its gradient must equal autograd's gradient of the scalar-loop
# reference — with and without gradient through the inner iterations, for either squash, and
# for votes laid out as capsule_votes returns them (a transposed, non-contiguous view).
@pytest.mark.parametrize("iterations", [1, 2, 3, 4])
@pytest.mark.parametrize("grad_through", [True, False])
@pytest.mark.parametrize("squash_pair", [(squash, ref_squash), (squash_exp, ref_squash_exp)])
def test_fused_backward_matches_reference_autograd(iterations, grad_through, squash_pair):
    fn, ref_fn = squash_pair
    base = rand_votes(3, 5, 4, 3, seed=300 + iterations)
    g = cotangent((3, 4, 3), seed=7)
    # same values, memory laid out [I, B, J, D] like capsule_votes' output
    strided = base.transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    assert not strided.is_contiguous()
    v = dynamic_routing(strided, iterations, "dot", grad_through, fn)
    (v * g).sum().backward()
    ref_in = base.clone().requires_grad_()
    v_ref, _ = ref_routing(ref_in, iterations, "dot", squash=ref_fn, detach_inner=not grad_through)
    (v_ref * g).sum().backward()
    assert torch.allclose(v, v_ref, **TOL)
    assert torch.allclose(strided.grad, ref_in.grad, **GTOL)


def test_fused_routing_refuses_double_backward_loudly():
    # The hand-written backward is not itself differentiable; a second-order use (e.g. a
    # gradient penalty) must fail with an error, never return a silently wrong Hessian term.
    u_hat = rand_votes(2, 3, 2, 3, seed=5).requires_grad_()
    (grad,) = torch.autograd.grad(dynamic_routing(u_hat, 3).sum(), u_hat, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


def test_fused_routing_without_grad_matches_with_grad():
    u_hat = rand_votes(2, 6, 3, 4, seed=8)
    with torch.no_grad():
        v0, c0 = dynamic_routing(u_hat, 3, return_coupling=True)
    v1, c1 = dynamic_routing(u_hat.clone().requires_grad_(), 3, return_coupling=True)
    assert torch.equal(v0, v1.detach()) and torch.equal(c0, c1)
    assert c1.shape == (2, 6, 3) and not c1.requires_grad
