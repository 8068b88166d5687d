"""Semi-supervised evaluation of generated images with Label Spreading (CapsuleGAN, section 5.4).

Protocol (Jaiswal et al., tables 1-2): n real labelled images (n in {100, 1000, 10000}) plus
50,000 *generated* images as unlabelled data, scikit-learn's Label Spreading (Zhou et al. 2004)
on raw pixel values, error rate on the real test set. A generator whose samples cover the data
manifold densely and evenly carries labels along that manifold and lowers the error.

Choices that matter:

* ``kernel="knn"``, ``n_neighbors=7``: the default rbf kernel (gamma = 20) underflows to 0 on raw
  784-pixel distances and needs a dense N x N affinity (50k x 50k float64 = 20 GB). The knn kernel
  is a sparse graph with n_neighbors entries per row.
* Inductive evaluation: fit on labelled + unlabelled, then ``predict(x_test)`` (each test image
  takes the summed label distributions of its n_neighbors nearest fitted points). We do *not*
  put the test images into the graph (transductive ``transduction_``), because 10k real test
  images would then act as extra unlabelled data and dilute exactly what is being measured, the
  usefulness of the *generated* unlabelled images; the fitted graph is also the same for every
  test set. Memory stays O((n + m) * n_neighbors) for the graph plus O(t * n_neighbors) for
  prediction; no dense matrix is built.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.semi_supervised import LabelSpreading

from capsgen.eval.metrics import MetricInputError


def _pixels(x, name: str) -> np.ndarray:
    """[n, ...] images or [n, D] rows in [0, 1] -> [n, D] float array (float32 kept as float32)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    if a.ndim < 2 or a.shape[0] == 0:
        raise MetricInputError(f"{name} must be a non-empty [n, D] array or [n, ...] image batch, "
                               f"got shape {a.shape}")
    a = a.reshape(a.shape[0], -1)
    if not np.isfinite(a).all():
        raise MetricInputError(f"{name} contains NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if lo < -1e-6 or hi > 1.0 + 1e-6:
        raise MetricInputError(f"{name} must hold raw pixels in [0, 1], got range [{lo:.3g}, {hi:.3g}] "
                               "(map tanh outputs with (x + 1) / 2)")
    return a


def _labels(y, n: int, name: str) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    a = np.asarray(y).reshape(-1)
    if a.shape[0] != n:
        raise MetricInputError(f"{name} has {a.shape[0]} labels for {n} examples")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.equal(np.mod(a, 1), 0)):
            raise MetricInputError(f"{name} must hold integer class labels")
        a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise MetricInputError(f"{name} must hold class labels >= 0 (-1 is reserved for 'unlabelled')")
    return a.astype(np.int64)


def stratified_labelled_subset(y, n: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` examples of ``y`` [N] balanced over its classes, sorted ascending.

    Every class present in ``y`` gets n // C examples; the n % C left over go one each to
    randomly chosen classes. Sampling is without replacement and reproducible from ``seed``.
    Raises if n < C or a class has too few examples.
    """
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y).reshape(-1)
    y = _labels(y, y.size, "y")
    classes = np.unique(y)
    c = len(classes)
    if c == 0:
        raise MetricInputError("y is empty")
    if not c <= n <= y.size:
        raise MetricInputError(f"n must be between the number of classes ({c}) and of examples "
                               f"({y.size}), got {n}")
    rng = np.random.default_rng(seed)
    per_class = np.full(c, n // c)
    per_class[rng.choice(c, n % c, replace=False)] += 1
    picked = []
    for cls, want in zip(classes, per_class):
        pool = np.flatnonzero(y == cls)
        if pool.size < want:
            raise MetricInputError(f"class {cls} has {pool.size} examples, {want} needed for a "
                                   f"balanced subset of {n}")
        picked.append(rng.choice(pool, want, replace=False))
    return np.sort(np.concatenate(picked))


def random_labelled_subset(y, n: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` examples of ``y`` [N] drawn uniformly without replacement, sorted ascending.

    Jaiswal et al. (section 5.4) draw their n labelled images at random, so small n need not hold
    every class equally often (or at all): with n = 100 of MNIST a class gets 10 +- 3 images.
    Reproducible from ``seed``; raises if n is not between 1 and N.
    """
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = _labels(np.asarray(y).reshape(-1), np.asarray(y).size, "y")
    if not 1 <= n <= y.size:
        raise MetricInputError(f"n must be between 1 and the number of examples ({y.size}), got {n}")
    return np.sort(np.random.default_rng(seed).choice(y.size, n, replace=False))


LABELLED_DRAWS = ("random", "balanced")


def labelled_subset(y, n: int, seed: int = 0, draw: str = "random") -> np.ndarray:
    """``n`` labelled indices of ``y``: ``draw="random"`` (the paper's) or ``"balanced"`` over classes."""
    if draw == "random":
        return random_labelled_subset(y, n, seed)
    if draw == "balanced":
        return stratified_labelled_subset(y, n, seed)
    raise ValueError(f"unknown labelled draw {draw!r}; choose one of: {', '.join(LABELLED_DRAWS)}")


def label_spreading_error(x_labelled, y_labelled, x_unlabelled, x_test, y_test,
                          n_neighbors: int = 7, max_iter: int = 30, seed: int = 0) -> float:
    """Test error of Label Spreading fitted on labelled real + unlabelled (generated) images.

    ``x_labelled`` [n, D], ``y_labelled`` [n], ``x_unlabelled`` [m, D] (may be empty: m = 0),
    ``x_test`` [t, D], ``y_test`` [t]; image batches [n, C, H, W] are flattened. Pixels in
    [0, 1]. Returns the fraction of test images whose predicted label differs from ``y_test``.
    ``seed`` is accepted for a uniform evaluation API; Label Spreading with a knn graph is
    deterministic, so it has no effect. scikit-learn's ConvergenceWarning (max_iter reached) is
    left visible.
    """
    del seed  # deterministic algorithm; see docstring
    xl = _pixels(x_labelled, "x_labelled")
    yl = _labels(y_labelled, xl.shape[0], "y_labelled")
    xt = _pixels(x_test, "x_test")
    yt = _labels(y_test, xt.shape[0], "y_test")
    if x_unlabelled is None or (hasattr(x_unlabelled, "shape") and x_unlabelled.shape[0] == 0):
        xu = np.empty((0, xl.shape[1]), dtype=xl.dtype)
    else:
        xu = _pixels(x_unlabelled, "x_unlabelled")
    if not xl.shape[1] == xu.shape[1] == xt.shape[1]:
        raise MetricInputError(f"feature sizes differ: labelled {xl.shape[1]}, unlabelled {xu.shape[1]}, "
                               f"test {xt.shape[1]}")
    n_fit = xl.shape[0] + xu.shape[0]
    if n_neighbors < 1 or n_neighbors >= n_fit:
        raise MetricInputError(f"n_neighbors must be between 1 and {n_fit - 1} (fitted points - 1), "
                               f"got {n_neighbors}")
    dtype = np.result_type(xl.dtype, xu.dtype)
    x_fit = np.concatenate([xl.astype(dtype, copy=False), xu.astype(dtype, copy=False)])
    y_fit = np.concatenate([yl, np.full(xu.shape[0], -1, dtype=np.int64)])
    model = LabelSpreading(kernel="knn", n_neighbors=n_neighbors, max_iter=max_iter)
    model.fit(x_fit, y_fit)
    pred = model.predict(xt.astype(dtype, copy=False))
    return float((pred != yt).mean())
