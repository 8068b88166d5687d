"""Slow, independent reference implementations of the capsule maths, for tests only.

Everything here is written straight from the papers' equations as plain Python loops over
samples, capsules and pose dimensions; torch is used only for elementary operations on single
scalars/small vectors (so autograd can differentiate through the references). Nothing here
imports capsgen: a shared bug cannot hide in both the code and its reference.

Sources:
- Sabour, Frosst & Hinton, "Dynamic routing between capsules" (2017): squash (eq. 1),
  votes u_hat_{j|i} = W_ij u_i and s_j = sum_i c_ij u_hat_{j|i} (eq. 2), c_ij = softmax over
  parents j of b_ij (eq. 3), routing procedure 1, margin loss (eq. 4).
- Chen et al., Generalized CapsNets: exp-squash v' = (1 - e^{-||v||}) v / ||v||.
- Hauser, products of expert capsules, section 2.2: cosine agreement and the normalisation
  sum_i c_ij = 1 (softmax over the children i).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------- vector helpers
def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot product of two 1-D vectors as an explicit sum of products."""
    total = a[0] * b[0]
    for d in range(1, a.shape[0]):
        total = total + a[d] * b[d]
    return total


def _norm(a: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(_dot(a, a))


# ----------------------------------------------------------------------------- squash functions
def ref_squash(s: torch.Tensor) -> torch.Tensor:
    """Sabour eq. 1 for ONE vector s: v = ||s||^2 / (1 + ||s||^2) * s / ||s|| (s != 0)."""
    n2 = _dot(s, s)
    n = torch.sqrt(n2)
    return (n2 / (1.0 + n2)) * (s / n)


def ref_squash_exp(s: torch.Tensor) -> torch.Tensor:
    """G-CapsNet exp-squash for ONE vector s: v = (1 - e^{-||s||}) s / ||s|| (s != 0)."""
    n = _norm(s)
    return (1.0 - torch.exp(-n)) * (s / n)


def ref_unsquash(v: torch.Tensor) -> torch.Tensor:
    """Inverse of Sabour's squash for ONE vector v with 0 < ||v|| < 1.

    ||v|| = r = n^2 / (1 + n^2)  =>  n = sqrt(r / (1 - r)),  s = n * v / r.
    """
    r = _norm(v)
    n = torch.sqrt(r / (1.0 - r))
    return n * (v / r)


def ref_squash_last(x: torch.Tensor, fn=ref_squash) -> torch.Tensor:
    """Apply a per-vector reference squash to every vector along the last dim (loops)."""
    flat = x.reshape(-1, x.shape[-1])
    out = [fn(flat[n]) for n in range(flat.shape[0])]
    return torch.stack(out).reshape(x.shape)


REF_SQUASHES = {"sabour": ref_squash, "exp": ref_squash_exp}


# ----------------------------------------------------------------------------- votes
def ref_votes(u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """u_hat_{j|i} = W_ij u_i with loops over b, i, j and output rows.

    u [B, I, Din], weight [I, J, Dout, Din] -> [B, I, J, Dout].
    """
    B, I, _ = u.shape
    _, J, Dout, _ = weight.shape
    per_b = []
    for b in range(B):
        per_i = []
        for i in range(I):
            per_j = []
            for j in range(J):
                rows = [_dot(weight[i, j, a], u[b, i]) for a in range(Dout)]
                per_j.append(torch.stack(rows))
            per_i.append(torch.stack(per_j))
        per_b.append(torch.stack(per_i))
    return torch.stack(per_b)


# ----------------------------------------------------------------------------- routing
def ref_routing_one(u_hat, iterations, agreement="dot", normalize="parents", squash=ref_squash,
                    detach_inner=False):
    """Procedure 1 of Sabour et al. for ONE sample, u_hat [I, J, D], as scalar loops.

    b_ij = 0; repeat r times: c_ij = softmax(b) (over parents j, or over children i if
    normalize == "children"); s_j = sum_i c_ij u_hat_{j|i}; v_j = squash(s_j);
    b_ij += agreement(u_hat_{j|i}, v_j). The agreement update after the last iteration is
    never used, so it is skipped.

    detach_inner: the iterations before the last use u_hat.detach() (a constant for autograd),
    the final weighted sum uses u_hat — the definition of grad_through_iterations=False.

    Returns (v [J, D], c [I, J]) with c the coefficients of the final iteration.
    """
    I, J, _ = u_hat.shape
    inner = u_hat.detach() if detach_inner else u_hat
    b = [[torch.zeros((), dtype=u_hat.dtype) for _ in range(J)] for _ in range(I)]
    for r in range(iterations):
        last = r == iterations - 1
        votes = u_hat if last else inner
        # coupling coefficients
        c = [[None] * J for _ in range(I)]
        if normalize == "parents":
            for i in range(I):
                e = [torch.exp(b[i][j]) for j in range(J)]
                z = e[0]
                for j in range(1, J):
                    z = z + e[j]
                for j in range(J):
                    c[i][j] = e[j] / z
        elif normalize == "children":
            for j in range(J):
                e = [torch.exp(b[i][j]) for i in range(I)]
                z = e[0]
                for i in range(1, I):
                    z = z + e[i]
                for i in range(I):
                    c[i][j] = e[i] / z
        else:
            raise ValueError(normalize)
        # weighted sums and squash
        v = []
        for j in range(J):
            s_j = c[0][j] * votes[0, j]
            for i in range(1, I):
                s_j = s_j + c[i][j] * votes[i, j]
            v.append(squash(s_j))
        if last:
            break
        # agreement
        for i in range(I):
            for j in range(J):
                if agreement == "dot":
                    a = _dot(inner[i, j], v[j])
                elif agreement == "cosine":
                    if bool((inner[i, j] == 0).all()):
                        # a zero vote (e.g. a zero-padded child) has no direction: it neither
                        # agrees nor disagrees (capsgen's safe norm gives 0 here too)
                        a = torch.zeros((), dtype=u_hat.dtype)
                    else:
                        a = _dot(inner[i, j], v[j]) / (_norm(inner[i, j]) * _norm(v[j]))
                else:
                    raise ValueError(agreement)
                b[i][j] = b[i][j] + a
    c_t = torch.stack([torch.stack([c[i][j] for j in range(J)]) for i in range(I)])
    return torch.stack(v), c_t


def ref_routing(u_hat, iterations, agreement="dot", normalize="parents", squash=ref_squash,
                detach_inner=False):
    """Batched wrapper: u_hat [B, I, J, D] -> (v [B, J, D], c [B, I, J]); a loop over b."""
    vs, cs = [], []
    for bi in range(u_hat.shape[0]):
        v, c = ref_routing_one(u_hat[bi], iterations, agreement, normalize, squash, detach_inner)
        vs.append(v)
        cs.append(c)
    return torch.stack(vs), torch.stack(cs)


def ref_frozen_routing(u_hat, c):
    """s_j = sum_i c_ij u_hat_{j|i} then squash, with coupling c [B, I, J] held FIXED (loops)."""
    B, I, J, _ = u_hat.shape
    out = []
    for b in range(B):
        vs = []
        for j in range(J):
            s = c[b, 0, j] * u_hat[b, 0, j]
            for i in range(1, I):
                s = s + c[b, i, j] * u_hat[b, i, j]
            vs.append(ref_squash(s))
        out.append(torch.stack(vs))
    return torch.stack(out)


# ----------------------------------------------------------------------------- layers
def ref_primary_grid(x, conv_weight, conv_bias, num_capsules, capsule_dim, stride, padding=0,
                     squash=ref_squash):
    """Sabour's PrimaryCaps: conv, then channel c -> (type c // dim, pose dim c % dim), squash.

    Returns the capsule grid [B, num_capsules, H', W', capsule_dim], built position by position.
    """
    y = F.conv2d(x, conv_weight, conv_bias, stride=stride, padding=padding)
    B, C, H, W = y.shape
    assert C == num_capsules * capsule_dim
    grid = []
    for b in range(B):
        per_t = []
        for t in range(num_capsules):
            rows = []
            for h in range(H):
                cols = []
                for w in range(W):
                    pose = torch.stack([y[b, t * capsule_dim + d, h, w]
                                        for d in range(capsule_dim)])
                    cols.append(squash(pose))
                rows.append(torch.stack(cols))
            per_t.append(torch.stack(rows))
        grid.append(torch.stack(per_t))
    return torch.stack(grid)


def ref_primary_flat(grid):
    """Flatten a capsule grid [B, T, H, W, D] type-major: n = t*H*W + h*W + w."""
    B, T, H, W, D = grid.shape
    out = []
    for b in range(B):
        caps = []
        for t in range(T):
            for h in range(H):
                for w in range(W):
                    caps.append(grid[b, t, h, w])
        out.append(torch.stack(caps))
    return torch.stack(out)


def ref_dense_capsules(u, weight, iterations, agreement="dot", squash=ref_squash,
                       detach_inner=False):
    """DigitCaps: votes W_ij u_i, then routing by agreement (softmax over parents)."""
    u_hat = ref_votes(u, weight)
    return ref_routing(u_hat, iterations, agreement, "parents", squash, detach_inner)[0]


def ref_conv_capsules(x, weight, kernel_size, stride, padding, iterations, agreement="dot",
                      squash=ref_squash, detach_inner=False):
    """Convolutional capsules with routing per output position.

    x [B, Cin, H, W, Din]; weight [Cin*k*k, Cout, Dout, Din]. For output position (oy, ox) the
    children are the capsules x[b, cin, oy*stride - padding + ky, ox*stride - padding + kx]
    for cin, ky, kx (zero capsules outside the input), child index cin*k*k + ky*k + kx, voting
    with W[cin*k*k + ky*k + kx, j]. Returns [B, Cout, Ho, Wo, Dout].
    """
    B, Cin, H, W, Din = x.shape
    k = kernel_size
    _, Cout, Dout, _ = weight.shape
    Ho = (H + 2 * padding - k) // stride + 1
    Wo = (W + 2 * padding - k) // stride + 1
    zero = torch.zeros(Din, dtype=x.dtype)
    out = []
    for b in range(B):
        rows = []
        for oy in range(Ho):
            cols = []
            for ox in range(Wo):
                votes_i = []
                for cin in range(Cin):
                    for ky in range(k):
                        for kx in range(k):
                            iy = oy * stride - padding + ky
                            ix = ox * stride - padding + kx
                            inside = 0 <= iy < H and 0 <= ix < W
                            u_i = x[b, cin, iy, ix] if inside else zero
                            widx = cin * k * k + ky * k + kx
                            votes_j = []
                            for j in range(Cout):
                                votes_j.append(torch.stack(
                                    [_dot(weight[widx, j, a], u_i) for a in range(Dout)]))
                            votes_i.append(torch.stack(votes_j))
                u_hat = torch.stack(votes_i)  # [Cin*k*k, Cout, Dout]
                v, _ = ref_routing_one(u_hat, iterations, agreement, "parents", squash,
                                       detach_inner)
                cols.append(v)  # [Cout, Dout]
            rows.append(torch.stack(cols))  # [Wo, Cout, Dout]
        out.append(torch.stack(rows))  # [Ho, Wo, Cout, Dout]
    return torch.stack(out).permute(0, 3, 1, 2, 4)


# ----------------------------------------------------------------------------- losses
def ref_margin_loss(lengths, targets, m_pos=0.9, m_neg=0.1, lam=0.5):
    """Sabour eq. 4, summed over classes, averaged over samples, with scalar loops.

    targets: class indices [B] or a 0/1 matrix [B, K] (several classes may be present).
    """
    B, K = lengths.shape
    total = torch.zeros((), dtype=lengths.dtype)
    for b in range(B):
        for k in range(K):
            if targets.dim() == 1:
                t = 1.0 if int(targets[b]) == k else 0.0
            else:
                t = float(targets[b, k])
            L = lengths[b, k]
            pos = torch.clamp(m_pos - L, min=0.0) ** 2
            neg = torch.clamp(L - m_neg, min=0.0) ** 2
            total = total + t * pos + lam * (1.0 - t) * neg
    return total / B


def margin_loss_scalar(length: float, present: bool, m_pos=0.9, m_neg=0.1, lam=0.5) -> float:
    """One term of eq. 4 in pure Python floats (for hand-written expectations)."""
    if present:
        return max(0.0, m_pos - length) ** 2
    return lam * max(0.0, length - m_neg) ** 2


__all__ = [
    "ref_squash", "ref_squash_exp", "ref_unsquash", "ref_squash_last", "REF_SQUASHES",
    "ref_votes", "ref_routing_one", "ref_routing", "ref_frozen_routing",
    "ref_primary_grid", "ref_primary_flat", "ref_dense_capsules", "ref_conv_capsules",
    "ref_margin_loss", "margin_loss_scalar",
]
