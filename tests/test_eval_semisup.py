"""Label Spreading on raw pixels: stratified labelled subsets, digits accuracy, sparse memory."""
from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from capsgen.eval.semisup import (label_spreading_error, labelled_subset, random_labelled_subset,
                                  stratified_labelled_subset)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    return x / 16.0, y


def test_stratified_subset_is_balanced_and_reproducible():
    y = np.repeat(np.arange(10), 30)
    idx = stratified_labelled_subset(y, 100, seed=0)
    assert len(idx) == 100 == len(set(idx.tolist()))
    assert np.bincount(y[idx], minlength=10).tolist() == [10] * 10
    np.testing.assert_array_equal(idx, stratified_labelled_subset(y, 100, seed=0))
    assert not np.array_equal(idx, stratified_labelled_subset(y, 100, seed=1))
    # 25 over 10 classes: 2 each plus 5 classes with a third
    counts = np.bincount(y[stratified_labelled_subset(y, 25, seed=3)], minlength=10)
    assert sorted(counts.tolist()) == [2] * 5 + [3] * 5
    with pytest.raises(ValueError):
        stratified_labelled_subset(y, 5, seed=0)      # fewer than the 10 classes
    with pytest.raises(ValueError):
        stratified_labelled_subset(y, 310, seed=0)    # 31 per class, only 30 exist


def test_random_subset_is_uniform_not_balanced_and_reproducible():
    y = np.repeat(np.arange(10), 300)
    idx = random_labelled_subset(y, 100, seed=0)
    assert len(idx) == 100 == len(set(idx.tolist())) and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, random_labelled_subset(y, 100, seed=0))
    assert not np.array_equal(idx, random_labelled_subset(y, 100, seed=1))
    # drawn at random, class counts vary (a balanced draw would give 10 each every time) ...
    counts = np.array([np.bincount(y[random_labelled_subset(y, 100, seed=s)], minlength=10)
                       for s in range(200)])
    assert (counts != 10).any(axis=1).mean() > 0.95
    # ... around the class frequencies: 10 +- sqrt(100 * 0.1 * 0.9) = 3 per class
    assert abs(counts.mean() - 10) < 0.01 and 2.4 < counts.std() < 3.4
    assert len(random_labelled_subset(y, 5, seed=0)) == 5          # fewer than the classes is allowed
    with pytest.raises(ValueError):
        random_labelled_subset(y, 3001, seed=0)
    np.testing.assert_array_equal(labelled_subset(y, 50, 2, "random"), random_labelled_subset(y, 50, 2))
    np.testing.assert_array_equal(labelled_subset(y, 50, 2, "balanced"), stratified_labelled_subset(y, 50, 2))
    with pytest.raises(ValueError, match="unknown labelled draw"):
        labelled_subset(y, 50, 2, "stratified")


def test_label_spreading_on_digits_beats_chance(digits):
    x, y = digits
    perm = np.random.default_rng(0).permutation(len(y))
    test, train = perm[:500], perm[500:]
    lab = train[stratified_labelled_subset(y[train], 100, seed=0)]
    unl = np.setdiff1d(train, lab)
    err = label_spreading_error(x[lab], y[lab], x[unl], x[test], y[test])
    assert err < 0.3  # chance is 0.9; about 0.03 here
    # the unlabelled images help: labelled points alone do worse
    assert err <= label_spreading_error(x[lab], y[lab], None, x[test], y[test])


def test_label_spreading_rejects_bad_pixels(digits):
    x, y = digits
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        label_spreading_error(x[:50] * 2 - 1, y[:50], x[50:100], x[100:120], y[100:120])
    with pytest.raises(ValueError):
        label_spreading_error(x[:50], y[:40], x[50:100], x[100:120], y[100:120])


def test_label_spreading_20k_points_is_sparse():
    # A dense 20k x 20k float64 affinity would be 3.2 GB; the knn graph is a few MB.
    rng = np.random.default_rng(0)
    x = rng.random((20_000, 16), dtype=np.float32)
    y = rng.integers(0, 10, 100)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.warns(Warning):  # ConvergenceWarning: max_iter=5 reached
            err = label_spreading_error(x[:100], y, x[100:], x[:50], y[:50], n_neighbors=3, max_iter=5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 0.0 <= err <= 1.0
    assert peak < 200e6, f"peak traced allocation {peak / 1e6:.0f} MB"
    assert time.perf_counter() - t0 < 30
