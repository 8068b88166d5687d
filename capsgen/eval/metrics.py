"""Sample-quality metrics computed on feature vectors.

Every function here takes *features* (the evaluator network's penultimate activations, or any
other embedding), never images, so the maths is testable on hand-built point sets. Inputs may be
numpy arrays or torch tensors of any float dtype; everything is computed in float64.

Shapes: ``feats_a`` / ``real`` are ``[N, D]``, ``feats_b`` / ``fake`` are ``[M, D]`` (one row per
sample), ``probs`` is ``[N, K]`` (rows are class distributions) and ``pred_classes`` is ``[N]``.

Memory: nothing here builds a dense N x M distance matrix. Pairwise distances are produced in
``chunk_size x chunk_size`` blocks (torch.cdist; numpy on this machine can crash on a large float64
``X @ X.T``), and the k-NN radii keep only each row's k+1 smallest distances (a running
``torch.topk`` merged across column blocks). Peak memory is O(chunk_size^2 + (N + M) k).

Conventions that change numbers and are easy to get wrong:

* FID uses the unbiased covariance (ddof = 1), as pytorch-fid / TTUR do.
* KID is the *unbiased* MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3,
  averaged over random subsets drawn without replacement (Binkowski et al. 2018).
* The k-NN radius of a point is the distance to its k-th nearest *other* point of the same set.
* precision / recall use closed balls (d <= r), as in Kynkaanniemi et al.'s reference code;
  density / coverage use open balls (d < r), as in Naeem et al.'s reference code (``prdc``). With
  open balls a set compared with itself has density exactly 1. For continuous features ties have
  probability zero and the two conventions agree.
"""
from __future__ import annotations

import math
import warnings
from typing import Iterator

import numpy as np
import torch
from scipy import linalg
from scipy.special import xlogy

from capsgen.errors import CapsgenError

# Diagonal offset added to both covariances when sqrtm(S1 S2) is not finite (singular product),
# the same value pytorch-fid uses.
FID_EPS = 1e-6

# Default side of a distance block: 2048 x 2048 float64 = 32 MiB per block.
DEFAULT_CHUNK = 2048


class MetricInputError(CapsgenError, ValueError):
    """Features of the wrong shape, too few samples, or values outside the metric's domain."""


# ----------------------------------------------------------------------------- helpers
def _as_tensor_2d(x, name: str) -> torch.Tensor:
    """Any array-like of shape [N, D] -> contiguous float64 CPU tensor (no copy if already one)."""
    if isinstance(x, torch.Tensor):
        t = x.detach().to(device="cpu", dtype=torch.float64)
    else:
        t = torch.as_tensor(np.asarray(x, dtype=np.float64))
    if t.ndim != 2:
        raise MetricInputError(f"{name} must be a 2-D array [n_samples, n_features], got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise MetricInputError(f"{name} is empty (shape {tuple(t.shape)})")
    if not torch.isfinite(t).all():
        raise MetricInputError(f"{name} contains NaN or infinite values")
    return t.contiguous()


def _same_dim(a: torch.Tensor, b: torch.Tensor, na: str, nb: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise MetricInputError(f"{na} has {a.shape[1]} features per sample but {nb} has {b.shape[1]}")


def _check_chunk(chunk_size: int) -> int:
    if int(chunk_size) < 1:
        raise MetricInputError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


def distance_blocks(x: torch.Tensor, y: torch.Tensor, chunk_size: int = DEFAULT_CHUNK
                    ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(i0, j0, D)`` where ``D[a, b] = ||x[i0 + a] - y[j0 + b]||`` covers one block.

    ``x`` is [N, D], ``y`` is [M, D] (float64 tensors); blocks are at most chunk_size x chunk_size.
    torch.cdist's matmul path is used (||x||^2 + ||y||^2 - 2 x.y, clamped at 0): about 5x faster
    than the difference path, exact for small-integer coordinates, and for float features its
    rounding (~1e-8 absolute near zero distance in float64) never matters for these metrics.
    """
    chunk_size = _check_chunk(chunk_size)
    for i0 in range(0, x.shape[0], chunk_size):
        xb = x[i0:i0 + chunk_size]
        for j0 in range(0, y.shape[0], chunk_size):
            yield i0, j0, torch.cdist(xb, y[j0:j0 + chunk_size], compute_mode="use_mm_for_euclid_dist")


def kth_nn_distances(x, k: int, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Distance from each row of ``x`` [N, D] to its k-th nearest *other* row; returns [N] float64.

    The point itself (distance 0) is counted among the k+1 smallest and then skipped, so exact
    duplicates of a point do count as neighbours (radius 0 if a point has >= k duplicates).
    """
    x = _as_tensor_2d(x, "x")
    if k < 1:
        raise MetricInputError(f"k must be >= 1, got {k}")
    n = x.shape[0]
    if n < k + 1:
        raise MetricInputError(f"need more than k={k} samples for a k-NN radius, got {n}")
    chunk_size = _check_chunk(chunk_size)
    radii = torch.empty(n, dtype=torch.float64)
    for i0 in range(0, n, chunk_size):
        xb = x[i0:i0 + chunk_size]
        # running k+1 smallest distances of each row in this row block, merged across column blocks
        best = torch.full((xb.shape[0], k + 1), math.inf, dtype=torch.float64)
        for j0 in range(0, n, chunk_size):
            d = torch.cdist(xb, x[j0:j0 + chunk_size], compute_mode="use_mm_for_euclid_dist")
            best = torch.topk(torch.cat([best, d], dim=1), k + 1, dim=1, largest=False).values
        # topk(largest=False) returns ascending values: column k is the (k+1)-th smallest
        radii[i0:i0 + xb.shape[0]] = best[:, k]
    return radii


def _mean_cov(x: torch.Tensor, chunk_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of x [N, D], accumulated over row chunks."""
    n = x.shape[0]
    if n < 2:
        raise MetricInputError(f"need at least 2 samples to estimate a covariance, got {n}")
    mu = x.mean(dim=0)
    cov = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
    for i0 in range(0, n, chunk_size):
        xc = x[i0:i0 + chunk_size] - mu
        cov += xc.T @ xc
    cov /= n - 1
    return mu.numpy(), cov.numpy()


# ----------------------------------------------------------------------------- FID
def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = FID_EPS) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))

    (Tr (S1 S2)^(1/2) equals Tr (S1^(1/2) S2 S1^(1/2))^(1/2) for PSD S1, S2.) ``mu`` are [D],
    ``sigma`` are [D, D]. As in pytorch-fid: if ``scipy.linalg.sqrtm(S1 S2)`` is not finite (a
    singular product, e.g. fewer samples than features), ``eps * I`` is added to both covariances
    and the root is recomputed; a complex root whose diagonal has an imaginary part above 1e-3 is
    an error, smaller imaginary parts (rounding) are dropped. Tiny negative results from rounding
    are clamped to 0.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise MetricInputError(f"mean vectors must be 1-D and equal length, got {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise MetricInputError(
            f"covariances must be [{d}, {d}], got {sigma1.shape} and {sigma2.shape}")

    diff = mu1 - mu2
    with warnings.catch_warnings():
        # sqrtm warns about singular matrices; we detect that case ourselves below.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(d) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if not np.isfinite(covmean).all():
        raise MetricInputError("matrix square root of the covariance product is not finite, even "
                               f"after adding {eps} to the diagonals")
    if np.iscomplexobj(covmean):
        max_imag = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if max_imag > 1e-3:
            raise MetricInputError(f"sqrtm(S1 S2) has a large imaginary component ({max_imag:g}); "
                                   "the covariances are probably not positive semi-definite")
        covmean = covmean.real
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def fid(feats_a, feats_b, eps: float = FID_EPS) -> float:
    """Frechet distance between Gaussians fitted to ``feats_a`` [N, D] and ``feats_b`` [M, D].

    Symmetric in its arguments. Biased for small N (it shrinks as N grows); always compare scores
    computed with the same sample counts and report the real-vs-real floor beside them.
    """
    a = _as_tensor_2d(feats_a, "feats_a")
    b = _as_tensor_2d(feats_b, "feats_b")
    _same_dim(a, b, "feats_a", "feats_b")
    mu1, s1 = _mean_cov(a)
    mu2, s2 = _mean_cov(b)
    return frechet_distance(mu1, s1, mu2, s2, eps=eps)


# ----------------------------------------------------------------------------- KID
def _poly_kernel(x: torch.Tensor, y: torch.Tensor, degree: int) -> torch.Tensor:
    return (x @ y.T / x.shape[1] + 1.0) ** degree


def mmd2_unbiased(x, y, degree: int = 3) -> float:
    """Unbiased MMD^2 between x [m, D] and y [n, D] with kernel (x.y / D + 1)^degree.

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (n (n-1))
              - 2 sum_{i, j} k(x_i, y_j) / (m n)

    Builds [m, m], [n, n] and [m, n] kernels: call it on subsets (``kid`` does).
    """
    x = _as_tensor_2d(x, "x")
    y = _as_tensor_2d(y, "y")
    _same_dim(x, y, "x", "y")
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise MetricInputError(f"unbiased MMD needs at least 2 samples per set, got {m} and {n}")
    kxx = _poly_kernel(x, x, degree)
    kyy = _poly_kernel(y, y, degree)
    kxy = _poly_kernel(x, y, degree)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kid(feats_a, feats_b, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance on features: (mean, std) of unbiased MMD^2 over random subsets.

    ``feats_a`` [N, D], ``feats_b`` [M, D]. Each of ``subsets`` rounds draws ``subset_size`` rows
    from each set without replacement (``subset_size`` is clipped to min(N, M)) and computes
    :func:`mmd2_unbiased` with the cubic polynomial kernel. ``std`` is the population standard
    deviation of the per-subset values (as in Binkowski et al.'s and torch-fidelity's code); it
    is 0 when the subsets are the whole sets. Unbiased, so it can be slightly negative when the
    two distributions are equal.
    """
    a = _as_tensor_2d(feats_a, "feats_a")
    b = _as_tensor_2d(feats_b, "feats_b")
    _same_dim(a, b, "feats_a", "feats_b")
    if subsets < 1:
        raise MetricInputError(f"subsets must be >= 1, got {subsets}")
    m = min(int(subset_size), a.shape[0], b.shape[0])
    if m < 2:
        raise MetricInputError(f"KID needs subsets of at least 2 samples, got {m} "
                               f"(subset_size={subset_size}, N={a.shape[0]}, M={b.shape[0]})")
    rng = np.random.default_rng(seed)
    values = np.empty(subsets, dtype=np.float64)
    for s in range(subsets):
        ia = torch.as_tensor(rng.choice(a.shape[0], m, replace=False))
        ib = torch.as_tensor(rng.choice(b.shape[0], m, replace=False))
        values[s] = mmd2_unbiased(a[ia], b[ib], degree=degree)
    return float(values.mean()), float(values.std())


# ----------------------------------------------------------------------------- IS
def inception_score(probs, splits: int = 10) -> tuple[float, float]:
    """Inception Score of classifier outputs ``probs`` [N, K] (rows: p(y|x), summing to 1).

    For each of ``splits`` consecutive slices, IS = exp(mean_x KL(p(y|x) || p(y))) with p(y) the
    slice's mean prediction; returns (mean, std) over slices (as the original improved-GAN code,
    slices are ``probs[i*N//splits : (i+1)*N//splits]``, not shuffled: shuffle first if the rows
    are ordered by class). 0 log 0 is taken as 0. Ranges from 1 (all predictions equal) to K
    (confident predictions spread evenly over K classes).
    """
    p = _as_tensor_2d(probs, "probs").numpy()
    n = p.shape[0]
    if (p < -1e-9).any():
        raise MetricInputError("probs contains negative values: pass softmax probabilities, not logits")
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise MetricInputError("rows of probs must sum to 1 (pass softmax probabilities, not logits)")
    if not 1 <= splits <= n:
        raise MetricInputError(f"splits must be between 1 and the number of samples ({n}), got {splits}")
    p = np.clip(p, 0.0, None)
    scores = []
    for i in range(splits):
        part = p[i * n // splits:(i + 1) * n // splits]
        py = part.mean(axis=0, keepdims=True)
        # KL(p || py) summed over classes; where p = 0 the term is 0 (xlogy handles 0 log 0)
        kl = (xlogy(part, part) - xlogy(part, np.broadcast_to(py, part.shape))).sum(axis=1)
        scores.append(math.exp(float(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------- PR / DC
def _prdc_counts(real: torch.Tensor, fake: torch.Tensor, r_real: torch.Tensor,
                 r_fake: torch.Tensor | None, chunk_size: int):
    """One pass over real x fake distance blocks.

    With ``r_fake`` (precision / recall, closed balls) returns (fake in real manifold [M] bool,
    real in fake manifold [N] bool); without it (density / coverage, open balls) returns
    (#real balls holding each fake [M] float64, real ball holds some fake [N] bool).
    """
    n, m = real.shape[0], fake.shape[0]
    if r_fake is not None:
        fake_in_real = torch.zeros(m, dtype=torch.bool)
        real_in_fake = torch.zeros(n, dtype=torch.bool)
        for i0, j0, d in distance_blocks(real, fake, chunk_size):
            rows, cols = slice(i0, i0 + d.shape[0]), slice(j0, j0 + d.shape[1])
            fake_in_real[cols] |= (d <= r_real[rows, None]).any(dim=0)
            real_in_fake[rows] |= (d <= r_fake[None, cols]).any(dim=1)
        return fake_in_real, real_in_fake
    counts = torch.zeros(m, dtype=torch.float64)
    covered = torch.zeros(n, dtype=torch.bool)
    for i0, j0, d in distance_blocks(real, fake, chunk_size):
        rows, cols = slice(i0, i0 + d.shape[0]), slice(j0, j0 + d.shape[1])
        inside = d < r_real[rows, None]
        counts[cols] += inside.sum(dim=0)
        covered[rows] |= inside.any(dim=1)
    return counts, covered


def precision_recall(real, fake, k: int = 3, chunk_size: int = DEFAULT_CHUNK) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of ``fake`` [M, D] vs ``real`` [N, D].

    Each set's manifold is the union of closed balls around its points with radius = distance
    to the point's k-th nearest neighbour in the same set.
    precision = fraction of fake points inside the real manifold;
    recall    = fraction of real points inside the fake manifold.
    """
    real = _as_tensor_2d(real, "real")
    fake = _as_tensor_2d(fake, "fake")
    _same_dim(real, fake, "real", "fake")
    r_real = kth_nn_distances(real, k, chunk_size)
    r_fake = kth_nn_distances(fake, k, chunk_size)
    prec, rec = _prdc_counts(real, fake, r_real, r_fake, chunk_size)
    return float(prec.double().mean()), float(rec.double().mean())


def density_coverage(real, fake, k: int = 5, chunk_size: int = DEFAULT_CHUNK) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020) of ``fake`` [M, D] vs ``real`` [N, D].

    With B_i the open ball around real point i of radius = its k-th nearest-neighbour distance
    among the real points:
    density  = (1 / (k M)) sum_j #{i : fake_j in B_i}   (expected value 1 when fake ~ real;
               can exceed 1);
    coverage = (1 / N) #{i : some fake point lies in B_i}.
    Only the real set's radii are needed, so the fake set may be small.
    """
    real = _as_tensor_2d(real, "real")
    fake = _as_tensor_2d(fake, "fake")
    _same_dim(real, fake, "real", "fake")
    r_real = kth_nn_distances(real, k, chunk_size)
    counts, covered = _prdc_counts(real, fake, r_real, None, chunk_size)
    density = float(counts.sum()) / (k * fake.shape[0])
    return density, float(covered.double().mean())


# ----------------------------------------------------------------------------- classes
def class_coverage(pred_classes, num_classes: int) -> dict:
    """How evenly predicted classes of generated samples spread over ``num_classes`` classes.

    ``pred_classes`` [N] integer labels in [0, num_classes). Returns a dict:
    ``counts`` (list of N_c), ``n``, ``classes_hit`` (#c with N_c > 0), ``fraction_hit``,
    ``entropy`` (nats, of the empirical class distribution p_c = N_c / N),
    ``normalized_entropy`` (entropy / log K: 1 = uniform, 0 = a single class) and
    ``kl_from_uniform`` = KL(p || U) = log K - entropy (nats; 0 = uniform).
    A mode-collapsed generator shows as low fraction_hit / normalized_entropy.
    """
    if isinstance(pred_classes, torch.Tensor):
        pred_classes = pred_classes.detach().cpu().numpy()
    y = np.asarray(pred_classes)
    if y.ndim != 1 or y.size == 0:
        raise MetricInputError(f"pred_classes must be a non-empty 1-D array, got shape {y.shape}")
    if num_classes < 1:
        raise MetricInputError(f"num_classes must be >= 1, got {num_classes}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise MetricInputError("pred_classes must hold integer class indices")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= num_classes:
        raise MetricInputError(f"pred_classes must lie in [0, {num_classes}), got range [{y.min()}, {y.max()}]")
    counts = np.bincount(y, minlength=num_classes)
    p = counts / counts.sum()
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    log_k = math.log(num_classes)
    return {
        "counts": counts.tolist(),
        "n": int(y.size),
        "num_classes": int(num_classes),
        "classes_hit": int((counts > 0).sum()),
        "fraction_hit": float((counts > 0).mean()),
        "entropy": entropy,
        "normalized_entropy": entropy / log_k if num_classes > 1 else 1.0,
        "kl_from_uniform": max(log_k - entropy, 0.0),
    }
