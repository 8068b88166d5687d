"""Sample-quality report: every metric of generated images vs the real test split, with its floor.

A score alone says little: FID, KID and the k-NN metrics depend on the sample counts and on the
embedding. So :func:`evaluate_samples` computes each metric twice with the same counts and the
same evaluator network:

* ``samples``:       generated images vs the real test reference;
* ``real_vs_real``:  real *training* images vs the same test reference, the floor (FID, KID) or
                     ceiling (precision, recall, density, coverage, IS) a perfect generator
                     would reach at these counts.

Counts: ``n`` samples (the first ``n`` of the file), the same number of real training images
(a seeded random subset) and ``min(n, test size)`` real test images (a seeded random subset).
Features come from :mod:`capsgen.eval.evaluator` (a capsgen classifier, not Inception).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from capsgen.errors import CapsgenError
from capsgen.eval import metrics as M

MIN_SAMPLES = 10        # PR needs k + 1 = 4 points, DC k + 1 = 6; fewer than 10 says nothing


def read_samples_npz(path: str | os.PathLike) -> np.ndarray:
    """The uint8 ``[N, H, W, C]`` array ``images`` of a .npz file; one-line CapsgenError otherwise.

    Read with :func:`capsgen.data.npz.read_npz_array`: never a pickle, and memory bounded by
    what the archive really holds (no zip bomb or lying header can make it allocate more).
    """
    from capsgen.data.npz import read_npz_array

    how = "save them with numpy.savez(FILE, images=uint8 array [N, H, W, C])"

    def check(dtype: np.dtype, shape: tuple[int, ...]) -> None:  # from the header, before any data
        if dtype != np.uint8:
            raise CapsgenError(f"{path}: 'images' must be uint8 (0..255), got {dtype}; "
                               "convert floats in [0, 1] with (x * 255).round().astype(numpy.uint8)")
        if len(shape) != 4:
            hint = "; add a channel axis with images[..., None]" if len(shape) == 3 else ""
            raise CapsgenError(f"{path}: 'images' must be 4-D [N, H, W, C], got shape {list(shape)}{hint}")

    return read_npz_array(path, "images", how, check)


def _check_images(images: Any, hwc: tuple[int, int, int], data: str, source: str) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        desc = f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
        raise CapsgenError(f"{source}: images must be a uint8 array [N, H, W, C], got {desc}")
    if images.shape[1:] != hwc:
        h, w, c = hwc
        hint = (f"; made by a run with train.image_size={images.shape[1]}? add --image-size {images.shape[1]}"
                if images.shape[1] == images.shape[2] and images.shape[3] == c else "")
        raise CapsgenError(f"{source}: images have shape [N, H, W, C] = {list(images.shape)}, but {data} "
                           f"images are [N, {h}, {w}, {c}]{hint}")
    if len(images) < MIN_SAMPLES:
        raise CapsgenError(f"{source}: {len(images)} images are too few; give at least {MIN_SAMPLES}")
    return images


def check_sample_count(n: int | None) -> None:
    """``n`` samples are enough for every metric (None: all of a file's, checked with the file)."""
    if n is not None and n < MIN_SAMPLES:
        raise CapsgenError(f"--n must be at least {MIN_SAMPLES}, got {n}")


def _subset(n_total: int, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of size n (all indices when n >= n_total)."""
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, n, replace=False))


def metric_set(f_fake: torch.Tensor, p_fake: torch.Tensor, f_ref: torch.Tensor, num_classes: int,
               *, kid_subsets: int, kid_subset_size: int, pr_k: int, dc_k: int, is_splits: int,
               seed: int) -> dict[str, Any]:
    """Every metric of one set (features f_fake, probs p_fake) against the reference features f_ref."""
    kid_mean, kid_std = M.kid(f_ref, f_fake, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    # IS slices are consecutive rows: shuffle so a class-sorted file does not fake a low score.
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(p_fake)))
    is_mean, is_std = M.inception_score(p_fake[order], splits=min(is_splits, len(p_fake)))
    precision, recall = M.precision_recall(f_ref, f_fake, k=pr_k)
    density, coverage = M.density_coverage(f_ref, f_fake, k=dc_k)
    return {"fid": M.fid(f_ref, f_fake), "kid": kid_mean, "kid_std": kid_std,
            "is": is_mean, "is_std": is_std, "precision": precision, "recall": recall,
            "density": density, "coverage": coverage,
            "class_coverage": M.class_coverage(p_fake.argmax(1), num_classes)}


def evaluate_samples(images: np.ndarray, data: str, n: int | None = None, evaluator: Any = None, *,
                     data_dir: str | os.PathLike | None = None, seed: int = 0, source: str = "samples",
                     kid_subsets: int = 100, kid_subset_size: int = 1000, pr_k: int = 3, dc_k: int = 5,
                     is_splits: int = 10, image_size: int | None = None) -> dict[str, Any]:
    """Metrics of generated ``images`` (uint8 [N, H, W, C]) against the real ``data`` test split
    (resized to ``image_size`` when given, as a run with ``train.image_size`` was trained on).

    ``n`` limits the samples to the first n (default: all). ``evaluator`` defaults to the
    cached one of ``data`` (:func:`capsgen.eval.evaluator.get_evaluator`, trained if missing).
    Returns ``{"data", "counts", "evaluator", "settings", "samples", "real_vs_real"}``; the last
    two hold fid, kid, kid_std, is, is_std, precision, recall, density, coverage, class_coverage.
    """
    from capsgen.data import load_split
    from capsgen.data.registry import get_spec
    from capsgen.eval.evaluator import get_evaluator

    data = get_spec(data).name
    check_sample_count(n)
    test = load_split(data, "test", data_dir, image_size=image_size)
    train = load_split(data, "train", data_dir, image_size=image_size)
    images = _check_images(images, tuple(test.images.shape[1:]), data, source)
    ev = evaluator if evaluator is not None else get_evaluator(data, data_dir, image_size=image_size)
    if ev.data != data:
        raise CapsgenError(f"the evaluator was trained on {ev.data}, not {data}")
    n_s = len(images) if n is None else min(n, len(images))
    samples = images[:n_s]
    n_train = min(n_s, len(train))
    ref = test.images[_subset(len(test), n_s, seed)]
    real = train.images[_subset(len(train), n_train, seed + 1)]
    f_ref, _ = ev.features_and_probs(ref)
    f_s, p_s = ev.features_and_probs(samples)
    f_r, p_r = ev.features_and_probs(real)
    settings = {"kid_subsets": kid_subsets, "kid_subset_size": min(kid_subset_size, len(ref), n_s, n_train),
                "pr_k": pr_k, "dc_k": dc_k, "is_splits": is_splits, "seed": seed}
    kw = dict(kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, pr_k=pr_k, dc_k=dc_k,
              is_splits=is_splits, seed=seed)
    return {
        "data": data,
        "counts": {"samples": int(n_s), "real_train": int(n_train), "real_test": int(len(ref))},
        "evaluator": {"network": "capsgen classifier (not Inception)", "path": str(ev.path),
                      "accuracy": ev.accuracy, "feature_dim": int(f_ref.shape[1])},
        "settings": settings,
        "samples": metric_set(f_s, p_s, f_ref, ev.num_classes, **kw),
        "real_vs_real": metric_set(f_r, p_r, f_ref, ev.num_classes, **kw),
    }


def format_table(result: dict[str, Any]) -> str:
    """A readable table: metric | samples | real-vs-real floor, then the counts and the evaluator."""
    s, r, st = result["samples"], result["real_vs_real"], result["settings"]

    def pm(d: dict, key: str, fmt: str) -> str:
        return f"{d[key]:{fmt}} ± {d[key + '_std']:{fmt}}"

    def cls(d: dict) -> str:
        c = d["class_coverage"]
        return f"{c['classes_hit']}/{c['num_classes']}"

    rows = [
        ("FID (lower is better)", f"{s['fid']:.3f}", f"{r['fid']:.3f}"),
        ("KID (lower is better)", pm(s, "kid", ".5f"), pm(r, "kid", ".5f")),
        ("Inception Score*", pm(s, "is", ".3f"), pm(r, "is", ".3f")),
        (f"precision (k={st['pr_k']})", f"{s['precision']:.4f}", f"{r['precision']:.4f}"),
        (f"recall (k={st['pr_k']})", f"{s['recall']:.4f}", f"{r['recall']:.4f}"),
        (f"density (k={st['dc_k']})", f"{s['density']:.4f}", f"{r['density']:.4f}"),
        (f"coverage (k={st['dc_k']})", f"{s['coverage']:.4f}", f"{r['coverage']:.4f}"),
        ("classes hit", cls(s), cls(r)),
        ("class entropy / log K", f"{s['class_coverage']['normalized_entropy']:.4f}",
         f"{r['class_coverage']['normalized_entropy']:.4f}"),
    ]
    head = ("metric", "samples", "real-vs-real floor")
    w0 = max(len(x[0]) for x in rows + [head])
    w1 = max(len(x[1]) for x in rows + [head])
    w2 = max(len(x[2]) for x in rows + [head])
    lines = [f"{head[0]:<{w0}} | {head[1]:>{w1}} | {head[2]:>{w2}}", f"{'-' * w0}-+-{'-' * w1}-+-{'-' * w2}"]
    lines += [f"{a:<{w0}} | {b:>{w1}} | {c:>{w2}}" for a, b, c in rows]
    c, e = result["counts"], result["evaluator"]
    lines += [
        f"counts: {c['samples']} samples and {c['real_train']} real {result['data']} training images "
        f"(floor), each against {c['real_test']} real test images",
        f"* features and p(y|x) from the capsgen {result['data']} classifier ({e['feature_dim']} features, "
        f"test accuracy {100 * e['accuracy']:.2f}%), not Inception: compare scores only with the same "
        "evaluator and counts",
    ]
    return "\n".join(lines)
