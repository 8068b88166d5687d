"""FID, KID, IS, precision/recall, density/coverage and class coverage on hand-built features."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from capsgen.eval import metrics as M


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def gauss(n, d, seed, shift=0.0, scale=1.0):
    return np.random.default_rng(seed).normal(size=(n, d)) * scale + shift


# ----------------------------------------------------------------------------- FID
def test_fid_identical_sets_is_zero():
    a = gauss(200, 6, 0)
    assert M.fid(a, a) == pytest.approx(0.0, abs=1e-8)
    assert M.fid(torch.tensor(a, dtype=torch.float32), a) == pytest.approx(0.0, abs=1e-5)


def test_frechet_distance_diagonal_closed_form():
    # Diagonal covariances commute, so Tr (S1 S2)^1/2 = sum_i sqrt(a_i b_i) and
    # d^2 = ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    # ||mu1 - mu2||^2 = 1 + 0 + 4 = 5;  (1-2)^2 + (2-1)^2 + (3-3)^2 = 2  ->  7
    assert M.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(7.0, abs=1e-10)


def test_frechet_distance_general_covariance():
    # S1 = I: Tr(I + S - 2 S^1/2) = sum over eigenvalues l of S of (1 - sqrt(l))^2.
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))
    lam = np.array([0.25, 1.0, 4.0, 9.0])
    s = q @ np.diag(lam) @ q.T
    expected = float(((1 - np.sqrt(lam)) ** 2).sum())  # 0.25 + 0 + 1 + 4 = 5.25
    assert expected == pytest.approx(5.25)
    z = np.zeros(4)
    assert M.frechet_distance(z, np.eye(4), z, s) == pytest.approx(expected, abs=1e-9)
    assert M.frechet_distance(z, s, z, np.eye(4)) == pytest.approx(expected, abs=1e-9)


def test_fid_matches_fitted_gaussians_symmetric_and_mean_shift():
    a, b = gauss(300, 5, 2), gauss(250, 5, 3, shift=0.5, scale=1.5)
    expected = M.frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert M.fid(a, b) == pytest.approx(expected, rel=1e-10)
    assert M.fid(a, b) == pytest.approx(M.fid(b, a), rel=1e-8)
    delta = np.array([1.0, -2.0, 0.5, 0.0, 3.0])  # ||delta||^2 = 1 + 4 + 0.25 + 9 = 14.25
    assert M.fid(a, a + delta) == pytest.approx(14.25, rel=1e-9)
    # shifting b by delta changes only the mean term ||mu_a - mu_b - delta||^2
    diff = a.mean(0) - b.mean(0)
    assert M.fid(a, b + delta) - M.fid(a, b) == pytest.approx(
        (diff - delta) @ (diff - delta) - diff @ diff, rel=1e-8)


def test_fid_singular_covariance_is_finite():
    # 5 samples in 10 dimensions: rank-deficient covariances, sqrtm needs the eps offset path.
    a, b = gauss(5, 10, 4), gauss(5, 10, 5)
    v = M.fid(a, b)
    assert math.isfinite(v) and v > 0
    assert M.fid(a, a) == pytest.approx(0.0, abs=1e-4)


def test_fid_eps_offset_when_sqrtm_not_finite(monkeypatch):
    # scipy's sqrtm rarely returns non-finite values; force it once to exercise the fallback,
    # which must retry with eps * I added to both covariances (pytorch-fid's recipe).
    calls = []
    real_sqrtm = M.linalg.sqrtm

    def fake_sqrtm(a):
        calls.append(a.copy())
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(M.linalg, "sqrtm", fake_sqrtm)
    s1, s2 = np.diag([1.0, 4.0]), np.diag([4.0, 1.0])
    v = M.frechet_distance(np.zeros(2), s1, np.zeros(2), s2, eps=0.01)
    np.testing.assert_allclose(calls[1], (s1 + 0.01 * np.eye(2)) @ (s2 + 0.01 * np.eye(2)))
    # the traces keep the original covariances: Tr(S1 + S2) = 10; the root of
    # diag(1.01 * 4.01, 4.01 * 1.01) has trace 2 sqrt(4.0501) -> 10 - 4 sqrt(4.0501) = 1.95012...
    assert v == pytest.approx(10 - 4 * math.sqrt(1.01 * 4.01), rel=1e-12)


def test_fid_rejects_bad_input():
    with pytest.raises(ValueError):
        M.fid(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError):
        M.fid(np.zeros((1, 3)), np.zeros((10, 3)))
    with pytest.raises(ValueError):
        M.fid(np.zeros(10), np.zeros((10, 1)))


# ----------------------------------------------------------------------------- KID
def mmd2_loops(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b / D + 1)^3, written out as plain loops."""
    m, n, d = len(x), len(y), x.shape[1]
    k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3  # noqa: E731
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_kid_matches_loop_mmd_on_tiny_sets():
    x, y = gauss(7, 3, 6), gauss(7, 3, 7, shift=0.4)
    expected = mmd2_loops(x, y)
    assert M.mmd2_unbiased(x, y) == pytest.approx(expected, rel=1e-10)
    # subset_size clipped to 7 = whole sets: every subset is a permutation, same value, std 0
    mean, std = M.kid(x, y, subsets=3, subset_size=1000)
    assert mean == pytest.approx(expected, rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)
    assert M.mmd2_unbiased(x, gauss(5, 3, 8)) == pytest.approx(mmd2_loops(x, gauss(5, 3, 8)), rel=1e-10)


def test_kid_same_distribution_near_zero_shifted_positive():
    a, b = gauss(400, 8, 9), gauss(400, 8, 10)
    mean, std = M.kid(a, b, subsets=20, subset_size=200, seed=1)
    assert std > 0
    assert abs(mean) < 3 * std
    mean_s, std_s = M.kid(a, gauss(400, 8, 11, shift=1.0), subsets=20, subset_size=200, seed=1)
    assert mean_s > 10 * std_s and mean_s > 20 * abs(mean)
    # reproducible from the seed
    assert M.kid(a, b, subsets=5, subset_size=100, seed=3) == M.kid(a, b, subsets=5, subset_size=100, seed=3)


# ----------------------------------------------------------------------------- IS
def test_inception_score_bounds_and_hand_case():
    k = 10
    uniform = np.full((100, k), 1.0 / k)
    assert M.inception_score(uniform, splits=10) == pytest.approx((1.0, 0.0))
    # one-hot predictions cycling over the classes: each split of 100 holds every class 10 times
    onehot = np.eye(k)[np.arange(1000) % k]
    mean, std = M.inception_score(onehot, splits=10)
    assert mean == pytest.approx(k) and std == pytest.approx(0.0, abs=1e-12)
    # p1 = [1, 0], p2 = [.5, .5]  ->  p(y) = [.75, .25]
    # KL1 = log(1/.75) = log(4/3);  KL2 = .5 log(.5/.75) + .5 log(.5/.25) = .5 log(4/3)
    # IS = exp((KL1 + KL2) / 2) = (4/3)^(3/4)
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert M.inception_score(p, splits=1)[0] == pytest.approx((4 / 3) ** 0.75, rel=1e-12)


def test_inception_score_rejects_logits():
    with pytest.raises(ValueError):
        M.inception_score(np.array([[2.0, -1.0], [0.5, 0.5]]), splits=1)
    with pytest.raises(ValueError):
        M.inception_score(np.full((3, 2), 0.5), splits=4)


# ----------------------------------------------------------------------------- PR / DC
def col(*v):
    return np.array(v, dtype=np.float64)[:, None]


def test_kth_nn_distances_against_sorting():
    x = gauss(50, 3, 12)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    for k in (1, 3, 5):
        expected = np.sort(d, axis=1)[:, k]  # column 0 is the point itself
        got = M.kth_nn_distances(x, k, chunk_size=7).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    # 1-D hand case: {0, 1, 3, 7} with k = 1 -> 1, 1, 2, 4; k = 2 -> 3, 2, 3, 6
    np.testing.assert_array_equal(M.kth_nn_distances(col(0, 1, 3, 7), 1).numpy(), [1, 1, 2, 4])
    np.testing.assert_array_equal(M.kth_nn_distances(col(0, 1, 3, 7), 2).numpy(), [3, 2, 3, 6])


def test_precision_recall_1d_hand_case():
    real, fake = col(0, 1, 3, 7), col(2, 6, 11, 20)
    # k = 1 real radii 1, 1, 2, 4 -> closed balls [-1,1] [0,2] [1,5] [3,11]: union [-1, 11]
    # fakes 2, 6, 11 (on the boundary of 7's ball, closed -> inside) are in, 20 is out: 3/4
    # k = 1 fake radii: 2->4 (to 6), 6->4, 11->5 (to 6), 20->9 (to 11)
    # fake balls [-2,6] [2,10] [6,16] [11,29] contain reals 0, 1, 3, 7: recall 4/4
    assert M.precision_recall(real, fake, k=1) == (0.75, 1.0)
    # roles swapped: every real in the fake manifold (precision 1), 3 of 4 fakes in the real one
    assert M.precision_recall(fake, real, k=1) == (1.0, 0.75)


def test_density_coverage_1d_hand_case():
    real, fake = col(0, 1, 3, 7), col(2, 6, 11, 20)
    # k = 1 open balls (-1,1) (0,2) (1,5) (3,11)
    # fake 2 lies in (1,5) only (2 is the open boundary of (0,2)) -> 1; 6 in (3,11) -> 1;
    # 11 on the open boundary -> 0; 20 -> 0.  density = (1 + 1 + 0 + 0) / (k M) = 2 / 4
    # coverage: ball (-1,1) no fake, (0,2) no fake, (1,5) has 2, (3,11) has 6 -> 2 / 4
    assert M.density_coverage(real, fake, k=1) == (0.5, 0.5)


def test_prdc_2d_hand_case():
    real = np.array([[0, 0], [0, 2], [2, 0], [2, 2]], dtype=np.float64)
    fake = np.array([[1, 1], [9, 9]], dtype=np.float64)
    # real k=1 radius 2 for every corner; (1,1) is sqrt(2) < 2 from all 4 corners, (9,9) is
    # sqrt(98) from the nearest corner -> precision 1/2.  Fake k=1 radius = |(9,9)-(1,1)| = sqrt(128),
    # every corner is within sqrt(2) of (1,1) -> recall 1.
    assert M.precision_recall(real, fake, k=1) == (0.5, 1.0)
    # density = (4 balls containing (1,1) + 0) / (k=1 * M=2) = 2; every corner's ball has (1,1)
    assert M.density_coverage(real, fake, k=1) == (2.0, 1.0)


def test_prdc_identical_and_disjoint_sets():
    a = gauss(300, 4, 13)
    assert M.precision_recall(a, a, k=3) == (1.0, 1.0)
    density, coverage = M.density_coverage(a, a, k=5)
    # open ball of radius = 5th-NN distance holds the point's own copy and 4 neighbours' copies
    assert coverage == 1.0 and density == pytest.approx(1.0, abs=0.01)
    far = a + 1000.0
    assert M.precision_recall(a, far, k=3) == (0.0, 0.0)
    assert M.density_coverage(a, far, k=5) == (0.0, 0.0)


def test_prdc_same_distribution_close_to_one():
    a, b = gauss(600, 3, 14), gauss(600, 3, 15)
    p, r = M.precision_recall(a, b, k=5)
    d, c = M.density_coverage(a, b, k=5)
    assert p > 0.85 and r > 0.85 and 0.8 < d < 1.2 and c > 0.9


def test_chunk_size_does_not_change_results():
    real, fake = gauss(157, 5, 16), gauss(131, 5, 17, shift=0.3)
    np.testing.assert_allclose(M.kth_nn_distances(real, 3, chunk_size=7).numpy(),
                               M.kth_nn_distances(real, 3, chunk_size=10_000).numpy(), rtol=1e-12)
    assert M.precision_recall(real, fake, 3, chunk_size=7) == M.precision_recall(real, fake, 3, chunk_size=10_000)
    assert M.density_coverage(real, fake, 5, chunk_size=7) == M.density_coverage(real, fake, 5, chunk_size=10_000)


def test_distance_blocks_cover_the_matrix_once():
    x, y = torch.randn(10, 2, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64)
    full = torch.full((10, 9), -1.0, dtype=torch.float64)
    for i0, j0, d in M.distance_blocks(x, y, chunk_size=4):
        assert d.shape[0] <= 4 and d.shape[1] <= 4
        assert (full[i0:i0 + d.shape[0], j0:j0 + d.shape[1]] == -1).all()
        full[i0:i0 + d.shape[0], j0:j0 + d.shape[1]] = d
    torch.testing.assert_close(full, torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist"))


def test_prdc_cross_check_against_reference_package(capsys):
    prdc = pytest.importorskip("prdc")
    real, fake = gauss(400, 6, 18), gauss(350, 6, 19, shift=0.4, scale=1.2)
    for k in (3, 5):
        ref = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
        p, r = M.precision_recall(real, fake, k=k, chunk_size=64)
        d, c = M.density_coverage(real, fake, k=k, chunk_size=64)
        assert (p, r) == pytest.approx((ref["precision"], ref["recall"]), abs=1e-12)
        assert (d, c) == pytest.approx((ref["density"], ref["coverage"]), abs=1e-12)


def test_prdc_rejects_too_few_points():
    with pytest.raises(ValueError):
        M.precision_recall(col(0, 1, 2), col(0, 1, 2), k=3)


# ----------------------------------------------------------------------------- classes
def test_class_coverage():
    uni = M.class_coverage(np.arange(40) % 4, 4)
    assert uni["counts"] == [10, 10, 10, 10] and uni["fraction_hit"] == 1.0
    assert uni["normalized_entropy"] == pytest.approx(1.0) and uni["kl_from_uniform"] == pytest.approx(0.0)
    one = M.class_coverage(torch.full((7,), 2), 5)
    assert one["counts"] == [0, 0, 7, 0, 0] and one["classes_hit"] == 1 and one["fraction_hit"] == 0.2
    assert one["normalized_entropy"] == 0.0 and one["kl_from_uniform"] == pytest.approx(math.log(5))
    # counts 2, 2, 0, 0 over 4 classes: p = (.5, .5, 0, 0), H = log 2, KL = log 4 - log 2 = log 2
    half = M.class_coverage([0, 1, 0, 1], 4)
    assert half["entropy"] == pytest.approx(math.log(2)) and half["normalized_entropy"] == pytest.approx(0.5)
    assert half["kl_from_uniform"] == pytest.approx(math.log(2))
    with pytest.raises(ValueError):
        M.class_coverage([0, 5], 4)
