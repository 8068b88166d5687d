"""CIFAR-10 reader for the python-pickle release (``cifar-10-batches-py/``).

Pickles can run arbitrary code when loaded, so batches are read with :class:`SafeUnpickler`,
whose ``find_class`` admits only the handful of numpy globals the real files use.
"""

from __future__ import annotations

import functools
import io
import pickle
from pathlib import Path

import numpy as np

from capsgen.data.base import ImageData, data_error, file_key, finish, frozen, one_line, require_dir

CIFAR_DIRNAME = "cifar-10-batches-py"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
_HINT = f"pass --data-dir with the CIFAR-10 python release ({CIFAR_DIRNAME}/ or the folder holding it)"

# Everything a CIFAR batch can legitimately reference.  Dicts, lists, ints and bytes need no
# global at all; numpy arrays pickle as _reconstruct + ndarray + dtype (numpy 1.x spells the
# module numpy.core, 2.x numpy._core).  _frombuffer is what numpy emits for pickle protocol 5,
# i.e. for a batch re-saved by a recent Python; it only wraps bytes in an array.
ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
})


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that refuses every global outside :data:`ALLOWED_GLOBALS`.

    A malicious pickle reaches code execution only through ``find_class`` (e.g. to fetch
    ``os.system``); refusing there means nothing from the file is ever called but numpy's
    array constructors.
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def safe_load(path: Path) -> object:
    """Unpickle ``path`` with :class:`SafeUnpickler` (``encoding="bytes"`` for Python 2 pickles)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise data_error(path, f"cannot read file ({exc.strerror or exc})") from None
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # untrusted bytes: any failure means "not a CIFAR batch"
        raise data_error(path, f"not a valid CIFAR-10 pickle ({type(exc).__name__}: {exc}); "
                               "only dicts, lists, bytes and numpy arrays are allowed") from None


def _field(path: Path, batch: object, key: str) -> object:
    """``batch[b'key']`` (Python 2 release) or ``batch['key']`` (re-saved from Python 3)."""
    if not isinstance(batch, dict):
        raise data_error(path, f"expected a dict, found {type(batch).__name__}")
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise data_error(path, f"missing key {key!r}")


@functools.lru_cache(maxsize=8)
def _read_batch_cached(key: tuple[str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    path = Path(key[0])
    batch = safe_load(path)
    data = _field(path, batch, "data")
    labels = _field(path, batch, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise data_error(path, f"'data' must be a uint8 array [n, 3072], found {found}")
    if len(data) == 0:
        raise data_error(path, "'data' holds no images")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise data_error(path, f"'labels' is not a list of integers ({one_line(exc)})") from None
    if labels.shape != (len(data),):
        raise data_error(path, f"'labels' has shape {labels.shape} but 'data' has {len(data)} rows")
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        raise data_error(path, f"label {labels[bad[0]]} at index {bad[0]} is outside 0..9")
    # Rows are 1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return frozen(images), frozen(labels)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One validated batch file: uint8 images ``[n, 32, 32, 3]`` and int64 labels ``[n]`` (read-only, cached)."""
    if not path.is_file():
        raise data_error(path, f"file not found; {_HINT}")
    return _read_batch_cached(file_key(path))


def read_class_names(path: Path) -> list[str]:
    """``label_names`` from ``batches.meta``; the standard names when the file is absent."""
    if not path.is_file():
        return list(CIFAR_CLASSES)
    names = _field(path, safe_load(path), "label_names")
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, (bytes, str)) for n in names):
        raise data_error(path, "'label_names' must be a list of 10 names")
    try:
        return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError:
        raise data_error(path, "'label_names' are not valid UTF-8") from None


def find_cifar_dir(directory: Path | None) -> Path:
    """Accept ``cifar-10-batches-py`` itself or the folder that contains it."""
    if directory is None:
        raise data_error(CIFAR_DIRNAME, f"CIFAR-10 cannot be downloaded here (no network); {_HINT}")
    require_dir(Path(directory), _HINT)
    nested = Path(directory) / CIFAR_DIRNAME
    return nested if nested.is_dir() else Path(directory)


def load_cifar10(
    directory: Path | None, split: str, image_size: int | None = None, limit: int | None = None
) -> ImageData:
    """CIFAR-10: uint8 ``[N, 32, 32, 3]`` (50,000 train / 10,000 test), labels 0..9."""
    root = find_cifar_dir(directory)
    class_names = read_class_names(root / "batches.meta")
    parts = [read_batch(root / name) for name in (TRAIN_BATCHES if split == "train" else TEST_BATCHES)]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return finish(images, labels, class_names, image_size=image_size, limit=limit)
