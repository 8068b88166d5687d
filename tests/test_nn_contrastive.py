"""capsgen.nn.contrastive (Hauser's CD rule) against scalar-loop references and autograd.

The references below are written straight from Hauser's Algorithm 1 and eq. 18 (and the
decoder rules of capsgen's docstring) with loops over samples, capsules and pose dimensions;
the coupling comes from tests/reference_capsules.py's routing reference. Nothing in them
imports capsgen.nn.contrastive.
"""
from __future__ import annotations

import pytest
import torch

from capsgen.nn import capsule_votes, dynamic_routing
from capsgen.nn.contrastive import (CDOptimizer, capsule_reconstruction_error, coupled_inputs,
                                    decoder_cd_delta, encoder_cd_delta, free_energy,
                                    init_capsule_weight, mix_by_routing, route_forward,
                                    route_reverse, routing_coupling)

try:
    from reference_capsules import ref_routing, ref_squash, ref_votes
except ImportError:  # tests/ imported as a package
    from tests.reference_capsules import ref_routing, ref_squash, ref_votes

DT = torch.float64
TOL = dict(rtol=1e-6, atol=1e-10)


# ----------------------------------------------------------------------------- loop references
def _matvec(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """m [R, C] @ v [C] as loops."""
    return torch.stack([sum(m[r, k] * v[k] for k in range(m.shape[1])) for r in range(m.shape[0])])


def _sqnorm(v: torch.Tensor) -> torch.Tensor:
    return sum(v[k] * v[k] for k in range(v.shape[0]))


def ref_algorithm1(x, W, c):
    """Algorithm 1 for x [B, I, Din], W [I, J, Dout, Din], coupling c [B, I, J] (fixed).

    Returns dict of z [B,J,Dout], x_out, z_rec_in [B,I,Din], x_rec, z_rec [B,J,Dout], and
    dW [I, J, Dout, Din] = mean over b of eq. 18.
    """
    B, I, Din = x.shape
    J, Dout = W.shape[1], W.shape[2]
    out = {k: [] for k in ("z", "x_out", "z_rec_in", "x_rec", "z_rec")}
    dW = torch.zeros(I, J, Dout, Din, dtype=x.dtype)
    for b in range(B):
        z = [sum(c[b, i, j] * _matvec(W[i, j], x[b, i]) for i in range(I)) for j in range(J)]
        xo = [ref_squash(v) for v in z]
        zri = [sum(c[b, i, j] * _matvec(W[i, j].T, xo[j]) for j in range(J)) for i in range(I)]
        xr = [ref_squash(v) for v in zri]
        zr = [sum(c[b, i, j] * _matvec(W[i, j], xr[i]) for i in range(I)) for j in range(J)]
        for i in range(I):
            for j in range(J):
                for d in range(Dout):
                    for e in range(Din):
                        pos = z[j][d] * x[b, i, e] / (1 + _sqnorm(z[j]))
                        neg = zr[j][d] * xr[i][e] / (1 + _sqnorm(zr[j]))
                        dW[i, j, d, e] += 2 * c[b, i, j] * (pos - neg) / B
        for k, v in zip(out, (z, xo, zri, xr, zr)):
            out[k].append(torch.stack(v))
    res = {k: torch.stack(v) for k, v in out.items()}
    res["dW"] = dW
    return res


def ref_decoder_rule(code, target, U, e, rule):
    """Decoder rules for code [B, J, Dout], target [B, I, Din], U [J, I, Din, Dout], e [B, J, I].

    gaussian: dU_ji = 2 e_ji (t_i - zr_i) x_j^T;  hauser: 2 e_ji (t_i x_j^T / (1+|t_i|^2)
    - zr_i xr_j^T / (1+|zr_i|^2)) with zr_i = sum_j e_ji U_ji x_j, xr_j = squash(sum_i e_ji U_ji^T zr_i).
    """
    B, J, Dout = code.shape
    I, Din = target.shape[1], target.shape[2]
    dU = torch.zeros(J, I, Din, Dout, dtype=code.dtype)
    decoded = []
    for b in range(B):
        zr = [sum(e[b, j, i] * _matvec(U[j, i], code[b, j]) for j in range(J)) for i in range(I)]
        decoded.append(torch.stack(zr))
        xr = [ref_squash(sum(e[b, j, i] * _matvec(U[j, i].T, zr[i]) for i in range(I))) for j in range(J)]
        for j in range(J):
            for i in range(I):
                for a in range(Din):
                    for d in range(Dout):
                        t = target[b, i]
                        if rule == "gaussian":
                            val = (t[a] - zr[i][a]) * code[b, j, d]
                        else:
                            val = (t[a] * code[b, j, d] / (1 + _sqnorm(t))
                                   - zr[i][a] * xr[j][d] / (1 + _sqnorm(zr[i])))
                        dU[j, i, a, d] += 2 * e[b, j, i] * val / B
    return dU, torch.stack(decoded)


# ----------------------------------------------------------------------------- data
def capsules(B, I, D, seed, min_len=0.2, max_len=0.9):
    """Squashed-space capsules [B, I, D] with lengths in [min_len, max_len]."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(B, I, D, generator=g, dtype=DT)
    v = v / v.norm(dim=-1, keepdim=True)
    return v * (min_len + (max_len - min_len) * torch.rand(B, I, 1, generator=g, dtype=DT))


def weights(I, J, Dout, Din, seed, std=0.5):
    return init_capsule_weight(I, J, Dout, Din, std, torch.Generator().manual_seed(seed), DT)


def structured_problem(seed=0, B=32, I=12, Din=4, J=3, Dout=6):
    """Capsules x_i = squash(A_i h) driven by a 3-D latent h per sample: learnable structure."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(I, Din, 3, generator=g, dtype=DT)
    h = torch.randn(B, 3, generator=g, dtype=DT)
    s = torch.einsum("ide,be->bid", A, h)
    n2 = s.pow(2).sum(-1, keepdim=True)
    return s * n2 / ((1 + n2) * n2.sqrt())


SHAPES = [(2, 5, 3, 3, 4), (3, 4, 2, 2, 3), (1, 3, 4, 4, 2)]   # B, I, Din, J, Dout


# ----------------------------------------------------------------------------- encoder: Algorithm 1
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("iterations", [1, 3])
def test_algorithm1_matches_loop_reference(shape, iterations):
    B, I, Din, J, Dout = shape
    x = capsules(B, I, Din, seed=sum(shape))
    # std 6 keeps every reconstructed vector long enough (> 0.3) that capsgen's squash epsilon
    # (1e-8 inside the square root: relative effect 1e-8 / (2 ||z||^2)) stays below 1e-7
    W = weights(I, J, Dout, Din, seed=iterations, std=6.0)
    delta, m = encoder_cd_delta(x, W, iterations)
    # coupling: routing reference, cosine agreement, softmax over the inputs i
    _, c_ref = ref_routing(ref_votes(x, W), iterations, "cosine", "children")
    assert torch.allclose(m.c, c_ref, **TOL)
    assert torch.allclose(m.c.sum(1), torch.ones(B, J, dtype=DT))     # sum_i c_ij = 1
    ref = ref_algorithm1(x, W, c_ref)
    assert m.z_rec_in.norm(dim=-1).min() > 0.3
    for name in ("z", "x_out", "z_rec_in", "x_rec", "z_rec"):
        assert torch.allclose(getattr(m, name), ref[name], **TOL), name
    assert torch.allclose(delta, ref["dW"], **TOL)


@pytest.mark.parametrize("shape", SHAPES)
def test_cd_delta_is_the_free_energy_gradient_with_fixed_coupling(shape):
    """dW = grad_W mean_b [ sum_j log(1 + ||z_j(x)||^2) - sum_j log(1 + ||z_j(xr)||^2) ],
    c and the reconstruction xr held fixed (eq. 10 -> eq. 18; CD ignores xr's dependence on W)."""
    B, I, Din, J, Dout = shape
    x = capsules(B, I, Din, seed=7 + sum(shape))
    W = weights(I, J, Dout, Din, seed=3)
    delta, m = encoder_cd_delta(x, W, 3)
    Wg = W.clone().requires_grad_(True)

    def F(inputs):
        z = torch.einsum("bij,ijde,bie->bjd", m.c, Wg, inputs)
        return torch.log1p(z.pow(2).sum(-1)).sum(-1).mean()

    (grad,) = torch.autograd.grad(F(x) - F(m.x_rec.detach()), Wg)
    assert torch.allclose(delta, grad, **TOL)
    # and capsgen's free_energy is that F per sample
    assert torch.allclose(free_energy(x, W, m.c).mean(), F(x).detach(), **TOL)


def test_route_pieces_match_einsum():
    x = capsules(3, 6, 3, seed=11)
    W = weights(6, 4, 5, 3, seed=12)
    c = torch.softmax(torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(1), dtype=DT), dim=1)
    y = capsules(3, 4, 5, seed=13)
    assert torch.allclose(route_forward(x, W, c), torch.einsum("bij,ijde,bie->bjd", c, W, x), **TOL)
    assert torch.allclose(route_reverse(y, W, c), torch.einsum("bij,ijde,bjd->bie", c, W, y), **TOL)
    assert coupled_inputs(x, c).shape == (4, 3, 6 * 3)


def test_routing_coupling_is_detached_and_normalised_over_inputs():
    x = capsules(2, 7, 3, seed=5).requires_grad_(True)
    W = weights(7, 3, 4, 3, seed=6).requires_grad_(True)
    c = routing_coupling(x, W, 3)
    assert not c.requires_grad
    assert torch.allclose(c.sum(1), torch.ones(2, 3, dtype=DT))
    # cosine agreement moves the coupling away from uniform
    assert (c - 1 / 7).abs().max() > 1e-3


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_votes_free_coupling_equals_dynamic_routing(iterations):
    """routing_coupling never builds the votes; it must equal capsgen's dynamic_routing on them."""
    x = capsules(4, 30, 4, seed=50 + iterations)
    W = weights(30, 5, 6, 4, seed=51)
    _, c_ref = dynamic_routing(capsule_votes(x, W), iterations, "cosine", normalize="children",
                               return_coupling=True)
    assert torch.allclose(routing_coupling(x, W, iterations), c_ref, **TOL)


def test_denormal_flushing_is_restored_after_a_cd_step():
    x = capsules(2, 6, 3, seed=60)
    W = weights(6, 2, 4, 3, seed=61, std=1e-3)      # tiny W: the model phase underflows
    delta, m = encoder_cd_delta(x.float(), W.float(), 3)
    assert torch.isfinite(delta).all()
    assert float(torch.tensor([1e-40]) * 1.0) != 0.0   # denormals work again for the caller


def test_one_cd_step_lowers_capsule_reconstruction_error():
    x = structured_problem()
    W = weights(12, 3, 6, 4, seed=1, std=0.5)
    before = capsule_reconstruction_error(x, mix_by_routing(x, W, 3).x_rec)
    delta, _ = encoder_cd_delta(x, W, 3)
    CDOptimizer(lr=10.0, momentum=0.9).step(W, delta)   # measured: 0.673 -> 0.653
    after = capsule_reconstruction_error(x, mix_by_routing(x, W, 3).x_rec)
    assert after < before - 0.01, (before, after)


def test_cd_training_keeps_lowering_reconstruction_error():
    """40 steps with momentum: the error falls well below the untrained one, and the data
    ends up more probable than its reconstruction (positive free-energy gap)."""
    x = structured_problem(seed=3)
    W = weights(12, 3, 6, 4, seed=2, std=0.1)
    opt = CDOptimizer(lr=2.0, momentum=0.9)
    errs = []
    for _ in range(40):
        delta, m = encoder_cd_delta(x, W, 3)
        errs.append(float(capsule_reconstruction_error(x, m.x_rec)))
        opt.step(W, delta)
    assert errs[-1] < 0.5 * errs[0], errs
    assert min(errs[-10:]) < min(errs[:10])
    gap = free_energy(x, W, m.c) - free_energy(m.x_rec, W, m.c)
    assert gap.mean() > 0


# ----------------------------------------------------------------------------- decoder rules
@pytest.mark.parametrize("rule", ["gaussian", "hauser"])
@pytest.mark.parametrize("shape", SHAPES[:2])
def test_decoder_rules_match_loop_reference(rule, shape):
    B, I, Din, J, Dout = shape
    code = capsules(B, J, Dout, seed=20 + sum(shape))
    target = capsules(B, I, Din, seed=30 + sum(shape))
    U = weights(J, I, Din, Dout, seed=4, std=4.0)   # long votes: squash epsilon below tolerance
    delta, m = decoder_cd_delta(code, target, U, 3, rule)
    _, e_ref = ref_routing(ref_votes(code, U), 3, "cosine", "children")
    # With only J = 2 random code capsules a routed sum s_i can be short; capsgen's cosine takes
    # s / sqrt(||s||^2 + 1e-8), which shifts e by up to ~1e-8 here (measured 6e-9).
    loose = dict(rtol=1e-6, atol=1e-7)
    assert torch.allclose(m.e, e_ref, **loose)
    assert torch.allclose(m.e.sum(1), torch.ones(B, I, dtype=DT))     # sum_j e_ji = 1
    d_ref, decoded_ref = ref_decoder_rule(code, target, U, e_ref, rule)
    assert torch.allclose(m.decoded, decoded_ref, **loose)
    assert torch.allclose(delta, d_ref, **loose)
    # given the same coupling, the rule itself matches to rounding
    delta_same_e, m_same_e = decoder_cd_delta(code, target, U, 3, rule, e=e_ref)
    assert torch.allclose(m_same_e.decoded, decoded_ref, **TOL)
    assert torch.allclose(delta_same_e, d_ref, **TOL)


def test_gaussian_decoder_rule_is_the_squared_error_gradient():
    code = capsules(3, 4, 5, seed=41)
    target = capsules(3, 6, 3, seed=42)
    U = weights(4, 6, 3, 5, seed=43)
    delta, m = decoder_cd_delta(code, target, U, 3, "gaussian")
    Ug = U.clone().requires_grad_(True)
    decoded = torch.einsum("bji,jiad,bjd->bia", m.e, Ug, code)
    (grad,) = torch.autograd.grad(-(target - decoded).pow(2).sum((1, 2)).mean(), Ug)
    assert torch.allclose(delta, grad, **TOL)


def _trained_encoder_code(x):
    W = weights(12, 3, 6, 4, seed=1, std=0.1)
    opt = CDOptimizer(lr=5.0, momentum=0.9)
    for _ in range(100):
        delta, _ = encoder_cd_delta(x, W, 3)
        opt.step(W, delta)
    return mix_by_routing(x, W, 3).x_out


def test_decoder_training_lowers_capsule_reconstruction_error():
    x = structured_problem()
    code = _trained_encoder_code(x)
    U = weights(3, 12, 4, 6, seed=2, std=0.1)
    opt = CDOptimizer(lr=0.5, momentum=0.9)
    errs = []
    for _ in range(30):
        delta, m = decoder_cd_delta(code, x, U, 3, "gaussian")
        errs.append(float(capsule_reconstruction_error(x, m.decoded)))
        opt.step(U, delta)
    # measured: 0.686, 0.506, 0.316, 0.171, 0.102 (momentum then overshoots a little), 0.02 at 30
    assert all(b < a for a, b in zip(errs[:4], errs[1:5])), errs[:5]
    assert errs[-1] < 0.1 * errs[0], errs


@pytest.mark.slow
def test_hauser_decoder_rule_first_improves_then_diverges():
    """The measurement behind decoder_rule="gaussian" being the default."""
    x = structured_problem()
    code = _trained_encoder_code(x)
    U = weights(3, 12, 4, 6, seed=2, std=0.1)
    opt = CDOptimizer(lr=0.1, momentum=0.9)
    errs = []
    for _ in range(600):
        delta, m = decoder_cd_delta(code, x, U, 3, "hauser")
        errs.append(float(capsule_reconstruction_error(x, m.decoded)))
        opt.step(U, delta)
    assert min(errs) < 0.5 * errs[0]
    assert errs[-1] > 10 * errs[0]


# ----------------------------------------------------------------------------- optimiser
def test_cd_optimizer_momentum_l2_decay_by_hand():
    W = torch.tensor([1.0, -2.0], dtype=DT)
    opt = CDOptimizer(lr=0.1, momentum=0.5, weight_decay=0.01, lr_decay=0.5, decay_every=2)
    d1, d2 = torch.tensor([1.0, 1.0], dtype=DT), torch.tensor([0.0, 2.0], dtype=DT)
    g1 = d1 - 0.01 * torch.tensor([1.0, -2.0], dtype=DT)
    W1 = torch.tensor([1.0, -2.0], dtype=DT) + 0.1 * g1
    assert opt.step(W, d1) == pytest.approx(0.1)
    assert torch.allclose(W, W1)
    g2 = d2 - 0.01 * W1
    m2 = 0.5 * g1 + g2
    lr2 = 0.1 * 0.5 ** 0.5
    assert opt.step(W, d2) == pytest.approx(lr2)
    assert torch.allclose(W, W1 + lr2 * m2)
    assert opt.step_count == 2 and opt.current_lr() == pytest.approx(0.05)


def test_cd_optimizer_state_round_trip_continues_identically():
    x = structured_problem(B=8)
    W_a = weights(12, 3, 6, 4, seed=9, std=0.1)
    opt_a = CDOptimizer(lr=1.0, momentum=0.9, weight_decay=1e-3, lr_decay=0.9, decay_every=3)
    for _ in range(3):
        opt_a.step(W_a, encoder_cd_delta(x, W_a, 2)[0])
    state = opt_a.state_dict()
    assert isinstance(state["momentum_buffer"], torch.Tensor) and state["step_count"] == 3
    W_b = W_a.clone()
    opt_b = CDOptimizer(lr=1.0, momentum=0.9, weight_decay=1e-3, lr_decay=0.9, decay_every=3)
    opt_b.load_state_dict(state)
    for _ in range(2):
        opt_a.step(W_a, encoder_cd_delta(x, W_a, 2)[0])
        opt_b.step(W_b, encoder_cd_delta(x, W_b, 2)[0])
    assert torch.equal(W_a, W_b)


def test_init_is_reproducible_from_the_generator():
    a = init_capsule_weight(5, 2, 3, 4, 0.01, torch.Generator().manual_seed(3))
    b = init_capsule_weight(5, 2, 3, 4, 0.01, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (5, 2, 3, 4)
    assert 0.005 < float(a.std()) < 0.015


def test_bad_shapes_and_rules_are_rejected():
    x = capsules(2, 5, 3, seed=1)
    with pytest.raises(ValueError, match="must match"):
        encoder_cd_delta(x, weights(4, 2, 3, 3, seed=1))
    with pytest.raises(ValueError, match="decoder rule"):
        decoder_cd_delta(capsules(2, 2, 3, seed=2), x, weights(2, 5, 3, 3, seed=1), rule="backprop")
    with pytest.raises(ValueError):
        CDOptimizer(lr=0.0)
