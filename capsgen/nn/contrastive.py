"""Contrastive divergence for products of expert capsules, mixed by dynamic routing (Hauser).

A capsule layer maps I input capsules x_i [Din] to J output capsules through transforms
W_ij [Dout, Din] (layout ``[I, J, Dout, Din]``, the same as :func:`capsgen.nn.capsule_votes`).
Hauser's energy (eq. 7) marginalised over the output capsules' on/off states gives the
free energy

    F(x) = sum_j log(1 + ||z_j||^2),   z_j = sum_i c_ij W_ij x_i,   sum_i c_ij = 1,

so log P(x) = F(x) - log Z and, with the coupling c held fixed,
d F / d W_ij = 2 c_ij z_j x_i^T / (1 + ||z_j||^2) (eq. 18). Algorithm 1 ("mixing by dynamic
routing") replaces the intractable model expectation by one reconstruction:

    c       = routing by agreement on (x, W), cosine agreement, softmax over the inputs i
    z_j     = sum_i c_ij W_ij x_i,          x_j  = squash(z_j)       # route forward
    zr_i    = sum_j c_ij W_ij^T x_j,        xr_i = squash(zr_i)      # route in reverse, same c
    zr_j    = sum_i c_ij W_ij xr_i,         xr_j = squash(zr_j)      # forward again
    dW_ij   = 2 c_ij ( z_j x_i^T / (1 + ||z_j||^2) - zr_j xr_i^T / (1 + ||zr_j||^2) )

Everything is an ascent direction on log-likelihood: W <- W + lr * dW. The batch enters as a
mean (so the learning rate does not depend on the batch size). No autograd is used; the
reconstruction xr_i is treated as a fixed sample, as contrastive divergence does.

Decoding direction (Hauser, section 4.1, stated without derivation): a decoder U_ji maps the J
output capsules back to the I input capsules, z_i = sum_j e_ji U_ji x_j. The paper's rule is
offered but diverges; the default is the contrastive rule with linear visible units and the
code clamped — see :func:`decoder_cd_delta` for both and the measurements.

Shapes: inputs x [B, I, Din]; coupling c [B, I, J]; outputs z [B, J, Dout].
The big tensors are [B, I, J, Din] (the "coupled inputs" c_ij x_i, reused by the forward route
and by dW) and the votes [B, I, J, Dout] inside routing; every contraction over them is one
batched matmul over the J output capsules. Python loops run only over routing iterations.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from capsgen.nn.squash import EPS, safe_norm, squash


# ----------------------------------------------------------------------------- denormals
def _flush_denormals(fn):
    """Run ``fn`` with CPU denormals flushed to zero, restoring the caller's setting.

    From W ~ N(0, 0.01) the model phase is cubically small (squash(z) ~ ||z||^2 z): the
    reconstruction xr_i is ~1e-28 and the products inside dW ~1e-60, deep in float32's denormal
    range, where x86 CPUs take a slow path. Measured on 576x8 -> 20x16, batch 64, one thread:
    one bmm of dW 655 ms unflushed vs 11 ms flushed; a whole CD step 1.48 s vs 0.39 s.
    Flushing changes nothing above 1e-38. torch.set_flush_denormal acts on the calling thread,
    so with several intra-op threads the workers may still take the slow path while W is tiny.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        already = float(torch.tensor([1e-40]) * 1.0) == 0.0   # a denormal survives unless flushed
        if not already:
            torch.set_flush_denormal(True)
        try:
            return fn(*args, **kwargs)
        finally:
            if not already:
                torch.set_flush_denormal(False)
    return wrapper


# ----------------------------------------------------------------------------- routing pieces
@dataclass(frozen=True)
class RoutingWeights:
    """The re-laid-out copies of one W [I, J, Dout, Din] that routing reads: ``fwd`` [J, I*Din,
    Dout], ``rev`` [J, Dout, I*Din] and the Gram matrices ``gram`` [I, Din, J*Din]. Building them
    is most of the cost of routing a small batch — for one image through Hauser's U (20x16 ->
    576x8), 46 % of the time was these copies and the Grams' bmm — so a caller routing many small
    batches through a fixed W (``capsgen explore``) builds them once (:func:`routing_weights`)."""

    fwd: torch.Tensor
    rev: torch.Tensor
    gram: torch.Tensor


def routing_weights(weight: torch.Tensor) -> RoutingWeights:
    I, J, Dout, Din = weight.shape
    with torch.no_grad():
        gram = torch.matmul(weight.transpose(-1, -2), weight)             # [I, J, Din, Din]
        return RoutingWeights(_weight_in_major(weight), _weight_out_major(weight),
                              gram.permute(0, 2, 1, 3).reshape(I, Din, J * Din))


@_flush_denormals
def routing_coupling(x: torch.Tensor, weight: torch.Tensor, iterations: int = 3,
                     prepared: RoutingWeights | None = None) -> torch.Tensor:
    """Coupling c [B, I, J] of routing by agreement of inputs x [B, I, Din] through W.

    Hauser's choices: cosine agreement (section 2.2) and sum_i c_ij = 1, a softmax over the
    inputs i, so each output capsule takes a weighted *average* of its votes (eq. 3). The same
    algorithm as ``dynamic_routing(capsule_votes(x, W), iterations, "cosine",
    normalize="children")`` (tested equal), computed without the [B, I, J, Dout] votes:
        s_j          = sum_i c_ij W_ij x_i                     (bmm over j on c_ij x_i)
        <u_ij, s_j>  = x_i . (W_ij^T s_j)                      (bmm over j, then a Din-dot)
        ||u_ij||^2   = x_i^T (W_ij^T W_ij) x_i                 (once, through the Din x Din Grams)
    Every tensor is [J, B, I(, Din)] — half the size of the votes since Din = Dout / 2 — and
    the softmax runs over the contiguous last axis. Measured on 576x8 -> 20x16, batch 64, one
    thread (benchmarks/poe_cd.py): 79 ms against 143 ms for votes + dynamic_routing.
    No gradient: Algorithm 1 only reads c. ``prepared``: W's :func:`routing_weights`, if the
    caller has them.
    """
    I, J, Dout, Din = weight.shape
    B = x.shape[0]
    with torch.no_grad():
        prepared = prepared or routing_weights(weight)
        w_fwd, w_rev = prepared.fwd, prepared.rev                         # [J, I*Din, Dout], [J, Dout, I*Din]
        gx = torch.bmm(x.transpose(0, 1), prepared.gram)                  # [I, B, J*Din]
        sq_len = torch.einsum("ibje,ibe->ibj", gx.view(I, B, J, Din), x.transpose(0, 1))   # [I, B, J]
        inv_len = (sq_len + EPS).rsqrt().permute(2, 1, 0)                # [J, B, I]
        xj = x.unsqueeze(0)                                               # [1, B, I, Din]
        logits = x.new_zeros(J, B, I)
        for _ in range(iterations - 1):   # the last iteration's agreement is never used
            c = torch.softmax(logits, dim=-1)
            s = torch.bmm((c.unsqueeze(-1) * xj).reshape(J, B, I * Din), w_fwd)     # [J, B, Dout]
            s_unit = s / safe_norm(s, keepdim=True)
            # <u_ij, s_unit_j>; einsum's contraction measured 2x faster than mul + sum(-1)
            dots = torch.einsum("jbie,bie->jbi", torch.bmm(s_unit, w_rev).view(J, B, I, Din), x)
            logits = logits + dots * inv_len
        return torch.softmax(logits, dim=-1).permute(1, 2, 0)


def coupled_inputs(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """c_ij x_i laid out [J, B, I * Din] — the left factor of both the forward route and dW."""
    B, I, Din = x.shape
    J = c.shape[2]
    return (c.permute(2, 0, 1).contiguous().unsqueeze(-1) * x.unsqueeze(0)).reshape(J, B, I * Din)


def _weight_in_major(weight: torch.Tensor) -> torch.Tensor:
    """W [I, J, Dout, Din] -> [J, I * Din, Dout], so z_j = (c x)_j @ W_j is one bmm over j."""
    I, J, Dout, Din = weight.shape
    return weight.permute(1, 0, 3, 2).reshape(J, I * Din, Dout)


def _weight_out_major(weight: torch.Tensor) -> torch.Tensor:
    """W [I, J, Dout, Din] -> [J, Dout, I * Din], so W_ij^T y_j for all i is one bmm over j."""
    I, J, Dout, Din = weight.shape
    return weight.permute(1, 2, 0, 3).reshape(J, Dout, I * Din)


def route_forward(x: torch.Tensor, weight: torch.Tensor, c: torch.Tensor,
                  coupled: torch.Tensor | None = None, w_fwd: torch.Tensor | None = None) -> torch.Tensor:
    """z_j = sum_i c_ij W_ij x_i with c fixed: x [B, I, Din], c [B, I, J] -> z [B, J, Dout].

    ``coupled`` may pass a precomputed :func:`coupled_inputs` (x, c) to avoid building it twice,
    ``w_fwd`` W's :attr:`RoutingWeights.fwd`.
    """
    if coupled is None:
        coupled = coupled_inputs(x, c)
    return torch.bmm(coupled, _weight_in_major(weight) if w_fwd is None else w_fwd).transpose(0, 1)


def route_reverse(y: torch.Tensor, weight: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """zr_i = sum_j c_ij W_ij^T y_j with the forward coupling: y [B, J, Dout] -> [B, I, Din].

    W^T y_j for all (i, j) first ([J, B, I, Din], one bmm over j), then the c-weighted sum
    over j — cheaper than weighting the [B, I, J, Dout] outputs because Din < Dout here.
    """
    I, J, Dout, Din = weight.shape
    B = y.shape[0]
    t = torch.bmm(y.transpose(0, 1), _weight_out_major(weight)).view(J, B, I, Din)
    return torch.einsum("jbie,jbi->bie", t, c.permute(2, 0, 1))


def energy_factor(z: torch.Tensor) -> torch.Tensor:
    """z / (1 + ||z||^2) along the last dim: P(on | x) * z / ||z||^2 of eq. 17 (finite at z = 0)."""
    return z / (1.0 + (z * z).sum(-1, keepdim=True))


def free_energy(x: torch.Tensor, weight: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """F(x) = sum_j log(1 + ||z_j||^2) per sample [B], with c fixed (the marginal of eq. 10)."""
    z = route_forward(x, weight, c)
    return torch.log1p((z * z).sum(-1)).sum(-1)


# ----------------------------------------------------------------------------- Algorithm 1
@dataclass
class Mixing:
    """One pass of Hauser's mixing by dynamic routing (Algorithm 1), batch B.

    c [B, I, J]; z, x_out [B, J, Dout] (data phase); z_rec_in, x_rec [B, I, Din] (reconstructed
    inputs); z_rec, x_out_rec [B, J, Dout] (model phase).
    """

    c: torch.Tensor
    z: torch.Tensor
    x_out: torch.Tensor
    z_rec_in: torch.Tensor
    x_rec: torch.Tensor
    z_rec: torch.Tensor
    x_out_rec: torch.Tensor
    coupled_data: torch.Tensor      # [J, B, I * Din], c_ij x_i
    coupled_model: torch.Tensor     # [J, B, I * Din], c_ij xr_i


@_flush_denormals
def mix_by_routing(x: torch.Tensor, weight: torch.Tensor, iterations: int = 3,
                   c: torch.Tensor | None = None) -> Mixing:
    """Run Algorithm 1's routing, forward, reverse and forward-again passes on x [B, I, Din].

    ``c`` may be given (e.g. already computed) to skip the routing by agreement.
    """
    if x.dim() != 3 or weight.dim() != 4 or x.shape[1:] != (weight.shape[0], weight.shape[3]):
        raise ValueError(f"x [B, I, Din] must match weight [I, J, Dout, Din]; got x {tuple(x.shape)}, "
                         f"weight {tuple(weight.shape)}")
    with torch.no_grad():
        if c is None:
            c = routing_coupling(x, weight, iterations)
        coupled = coupled_inputs(x, c)
        z = route_forward(x, weight, c, coupled)
        x_out = squash(z)
        z_rec_in = route_reverse(x_out, weight, c)
        x_rec = squash(z_rec_in)
        coupled_rec = coupled_inputs(x_rec, c)
        z_rec = route_forward(x_rec, weight, c, coupled_rec)
        x_out_rec = squash(z_rec)
    return Mixing(c, z, x_out, z_rec_in, x_rec, z_rec, x_out_rec, coupled, coupled_rec)


def outer_sum(factor: torch.Tensor, coupled: torch.Tensor, in_dim: int) -> torch.Tensor:
    """sum_b factor_bj (c_bij in_bi)^T as [I, J, Dout, Din]: one bmm over j.

    factor [B, J, Dout]; coupled [J, B, I * Din] = c_ij in_i (see :func:`coupled_inputs`).
    """
    J = factor.shape[1]
    d = torch.bmm(factor.permute(1, 2, 0), coupled).view(J, factor.shape[2], -1, in_dim)
    return d.permute(2, 0, 1, 3)                                   # [I, J, Dout, Din]


@_flush_denormals
def contrastive_delta(out_pos: torch.Tensor, coupled_pos: torch.Tensor, out_neg: torch.Tensor,
                      coupled_neg: torch.Tensor, in_dim: int) -> torch.Tensor:
    """2 mean_b c_ij ( f(out_pos)_j in_pos_i^T - f(out_neg)_j in_neg_i^T ),  f = energy_factor.

    out_* [B, J, Dout]; coupled_* [J, B, I * Din] = c_ij in_i (see :func:`coupled_inputs`).
    Returns dW [I, J, Dout, Din]. One bmm and one baddbmm over j.
    """
    B = out_pos.shape[0]
    J, Dout = out_pos.shape[1], out_pos.shape[2]
    # Two bmm's and a subtraction: no concatenated [J, 2B, I*Din] copy of the coupled inputs.
    d = torch.bmm(energy_factor(out_pos).permute(1, 2, 0), coupled_pos)
    d -= torch.bmm(energy_factor(out_neg).permute(1, 2, 0), coupled_neg)
    d = d.view(J, Dout, -1, in_dim).permute(2, 0, 1, 3)                  # [I, J, Dout, Din]
    return d.mul(2.0 / B).contiguous()


def encoder_cd_delta(x: torch.Tensor, weight: torch.Tensor, iterations: int = 3,
                     c: torch.Tensor | None = None) -> tuple[torch.Tensor, Mixing]:
    """Algorithm 1's dW (eq. 18, batch mean) for inputs x [B, I, Din]; returns (dW, mixing)."""
    m = mix_by_routing(x, weight, iterations, c)
    delta = contrastive_delta(m.z, m.coupled_data, m.z_rec, m.coupled_model, x.shape[2])
    return delta, m


# ----------------------------------------------------------------------------- decoder rule
DECODER_RULES = ("gaussian", "hauser")


@dataclass
class DecoderMixing:
    """The decoder's phases. e [B, J, I] (J = the code capsules, the decoder's inputs);
    decoded [B, I, Din] = zr_i = sum_j e_ji U_ji x_j; x_code_rec [B, J, Dout] = xr_j, the code
    re-encoded through U^T (computed by the "hauser" rule only, else None)."""

    e: torch.Tensor
    decoded: torch.Tensor
    x_code_rec: torch.Tensor | None


@_flush_denormals
def decoder_cd_delta(code: torch.Tensor, target: torch.Tensor, weight_u: torch.Tensor,
                     iterations: int = 3, rule: str = "gaussian", e: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, DecoderMixing]:
    """Ascent direction dU (batch mean) for the capsule decoder U [J, I, Din, Dout].

    Decoder layout: its inputs are the J code capsules x_j [Dout], its outputs the I capsules
    [Din]; z_i = sum_j e_ji U_ji x_j with e from routing by agreement of the code through U
    (cosine, sum_j e_ji = 1 — the encoder's normalisation, over the decoder's inputs).
    The data phase is the encoder's pair: the code x_j = squash(z_j) of W (``code`` [B, J, Dout])
    and the squashed input capsules t_i it encodes (``target`` [B, I, Din]).

    rule="hauser" — section 4.1 as written, with "(the data) z_i" read as t_i:
        zr_i = sum_j e_ji U_ji x_j,  xr_j = squash(sum_i e_ji U_ji^T zr_i),
        dU_ji = 2 e_ji ( f(t_i) x_j^T - f(zr_i) xr_j^T ),   f(z) = z / (1 + ||z||^2).
      Not stable: the data term does not depend on U while f is bounded (||f|| <= 1/2 and
      f -> 0 as ||z|| grows), so nothing holds zr back once it passes ||zr|| = 1. With xr ~ x the
      rule is gradient descent on sum_i log(1 + ||zr_i||^2) - 2 <f(t_i), zr_i>, unbounded below.
      Measured on a 12x4 -> 3x6 toy (tests/test_nn_contrastive.py): the capsule error falls from
      0.69 to 0.03 in ~60 steps, then climbs without end (0.16 after 600 steps at lr 0.02; 900
      at lr 0.1, momentum 0.9).

    rule="gaussian" (default) — the same contrastive rule with linear (Gaussian) visible units
    in the decoding direction and the code clamped in both phases, as when an RBM's visible
    layer is real-valued: the reconstruction is the mean zr_i itself, so
        dU_ji = 2 e_ji ( t_i x_j^T - zr_i x_j^T ) = 2 e_ji (t_i - zr_i) x_j^T
      = -grad_U sum_i ||t_i - zr_i||^2 with e fixed: a local delta rule, convex in U for fixed e.
      On the toy above the error falls from 0.69 to 0.018 and stays there (lr 0.1 to 0.5).

    Returns (dU [J, I, Din, Dout], mixing).
    """
    J, I, Din, Dout = weight_u.shape
    if code.shape[1:] != (J, Dout) or target.shape[1:] != (I, Din):
        raise ValueError(f"code [B, {J}, {Dout}] and target [B, {I}, {Din}] must match U "
                         f"{tuple(weight_u.shape)}; got {tuple(code.shape)}, {tuple(target.shape)}")
    if rule not in DECODER_RULES:
        raise ValueError(f"unknown decoder rule {rule!r}; choose one of {DECODER_RULES}")
    B = code.shape[0]
    with torch.no_grad():
        if e is None:
            e = routing_coupling(code, weight_u, iterations)
        coupled_data = coupled_inputs(code, e)
        decoded = route_forward(code, weight_u, e, coupled_data)
        if rule == "gaussian":
            delta = outer_sum(target - decoded, coupled_data, Dout).mul(2.0 / B).contiguous()
            return delta, DecoderMixing(e, decoded, None)
        x_code_rec = squash(route_reverse(decoded, weight_u, e))
        coupled_model = coupled_inputs(x_code_rec, e)
        delta = contrastive_delta(target, coupled_data, decoded, coupled_model, Dout)
    return delta, DecoderMixing(e, decoded, x_code_rec)


@_flush_denormals
def decode_capsules(code: torch.Tensor, weight_u: torch.Tensor, iterations: int = 3,
                    prepared: RoutingWeights | None = None) -> torch.Tensor:
    """Decoded capsules zr_i = sum_j e_ji U_ji x_j [B, I, Din] for a code [B, J, Dout]
    (``prepared``: U's :func:`routing_weights`, if the caller keeps them)."""
    with torch.no_grad():
        e = routing_coupling(code, weight_u, iterations, prepared)
        return route_forward(code, weight_u, e, w_fwd=None if prepared is None else prepared.fwd)


# ----------------------------------------------------------------------------- the update rule
def init_capsule_weight(in_caps: int, out_caps: int, out_dim: int, in_dim: int, std: float,
                        generator: torch.Generator, dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """W_ij ~ N(0, std^2), layout [I, J, Dout, Din] (Algorithm 1: N(0, 0.01), read as std 0.01
    like Sabour's transforms). Drawn on the CPU from ``generator`` so every device gets the same W."""
    w = torch.randn(in_caps, out_caps, out_dim, in_dim, generator=generator, dtype=dtype) * std
    return w.to(device) if device is not None else w


class CDOptimizer:
    """SGD with momentum, L2 and learning-rate decay for a CD ascent direction (Algorithm 1's note).

        lr_t = lr * lr_decay ** (t / decay_every)
        g    = dW - weight_decay * W                 (ascent on log P - weight_decay/2 ||W||^2)
        m    = momentum * m + g
        W   += lr_t * m

    State is plain: ``momentum_buffer`` (a tensor like W, or None before the first step) and
    ``step_count`` (int) — :meth:`state_dict` / :meth:`load_state_dict` round-trip them.
    """

    def __init__(self, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 lr_decay: float = 1.0, decay_every: int = 1000):
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0 or not 0 < lr_decay <= 1 or decay_every < 1:
            raise ValueError(f"bad CD optimiser settings lr={lr} momentum={momentum} "
                             f"weight_decay={weight_decay} lr_decay={lr_decay} decay_every={decay_every}")
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.lr_decay, self.decay_every = lr_decay, decay_every
        self.momentum_buffer: torch.Tensor | None = None
        self.step_count = 0

    def current_lr(self) -> float:
        return self.lr * self.lr_decay ** (self.step_count / self.decay_every)

    @torch.no_grad()
    def step(self, weight: torch.Tensor, delta: torch.Tensor) -> float:
        """Update ``weight`` in place with ascent direction ``delta``; returns the lr used."""
        g = delta - self.weight_decay * weight if self.weight_decay else delta.clone()
        if self.momentum_buffer is None:
            self.momentum_buffer = g
        else:
            self.momentum_buffer.mul_(self.momentum).add_(g)
        lr = self.current_lr()
        weight.add_(self.momentum_buffer, alpha=lr)
        self.step_count += 1
        return lr

    def state_dict(self) -> dict:
        return {"momentum_buffer": self.momentum_buffer, "step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        buf = state["momentum_buffer"]
        self.momentum_buffer = None if buf is None else buf.clone()
        self.step_count = int(state["step_count"])


def capsule_reconstruction_error(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of sum_i ||x_i - xr_i||^2 / I (per-capsule squared error), a scalar."""
    return (x - x_rec).pow(2).sum(-1).mean()


__all__ = [
    "RoutingWeights", "routing_weights", "routing_coupling", "coupled_inputs", "route_forward", "route_reverse", "energy_factor",
    "free_energy", "Mixing", "mix_by_routing", "outer_sum", "contrastive_delta", "encoder_cd_delta",
    "DECODER_RULES", "DecoderMixing", "decoder_cd_delta", "decode_capsules", "init_capsule_weight", "CDOptimizer",
    "capsule_reconstruction_error",
]
