"""The mixture of PPCA analysers behind the poe twin (capsgen.nn.twins_poe) against a float64 reference
written from Tipping & Bishop's equations with the full D x D covariances, loop by loop."""
from __future__ import annotations

import math

import pytest
import torch

from capsgen.nn.twins_poe import (MixtureParams, chi2_quantile, component_log_densities, em_statistics, em_step,
                                  m_step, posterior_reconstruction, responsibilities)


def ref_log_density(x: torch.Tensor, mu: torch.Tensor, W: torch.Tensor, s: torch.Tensor) -> float:
    """log N(x; mu, W W^T + s I) with the explicit covariance."""
    C = W @ W.T + s * torch.eye(len(mu), dtype=torch.float64)
    e = x - mu
    return float(-0.5 * (len(mu) * math.log(2 * math.pi) + torch.logdet(C) + e @ torch.linalg.solve(C, e)))


def ref_em_step(x: torch.Tensor, p: MixtureParams) -> tuple[MixtureParams, float]:
    """One EM iteration, appendix C of Tipping & Bishop (1999), one example and component at a time."""
    N, D = x.shape
    J, _, q = p.factors.shape
    logp = torch.zeros(N, J, dtype=torch.float64)
    for n in range(N):
        for j in range(J):
            logp[n, j] = math.log(p.weights[j]) + ref_log_density(x[n], p.means[j], p.factors[j], p.noise[j])
    loglik = float(torch.logsumexp(logp, 1).sum()) / N
    R = torch.exp(logp - torch.logsumexp(logp, 1, keepdim=True))
    weights, means, factors, noise = [], [], [], []
    for j in range(J):
        Nj = float(R[:, j].sum())
        mu = sum(R[n, j] * x[n] for n in range(N)) / Nj
        S = sum(R[n, j] * torch.outer(x[n] - mu, x[n] - mu) for n in range(N)) / Nj
        W, s = p.factors[j], float(p.noise[j])
        M = W.T @ W + s * torch.eye(q, dtype=torch.float64)
        Minv = torch.linalg.inv(M)
        W_new = S @ W @ torch.linalg.inv(s * torch.eye(q, dtype=torch.float64) + Minv @ W.T @ S @ W)
        s_new = float(torch.trace(S - S @ W @ Minv @ W_new.T)) / D
        weights.append(Nj / N)
        means.append(mu)
        factors.append(W_new)
        noise.append(s_new)
    return MixtureParams(torch.tensor(weights, dtype=torch.float64), torch.stack(means), torch.stack(factors),
                         torch.tensor(noise, dtype=torch.float64)), loglik


def clustered(N: int = 60, D: int = 7, J: int = 3, q: int = 2, seed: int = 0) -> tuple[torch.Tensor, MixtureParams]:
    """Data from J well-separated low-rank clusters in D dimensions, and a random starting mixture."""
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(J, D, generator=g, dtype=torch.float64)
    loadings = torch.randn(J, D, q, generator=g, dtype=torch.float64)
    k = torch.arange(N) % J
    z = torch.randn(N, q, generator=g, dtype=torch.float64)
    x = centres[k] + torch.einsum("ndq,nq->nd", loadings[k], z) + 0.3 * torch.randn(N, D, generator=g,
                                                                                      dtype=torch.float64)
    start = MixtureParams(torch.full((J,), 1.0 / J, dtype=torch.float64), x[torch.randperm(N, generator=g)[:J]].clone(),
                          0.5 * torch.randn(J, D, q, generator=g, dtype=torch.float64),
                          torch.ones(J, dtype=torch.float64))
    return x, start


def test_log_densities_are_the_full_covariance_gaussians():
    x, p = clustered()
    got = component_log_densities(x, p)
    for n in range(0, 60, 7):
        for j in range(3):
            assert float(got[n, j]) == pytest.approx(ref_log_density(x[n], p.means[j], p.factors[j], p.noise[j]),
                                                     rel=1e-12, abs=1e-10)


def test_one_em_step_equals_the_loop_reference_in_float64():
    x, p = clustered()
    for _ in range(3):                       # from the random start and from later iterates
        got, got_ll = em_step(x, p)
        ref, ref_ll = ref_em_step(x, p)
        assert got_ll == pytest.approx(ref_ll, rel=1e-12)
        for name in ("weights", "means", "factors", "noise"):
            assert torch.allclose(getattr(got, name), getattr(ref, name), rtol=1e-10, atol=1e-12), name
        p = got


def test_log_likelihood_never_decreases():
    x, p = clustered(N=90, D=9, J=4, q=3, seed=1)
    lls = []
    for _ in range(40):
        p, ll = em_step(x, p)
        lls.append(ll)
    assert all(b >= a - 1e-9 for a, b in zip(lls, lls[1:])), lls
    assert lls[-1] > lls[0] + 1.0


def test_statistics_of_batches_add_up_to_those_of_the_whole():
    x, p = clustered()
    whole = em_statistics(x, p)
    parts = em_statistics(x[:25], p) + em_statistics(x[25:40], p) + em_statistics(x[40:], p)
    for a, b in zip(whole.tensors(), parts.tensors()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_an_empty_component_keeps_its_parameters_and_the_noise_floor_holds():
    x, p = clustered()
    far = MixtureParams(p.weights, torch.cat([p.means[:2], torch.full((1, 7), 1e3, dtype=torch.float64)]),
                        p.factors, p.noise)
    new = m_step(em_statistics(x, far), far, min_count=1e-3, noise_floor=0.5)
    assert torch.equal(new.means[2], far.means[2]) and torch.equal(new.factors[2], far.factors[2])
    assert float(new.weights[2]) < 1e-3 and torch.isfinite(new.factors).all()
    assert float(new.noise.min()) >= 0.5


def test_responsibilities_sum_to_one_and_reconstruction_is_the_projection():
    x, p = clustered()
    for _ in range(20):
        p, _ = em_step(x, p)
    R, _ = responsibilities(x, p)
    assert torch.allclose(R.sum(1), torch.ones(60, dtype=torch.float64))
    rec = posterior_reconstruction(x, p)
    j = R.argmax(1)
    W, mu, s = p.factors[j[0]], p.means[j[0]], p.noise[j[0]]
    z = torch.linalg.solve(W.T @ W + s * torch.eye(2, dtype=torch.float64), W.T @ (x[0] - mu))
    assert torch.allclose(rec[0], mu + W @ z, atol=1e-6)     # R is one-hot on separated clusters
    assert float((rec - x).pow(2).mean()) < float((x - x.mean(0)).pow(2).mean()) / 10


def test_chi2_quantile_matches_known_values():
    assert chi2_quantile(2, 0.5) == pytest.approx(2 * math.log(2), rel=1e-9)    # exponential with mean 2
    assert chi2_quantile(16, 0.5) == pytest.approx(15.3382, rel=1e-4)


def test_a_degenerate_component_at_the_noise_floor_still_has_finite_float32_densities():
    """A component fitted to one direction (rank-1 W_j, s_j at the floor): M_j = W^T W + s I has a
    condition number ~1e10, beyond float32's Cholesky (which the mnist-5k twin once hit)."""
    g = torch.Generator().manual_seed(0)
    col = 30 * torch.randn(50, 1, generator=g)
    p = MixtureParams(torch.tensor([0.5, 0.5]), torch.randn(2, 50, generator=g),
                      torch.stack([col.expand(50, 4).clone(), torch.randn(50, 4, generator=g)]),
                      torch.tensor([1e-5, 1.0]))
    with pytest.raises(RuntimeError):      # what the float32 factorisation does
        torch.linalg.cholesky(p.factors.mT @ p.factors + p.noise[:, None, None] * torch.eye(4))
    x = torch.randn(8, 50, generator=g)
    got = component_log_densities(x, p)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    ref = component_log_densities(x.double(), MixtureParams(*(t.double() for t in (p.weights, p.means, p.factors,
                                                                                   p.noise))))
    assert torch.allclose(got.double(), ref, rtol=1e-4)
