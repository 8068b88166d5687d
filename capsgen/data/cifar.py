"""CIFAR-10 reader for the python-pickle release (``cifar-10-batches-py/``).

Pickles can run arbitrary code when loaded, and even a harmless-looking one can ask for any
amount of memory.  So a batch is (1) at most :data:`MAX_PICKLE_BYTES`, (2) scanned opcode by
opcode with :mod:`pickletools` before anything is built: at most :data:`MAX_PICKLE_OPS` opcodes
and no absurd memo index (CPython's unpickler would allocate a memo table that large), then
(3) loaded with :class:`SafeUnpickler`, whose globals are inert placeholders: numpy is never
called with the file's arguments while unpickling.  Arrays become real only afterwards, in
:func:`safe_load`, when their dtype is a plain number type and their bytes match their shape.
Finally the fields are checked flat (``labels`` must be a list of ints, one per image), so
memo-shared nested lists cannot be multiplied out by ``numpy.asarray``.
"""

from __future__ import annotations

import functools
import io
import math
import pickle
import pickletools
import stat
from pathlib import Path

import numpy as np

from capsgen.data.base import (
    ImageData,
    brief,
    data_error,
    file_key,
    finish,
    frozen,
    read_bounded,
    require_dir,
    require_file,
    stat_path,
)
from capsgen.errors import DataError

CIFAR_DIRNAME = "cifar-10-batches-py"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
IMAGE_BYTES = 3072  # 32 x 32 x 3
_HINT = f"pass --data-dir with the CIFAR-10 python release ({CIFAR_DIRNAME}/ or the folder holding it)"
# A real batch is 31.0 MB (10,000 x 3,072 pixel bytes, labels, file names) and ~30,000 opcodes
# (a label, a name and a memo entry per image).  Twice and ~16x that leave room for re-saved files.
MAX_PICKLE_BYTES = 64 << 20
MAX_PICKLE_OPS = 500_000
_MEMO_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"})
# dtypes an array in a batch may have: plain numbers (the real files use u1 pixels only).
_DTYPE_CODES = frozenset({"b1", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8"})


class _Ndarray:
    """Stands for ``numpy.ndarray`` inside a pickle: only accepted as ``_reconstruct``'s first argument."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _Ndarray()


class _PickledDtype:
    """``numpy.dtype(code, align, copy)`` as pickled, plus its BUILD state: recorded, not created."""

    def __init__(self, code: object = None, *args: object):
        self.code, self.state = code, None

    def __setstate__(self, state: object) -> None:
        self.state = state


class _PickledArray:
    """An array as pickled (``_reconstruct`` + BUILD state, or ``_frombuffer``): recorded, not created."""

    def __init__(self, buffer: object = None, dtype: object = None, shape: object = None, order: object = "C"):
        self.buffer, self.dtype, self.shape, self.order, self.state = buffer, dtype, shape, order, None

    def __setstate__(self, state: object) -> None:
        self.state = state


def _reconstruct(subtype: object, shape: object, typecode: object) -> _PickledArray:
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("_reconstruct of something other than numpy.ndarray")
    return _PickledArray()


def _frombuffer(buffer: object, dtype: object, shape: object, order: object) -> _PickledArray:
    return _PickledArray(buffer, dtype, shape, order)


# Everything a CIFAR batch can legitimately reference.  Dicts, lists, ints and bytes need no
# global at all; numpy arrays pickle as _reconstruct + ndarray + dtype (numpy 1.x spells the
# module numpy.core, 2.x numpy._core).  _frombuffer is what numpy emits for pickle protocol 5,
# i.e. for a batch re-saved by a recent Python; it only wraps bytes in an array.
_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _PickledDtype,
}
ALLOWED_GLOBALS = frozenset(_GLOBALS)


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that refuses every global outside :data:`ALLOWED_GLOBALS`, and maps those to
    inert placeholders.

    A malicious pickle reaches code execution only through ``find_class`` (e.g. to fetch
    ``os.system``); refusing there means nothing from the file is ever called.  The allowed
    numpy names are placeholders too: numpy's own ``_reconstruct`` would allocate any shape it
    is given, and ``ndarray.__setstate__`` with an object dtype can crash the interpreter.
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in _GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return _GLOBALS[(module, name)]


def _not_cifar(path: Path, exc: BaseException) -> DataError:
    return data_error(path, f"not a valid CIFAR-10 pickle ({type(exc).__name__}: {exc}); "
                            "only dicts, lists, bytes and numpy arrays are allowed")


def _prescan(path: Path, raw: bytes) -> None:
    """Walk the opcodes without building anything: bound their number and the memo indices."""
    try:
        for count, (op, arg, _) in enumerate(pickletools.genops(raw), start=1):
            if count > MAX_PICKLE_OPS:
                raise data_error(path, f"more than {MAX_PICKLE_OPS:,} pickle opcodes (a CIFAR-10 batch has "
                                       "about 30,000); refusing to build it")
            if op.name in _MEMO_OPS and not 0 <= arg < MAX_PICKLE_OPS:
                raise data_error(path, f"pickle memo index {arg} is implausibly large; refusing to build it")
    except DataError:
        raise
    except Exception as exc:  # untrusted bytes: any failure means "not a CIFAR batch"
        raise _not_cifar(path, exc) from None


def _to_dtype(path: Path, spec: object) -> np.dtype:
    if not isinstance(spec, _PickledDtype):
        raise data_error(path, f"array dtype is a {type(spec).__name__}, not a numpy dtype")
    code = spec.code.decode("ascii", "replace") if isinstance(spec.code, bytes) else spec.code
    if code not in _DTYPE_CODES:
        raise data_error(path, f"array dtype {brief(code, 20)} is not allowed (only plain numbers: "
                               f"{', '.join(sorted(_DTYPE_CODES))})")
    dtype = np.dtype(code)
    order = spec.state[1] if isinstance(spec.state, tuple) and len(spec.state) > 1 else "|"
    order = order.decode("ascii", "replace") if isinstance(order, bytes) else order
    if order not in ("<", ">", "|", "="):
        raise data_error(path, f"array dtype has an unknown byte order {brief(order, 10)}")
    return dtype.newbyteorder(order) if order in "<>" else dtype


def _to_array(path: Path, spec: _PickledArray) -> np.ndarray:
    """Make the real array of a placeholder, after checking that its bytes match its shape."""
    if spec.state is not None:  # _reconstruct + BUILD (version, shape, dtype, is_fortran, rawdata)
        state = spec.state
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise data_error(path, "malformed numpy array state in the pickle")
        shape, dtype, fortran, raw = state[-4:]
    else:  # _frombuffer(buffer, dtype, shape, order)
        shape, dtype, fortran, raw = spec.shape, spec.dtype, spec.order in ("F", b"F"), spec.buffer
    dtype = _to_dtype(path, dtype)
    if (not isinstance(shape, tuple) or len(shape) > 32
            or not all(type(d) is int and 0 <= d < 1 << 62 for d in shape)):
        what = brief(shape) if not isinstance(shape, tuple) else ", ".join(brief(d, 10) for d in shape[:6])
        raise data_error(path, f"malformed numpy array shape ({what})")
    if not isinstance(raw, (bytes, bytearray)):
        raise data_error(path, f"numpy array data is a {type(raw).__name__}, not bytes")
    need = math.prod(shape) * dtype.itemsize
    if need != len(raw):
        raise data_error(path, f"numpy array of shape {shape} needs {need} bytes of data, found {len(raw)}")
    if need == 0:
        return np.zeros(shape, dtype=dtype)
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def safe_load(path: Path) -> object:
    """Unpickle ``path`` safely (see the module docstring); ``encoding="bytes"`` for Python 2 pickles.

    numpy arrays that are the loaded object or a value of the loaded dict come back as real
    (read-only) arrays; nothing else in the file can be an array.
    """
    raw = read_bounded(path, MAX_PICKLE_BYTES, "a CIFAR-10 pickle")
    _prescan(path, raw)
    try:
        obj = SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # untrusted bytes: any failure means "not a CIFAR batch"
        raise _not_cifar(path, exc) from None
    if isinstance(obj, _PickledArray):
        return _to_array(path, obj)
    if isinstance(obj, dict):
        return {k: _to_array(path, v) if isinstance(v, _PickledArray) else v for k, v in obj.items()}
    return obj


def _field(path: Path, batch: object, key: str) -> object:
    """``batch[b'key']`` (Python 2 release) or ``batch['key']`` (re-saved from Python 3)."""
    if not isinstance(batch, dict):
        raise data_error(path, f"expected a dict, found {type(batch).__name__}")
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise data_error(path, f"missing key {key!r}")


def _images(path: Path, data: object) -> np.ndarray:
    """``data`` as uint8 ``[n, 3072]``: a uint8 array of that shape, or bytes of whole images."""
    if isinstance(data, (bytes, bytearray)) and data and len(data) % IMAGE_BYTES == 0:
        data = np.frombuffer(data, dtype=np.uint8).reshape(-1, IMAGE_BYTES)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise data_error(path, f"'data' must be a uint8 array [n, {IMAGE_BYTES}], found {found}")
    if len(data) == 0:
        raise data_error(path, "'data' holds no images")
    return data


def _labels(path: Path, labels: object, n: int) -> np.ndarray:
    """``labels`` as int64 ``[n]`` in 0..9: a flat list of ints (or a 1-D integer array), one per image.

    Checked element by element before numpy sees it: ``numpy.asarray`` of a list whose items are
    memo-shared lists would multiply them out (a 30 KB pickle asked for 7.45 GiB).
    """
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise data_error(path, f"'labels' must be a flat list of integers, found a {labels.dtype} array "
                                   f"{labels.shape}")
        values = labels
    elif isinstance(labels, list):
        values = labels
    else:
        raise data_error(path, f"'labels' must be a list of integers, found {type(labels).__name__}")
    if len(values) != n:
        raise data_error(path, f"'labels' has {len(values)} entries but 'data' has {n} rows")
    if isinstance(values, list):
        bad = next((i for i, v in enumerate(values) if type(v) is not int), None)
        if bad is not None:
            raise data_error(path, f"'labels' is not a list of integers (entry {bad} is a "
                                   f"{type(values[bad]).__name__})")
    bad = next((i for i, v in enumerate(values) if not 0 <= v <= 9), None)
    if bad is not None:
        raise data_error(path, f"label {brief(int(values[bad]))} at index {bad} is outside 0..9")
    return np.array(values, dtype=np.int64)


@functools.lru_cache(maxsize=8)
def _read_batch_cached(key: tuple[str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    path = Path(key[0])
    batch = safe_load(path)
    data = _images(path, _field(path, batch, "data"))
    labels = _labels(path, _field(path, batch, "labels"), len(data))
    # Rows are 1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return frozen(images), frozen(labels)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One validated batch file: uint8 images ``[n, 32, 32, 3]`` and int64 labels ``[n]`` (read-only, cached)."""
    require_file(path, _HINT)
    return _read_batch_cached(file_key(path))


def read_class_names(path: Path) -> list[str]:
    """``label_names`` from ``batches.meta``; the standard names when the file is absent."""
    if stat_path(path) is None:
        return list(CIFAR_CLASSES)
    names = _field(path, safe_load(path), "label_names")
    if (not isinstance(names, list) or len(names) != 10
            or not all(isinstance(n, (bytes, str)) and 0 < len(n) <= 200 for n in names)):
        raise data_error(path, "'label_names' must be a list of 10 names (of 1 to 200 characters)")
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
    st = stat_path(nested)
    return nested if st is not None and stat.S_ISDIR(st.st_mode) else Path(directory)


def load_cifar10(
    directory: Path | None, split: str, image_size: int | None = None, limit: int | None = None
) -> ImageData:
    """CIFAR-10: uint8 ``[N, 32, 32, 3]`` (50,000 train / 10,000 test), labels 0..9."""
    root = find_cifar_dir(directory)
    class_names = read_class_names(root / "batches.meta")
    parts = [read_batch(root / name) for name in (TRAIN_BATCHES if split == "train" else TEST_BATCHES)]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return finish(images, labels, class_names, image_size=image_size, limit=limit, where=root)
