"""A mixture of probabilistic PCA analysers fitted by EM: the non-capsule twin of Hauser's code capsules.

Component j of J is a Gaussian with a q-dimensional linear latent (Tipping & Bishop 1999, "Mixtures
of probabilistic principal component analysers", Neural Computation 11(2)):

    x = mu_j + W_j z + eps,   z ~ N(0, I_q),   eps ~ N(0, s_j I_D)   =>   x ~ N(mu_j, C_j),
    C_j = W_j W_j^T + s_j I,  p(x) = sum_j pi_j N(x; mu_j, C_j).

So a component, like a code capsule, is a q-D pose space linearly decoded into the visible space
(W_j [D, q] has the shape of one capsule's slice of Hauser's decoder U). Densities use Woodbury,
never a D x D matrix: with M_j = W_j^T W_j + s_j I [q, q],
    C_j^{-1} = (I - W_j M_j^{-1} W_j^T) / s_j,   log det C_j = (D - q) log s_j + log det M_j.

EM (their appendix C), from the responsibilities R_nj = p(j | x_n) under the current parameters:
    N_j = sum_n R_nj,  pi_j = N_j / N,  mu_j = sum_n R_nj x_n / N_j,
    S_j = sum_n R_nj (x_n - mu_j)(x_n - mu_j)^T / N_j                      (with the new mu_j)
    W_j' = S_j W_j (s_j I + M_j^{-1} W_j^T S_j W_j)^{-1}
    s_j' = tr(S_j - S_j W_j M_j^{-1} W_j'^T) / D
S_j enters only as S_j W_j = sum_n R_nj x_n (x_n^T W_j) / N_j - mu_j (mu_j^T W_j), and through
tr S_j = sum_n R_nj ||x_n||^2 / N_j - ||mu_j||^2, so the E-step's sufficient statistics are sums
over examples (:class:`EMStatistics`) that can be accumulated batch by batch and over processes
before one M-step. Every function is vectorised over examples and components; shapes:
x [B, D], weights [J], means [J, D], factors [J, D, q], noise [J].
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch


@dataclass
class MixtureParams:
    """pi [J], mu [J, D], W [J, D, q], s [J] of a mixture of PPCA analysers."""

    weights: torch.Tensor
    means: torch.Tensor
    factors: torch.Tensor
    noise: torch.Tensor


@dataclass
class EMStatistics:
    """Sums over examples of the E-step: count N_j [J], sum R x [J, D], sum R ||x||^2 [J],
    sum R x (x^T W_j) [J, D, q] (with the W of the E-step), and the log-likelihood sum []."""

    count: torch.Tensor
    sum_x: torch.Tensor
    sum_sq: torch.Tensor
    cross: torch.Tensor
    loglik: torch.Tensor

    def __add__(self, other: "EMStatistics") -> "EMStatistics":
        return EMStatistics(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self)]


def _inner_cholesky(p: MixtureParams) -> torch.Tensor:
    """Cholesky factor of M_j = W_j^T W_j + s_j I [J, q, q], in float64: a component fitted to a
    few examples has s_j at the noise floor beside W_j^T W_j's large eigenvalues, and float32 then
    fails the factorisation (mnist-5k, 30 EM steps: "the leading minor of order 16 is not
    positive-definite"); these matrices are q x q, so float64 costs nothing."""
    W = p.factors.double()
    eye = torch.eye(W.shape[-1], dtype=torch.float64, device=W.device)
    return torch.linalg.cholesky(W.mT @ W + p.noise.double()[:, None, None] * eye)


def _centred_projections(x: torch.Tensor, p: MixtureParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(||x_n - mu_j||^2 [B, J], W_j^T (x_n - mu_j) [J, q, B]) from the differences themselves, not
    expanded into ||x||^2 - 2 x.mu + ||mu||^2, which cancels when x is near mu."""
    e = x[:, None, :] - p.means[None]                                          # [B, J, D]
    return (e * e).sum(-1), torch.einsum("bjd,jdq->jqb", e, p.factors)


def component_log_densities(x: torch.Tensor, p: MixtureParams) -> torch.Tensor:
    """log N(x_n; mu_j, W_j W_j^T + s_j I) [B, J] for x [B, D], through Woodbury (no D x D matrix);
    the q x q algebra in float64, the result in x's dtype."""
    D, q = p.factors.shape[-2:]
    chol = _inner_cholesky(p)
    sq, proj = _centred_projections(x, p)
    proj = proj.double()
    quad = (proj * torch.cholesky_solve(proj, chol)).sum(1).T                 # e^T W M^-1 W^T e, [B, J]
    s = p.noise.double()
    logdet = (D - q) * torch.log(s) + 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    out = -0.5 * (D * math.log(2 * math.pi) + logdet + (sq.double() - quad) / s)
    return out.to(x.dtype)


def responsibilities(x: torch.Tensor, p: MixtureParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(R [B, J] = p(j | x_n), log p(x_n) [B]) under the mixture."""
    joint = component_log_densities(x, p) + torch.log(p.weights)
    log_px = torch.logsumexp(joint, dim=1)
    return torch.exp(joint - log_px[:, None]), log_px


def em_statistics(x: torch.Tensor, p: MixtureParams) -> EMStatistics:
    """The E-step's sums over the examples x [B, D] (see the module docstring)."""
    R, log_px = responsibilities(x, p)
    xw = torch.einsum("bd,jdq->bjq", x, p.factors)                             # x_n^T W_j
    B, J, q = xw.shape
    cross = (x.T @ (R[:, :, None] * xw).reshape(B, J * q)).reshape(-1, J, q).permute(1, 0, 2)
    return EMStatistics(count=R.sum(0), sum_x=R.T @ x, sum_sq=R.T @ (x * x).sum(1), cross=cross,
                        loglik=log_px.sum())


def m_step(stats: EMStatistics, p: MixtureParams, min_count: float = 1e-6,
           noise_floor: float = 0.0) -> MixtureParams:
    """New parameters from the sums of one E-step under ``p`` (Tipping & Bishop's appendix C).

    A component whose responsibility sum is at most ``min_count`` keeps its mean, factors and noise
    (its weight becomes that tiny share): dividing by N_j ~ 0 would give NaN. The noise is kept
    at or above ``noise_floor``. The statistics' dtype is the computation's; the result has p's.
    """
    dt = stats.cross.dtype
    W, s = p.factors.to(dt), p.noise.to(dt)
    D, q = W.shape[-2:]
    alive = stats.count > min_count
    n = stats.count.clamp(min=min_count)
    mu = stats.sum_x / n[:, None]
    sw = stats.cross / n[:, None, None] - mu[:, :, None] * torch.einsum("jd,jdq->jq", mu, W)[:, None, :]
    tr_s = stats.sum_sq / n - (mu * mu).sum(1)
    eye = torch.eye(q, dtype=dt, device=W.device)
    m_inv = torch.linalg.inv(W.mT @ W + s[:, None, None] * eye)                # [J, q, q]
    inner = s[:, None, None] * eye + m_inv @ W.mT @ sw
    w_new = torch.linalg.solve(inner.mT, sw.mT).mT                             # S W (sI + M^-1 W^T S W)^-1
    s_new = ((tr_s - ((sw @ m_inv) * w_new).sum((1, 2))) / D).clamp(min=noise_floor)
    keep = ~alive
    mu = torch.where(keep[:, None], p.means.to(dt), mu)
    w_new = torch.where(keep[:, None, None], W, w_new)
    s_new = torch.where(keep, s, s_new)
    weights = stats.count / stats.count.sum()
    out = p.factors.dtype
    return MixtureParams(weights.to(out), mu.to(out), w_new.to(out), s_new.to(out))


def em_step(x: torch.Tensor, p: MixtureParams, **kw) -> tuple[MixtureParams, float]:
    """One whole EM iteration on x [N, D]: (new parameters, mean log p(x) under the old ones)."""
    stats = em_statistics(x, p)
    return m_step(stats, p, **kw), float(stats.loglik) / len(x)


def posterior_latents(x: torch.Tensor, p: MixtureParams) -> torch.Tensor:
    """E[z | x_n, j] = M_j^{-1} W_j^T (x_n - mu_j) for every component: [J, q, B]."""
    _, proj = _centred_projections(x, p)
    return torch.cholesky_solve(proj.double(), _inner_cholesky(p)).to(x.dtype)


def posterior_reconstruction(x: torch.Tensor, p: MixtureParams) -> torch.Tensor:
    """sum_j R_nj (mu_j + W_j E[z | x_n, j]) [B, D]: each component's noise-free projection of x
    (:func:`posterior_latents`), weighted by the responsibilities."""
    R, _ = responsibilities(x, p)
    z = posterior_latents(x, p)                                               # [J, q, B]
    recon = p.means[:, None, :] + torch.einsum("jdq,jqb->jbd", p.factors, z)  # [J, B, D]
    return torch.einsum("bj,jbd->bd", R, recon)


def chi2_quantile(dof: int, level: float) -> float:
    """The ``level`` quantile of the chi-square law with ``dof`` degrees of freedom (bisection on
    its CDF, the regularised lower incomplete gamma P(dof / 2, r / 2))."""
    lo, hi = 0.0, float(dof) + 20.0 * math.sqrt(2.0 * dof) + 20.0
    a = torch.tensor(dof / 2.0, dtype=torch.float64)
    for _ in range(100):
        mid = (lo + hi) / 2
        if float(torch.special.gammainc(a, torch.tensor(mid / 2.0, dtype=torch.float64))) < level:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
