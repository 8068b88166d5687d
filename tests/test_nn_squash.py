"""capsgen.nn.squash against the per-vector references of tests/reference_capsules.py.

Sabour eq. 1: v = ||s||^2/(1+||s||^2) s/||s||; exp-squash (G-CapsNet): v = (1-e^-||s||) s/||s||;
unsquash is the inverse of Sabour's squash. Everything in float64 with tight tolerances.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

from capsgen.nn import get_squash, safe_norm, squash, squash_exp, unsquash

try:
    from reference_capsules import ref_squash, ref_squash_exp, ref_squash_last, ref_unsquash
except ImportError:  # tests/ imported as a package
    from tests.reference_capsules import ref_squash, ref_squash_exp, ref_squash_last, ref_unsquash

DT = torch.float64
TOL = dict(rtol=1e-6, atol=1e-9)


def rand_vectors(shape, seed, min_norm=0.2, max_norm=4.0):
    """Random vectors along the last dim with norms in [min_norm, max_norm] (away from 0,
    where capsgen's epsilon-in-the-sqrt legitimately departs from the exact formula)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=DT)
    x = x / x.norm(dim=-1, keepdim=True)
    n = min_norm + (max_norm - min_norm) * torch.rand(*shape[:-1], 1, generator=g, dtype=DT)
    return x * n


SHAPES = [(5, 2), (3, 4, 8), (2, 3, 2, 16), (1, 1)]


# ----------------------------------------------------------------------------- vs reference
@pytest.mark.parametrize("shape", SHAPES)
def test_squash_matches_reference(shape):
    s = rand_vectors(shape, seed=1)
    assert torch.allclose(squash(s), ref_squash_last(s, ref_squash), **TOL)


@pytest.mark.parametrize("shape", SHAPES)
def test_squash_exp_matches_reference(shape):
    s = rand_vectors(shape, seed=2)
    assert torch.allclose(squash_exp(s), ref_squash_last(s, ref_squash_exp), **TOL)


@pytest.mark.parametrize("shape", SHAPES)
def test_unsquash_matches_reference(shape):
    v = rand_vectors(shape, seed=3, min_norm=0.05, max_norm=0.95)
    assert torch.allclose(unsquash(v), ref_squash_last(v, ref_unsquash), **TOL)


@pytest.mark.parametrize("fn", [squash, squash_exp, unsquash])
def test_dim_argument_selects_pose_axis(fn):
    s = rand_vectors((2, 3, 5), seed=4, min_norm=0.1, max_norm=0.9)  # lengths < 1 for unsquash
    moved = s.movedim(-1, 1)  # pose dims on axis 1: [2, 5, 3]
    assert torch.allclose(fn(moved, dim=1), fn(s).movedim(-1, 1), **TOL)


def test_reference_unsquash_inverts_reference_squash():
    # Sanity of the references themselves.
    s = rand_vectors((6, 3), seed=5)
    assert torch.allclose(ref_squash_last(ref_squash_last(s, ref_squash), ref_unsquash), s, **TOL)


# ----------------------------------------------------------------------------- exact lengths
@pytest.mark.parametrize("n", [0.1, 0.5, 1.0, 2.0, 3.0, 10.0])
def test_squash_length_is_n2_over_1_plus_n2(n):
    direction = torch.tensor([3.0, -4.0, 12.0], dtype=DT) / 13.0
    s = n * direction
    v = squash(s)
    assert math.isclose(v.norm().item(), n * n / (1.0 + n * n), rel_tol=1e-6)
    # direction preserved
    assert torch.allclose(v / v.norm(), direction, **TOL)


@pytest.mark.parametrize("n", [0.1, 0.5, 1.0, 2.0, 3.0, 10.0])
def test_squash_exp_length_is_1_minus_exp_minus_n(n):
    direction = torch.tensor([1.0, 2.0, -2.0], dtype=DT) / 3.0
    v = squash_exp(n * direction)
    assert math.isclose(v.norm().item(), 1.0 - math.exp(-n), rel_tol=1e-6)
    assert torch.allclose(v / v.norm(), direction, **TOL)


def test_squash_and_squash_exp_differ():
    # Discriminates the two non-linearities (a mix-up would pass the length tests above only
    # by accident): at ||s|| = 1 Sabour gives 1/2, exp-squash gives 1 - 1/e.
    s = torch.tensor([1.0, 0.0], dtype=DT)
    assert math.isclose(squash(s).norm().item(), 0.5, rel_tol=1e-6)
    assert math.isclose(squash_exp(s).norm().item(), 1 - math.exp(-1), rel_tol=1e-6)


def test_unsquash_inverts_squash():
    s = rand_vectors((4, 3, 6), seed=6, min_norm=0.3, max_norm=5.0)
    assert torch.allclose(unsquash(squash(s)), s, rtol=1e-6, atol=1e-9)


def test_unsquash_inverts_squash_small_vectors():
    # For short s the epsilon inside both square roots matters: ||squash(s)|| ~ ||s||^2 is tiny
    # and unsquash divides by its square root. At ||s|| = 0.1 the round trip is still within
    # ~3e-5 relative (eps = 1e-8); this bounds how far the epsilon may pull the inverse.
    s = rand_vectors((4, 6), seed=60, min_norm=0.1, max_norm=0.3)
    assert torch.allclose(unsquash(squash(s)), s, rtol=1e-4, atol=1e-9)


def test_squash_inverts_unsquash():
    v = rand_vectors((4, 3, 6), seed=7, min_norm=0.05, max_norm=0.95)
    assert torch.allclose(squash(unsquash(v)), v, rtol=1e-6, atol=1e-9)


def test_unsquash_length_formula():
    # ||unsquash(v)|| = sqrt(r / (1 - r)) for r = ||v||.
    for r in (0.1, 0.5, 0.9):
        v = torch.tensor([0.0, r, 0.0], dtype=DT)
        assert math.isclose(unsquash(v).norm().item(), math.sqrt(r / (1 - r)), rel_tol=1e-6)


def test_unsquash_at_or_beyond_unit_length_is_finite():
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.6, 0.8]], dtype=DT, requires_grad=True)
    out = unsquash(v)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(v.grad).all()


def test_lengths_below_one():
    s = rand_vectors((50, 4), seed=8, min_norm=0.01, max_norm=50.0)
    assert (squash(s).norm(dim=-1) < 1).all()
    assert (squash_exp(s).norm(dim=-1) < 1).all()


# ----------------------------------------------------------------------------- s = 0
@pytest.mark.parametrize("fn", [squash, squash_exp, unsquash, safe_norm])
def test_zero_vector_finite_value_and_gradient(fn):
    s = torch.zeros(3, 4, dtype=DT, requires_grad=True)
    out = fn(s)
    assert torch.isfinite(out).all()
    if fn is not safe_norm:
        assert torch.equal(out, torch.zeros_like(out))  # the zero vector maps to zero
    # a random cotangent, so the test does not rely on sum() symmetry
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=DT)
    (out * g).sum().backward()
    assert s.grad is not None
    assert torch.isfinite(s.grad).all(), f"{fn.__name__} has non-finite gradient at s = 0"


@pytest.mark.parametrize("fn", [squash, squash_exp])
def test_length_of_squashed_zero_vector_has_finite_gradient(fn):
    # DESIGN.md: "the length of a zero vector must have a finite gradient" — the capsule
    # length ||squash(s)|| (what margin losses consume) at s = 0.
    s = torch.zeros(2, 5, dtype=DT, requires_grad=True)
    safe_norm(fn(s)).sum().backward()
    assert torch.isfinite(s.grad).all()


def test_zero_vector_gradient_values():
    # Sabour's squash is ~ ||s|| s near 0, so its Jacobian at 0 is 0; exp-squash is ~ s near 0,
    # so its Jacobian at 0 is ~ the identity.
    s = torch.zeros(4, dtype=DT, requires_grad=True)
    squash(s)[1].backward()
    assert torch.allclose(s.grad, torch.zeros(4, dtype=DT), atol=1e-6)
    s.grad = None
    squash_exp(s)[1].backward()
    assert torch.allclose(s.grad, torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=DT), atol=1e-3)


def test_zero_vector_in_batch_does_not_disturb_others():
    s = rand_vectors((3, 4), seed=9)
    s[1] = 0.0
    s.requires_grad_()
    squash(s).sum().backward()
    assert torch.isfinite(s.grad).all()
    ref = s.detach()[[0, 2]].clone().requires_grad_()
    ref_squash_last(ref).sum().backward()
    assert torch.allclose(s.grad[[0, 2]], ref.grad, rtol=1e-6, atol=1e-9)


def test_naive_epsilon_outside_sqrt_would_fail():
    # Shows the zero-vector tests discriminate: the common variant that takes the square root
    # without an epsilon inside has a NaN gradient at s = 0 on this torch.
    s = torch.zeros(4, dtype=DT, requires_grad=True)
    n = torch.sqrt((s * s).sum())
    (n * n / (1 + n * n) * s / (n + 1e-8)).sum().backward()
    assert not torch.isfinite(s.grad).all()


# ----------------------------------------------------------------------------- gradcheck
def test_gradcheck_squash():
    s = rand_vectors((3, 4), seed=10).requires_grad_()
    assert gradcheck(squash, (s,))


def test_gradcheck_squash_exp():
    s = rand_vectors((3, 4), seed=11).requires_grad_()
    assert gradcheck(squash_exp, (s,))


def test_gradcheck_unsquash():
    v = rand_vectors((3, 4), seed=12, min_norm=0.1, max_norm=0.9).requires_grad_()
    assert gradcheck(unsquash, (v,))


def test_gradcheck_safe_norm():
    s = rand_vectors((3, 4), seed=13).requires_grad_()
    assert gradcheck(safe_norm, (s,))


@pytest.mark.parametrize("cap_fn, ref_fn", [(squash, ref_squash), (squash_exp, ref_squash_exp),
                                            (unsquash, ref_unsquash)])
def test_gradients_match_reference(cap_fn, ref_fn):
    hi = 0.9 if cap_fn is unsquash else 4.0
    x = rand_vectors((3, 5), seed=14, min_norm=0.1, max_norm=hi)
    g = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=DT)
    a = x.clone().requires_grad_()
    (cap_fn(a) * g).sum().backward()
    b = x.clone().requires_grad_()
    (ref_squash_last(b, ref_fn) * g).sum().backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------- registry
def test_get_squash_names():
    assert get_squash("sabour") is squash
    assert get_squash("exp") is squash_exp
    with pytest.raises(ValueError):
        get_squash("tanh")
