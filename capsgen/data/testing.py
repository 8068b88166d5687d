"""Writers of tiny datasets in the real on-disk formats, for tests and demos (no network needed).

Each writer returns the arrays it wrote, so a test can compare them with what a reader gives
back.  Images are small random uint8 arrays from a seeded generator.
"""

from __future__ import annotations

import contextlib
import gzip
import pickle
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from capsgen.errors import DataError


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 array ``[N, H, W]`` (magic 0x803) or ``[N]`` (0x801) as IDX; gzip if ``path`` ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x00000800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_idx_dataset(
    directory: str | Path, n_train: int = 12, n_test: int = 6, size: int = 28, gz: bool = True, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write the four standard MNIST-style IDX files; returns {split: (images [N, H, W], labels [N])}."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        ext = ".gz" if gz else ""
        write_idx(Path(directory) / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(Path(directory) / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        out[split] = (images, labels.astype(np.int64))
    return out


class _Py2StylePickler(pickle._Pickler):
    """Pickles ``bytes`` as Python 2 ``str`` opcodes (SHORT_BINSTRING / BINSTRING), as in the real
    CIFAR-10 files written by Python 2's cPickle; Python 3's own protocol 2 would instead emit
    ``_codecs.encode`` calls, which the safe reader rightly refuses."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def dump_pickle(obj: object, path: str | Path, style: str = "py2") -> Path:
    """Pickle ``obj`` to ``path``: ``style`` "py2" (like the real files), or "4" / "5" (Python 3 protocols)."""
    path = Path(path)
    with open(path, "wb") as f:
        if style == "py2":
            _Py2StylePickler(f, protocol=2).dump(obj)
        else:
            pickle.dump(obj, f, protocol=int(style))
    return path


def write_cifar10(
    directory: str | Path, per_batch: int = 4, style: str = "py2", seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write ``directory/cifar-10-batches-py`` (5 train batches, test batch, meta) with ``per_batch``
    images each; returns {split: (images [N, 32, 32, 3], labels [N])} as a reader should see them."""
    root = Path(directory) / "cifar-10-batches-py"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {"train": [], "test": []}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [(k + i) % 10 for i in range(per_batch)]
        batch = {b"batch_label": f"batch {k}".encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img_{k}_{i}.png".encode() for i in range(per_batch)]}
        dump_pickle(batch, root / name, style)
        parts["test" if name == "test_batch" else "train"].append((data, labels))
    meta = {b"num_cases_per_batch": per_batch, b"num_vis": 3072,
            b"label_names": [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer",
                                                  "dog", "frog", "horse", "ship", "truck")]}
    dump_pickle(meta, root / "batches.meta", style)
    return {
        split: (np.concatenate([d for d, _ in p]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1),
                np.array([lab for _, ls in p for lab in ls], dtype=np.int64))
        for split, p in parts.items()
    }


def attribute_names(count: int = 40) -> list[str]:
    """Placeholder attribute names ``Attr_00 ...`` (the real file has 5_o_Clock_Shadow ... Young)."""
    return [f"Attr_{i:02d}" for i in range(count)]


def write_celeba(
    directory: str | Path, n: int = 6, size: tuple[int, int] = (20, 24), ext: str = ".png",
    partition: list[int] | None = None, seed: int = 0,
) -> np.ndarray:
    """Write ``img_align_celeba/`` (``n`` RGB images of (width, height) ``size``), ``list_attr_celeba.txt``
    and, if ``partition`` is given, ``list_eval_partition.txt``.  Returns attributes {0, 1} ``[n, 40]``."""
    from PIL import Image

    root = Path(directory)
    (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    attrs = rng.integers(0, 2, (n, 40))
    files = [f"{i + 1:06d}{ext}" for i in range(n)]
    for f in files:
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "img_align_celeba" / f)
    rows = [f"{f} " + " ".join(" 1" if a else "-1" for a in row) for f, row in zip(files, attrs)]
    (root / "list_attr_celeba.txt").write_text(f"{n}\n" + " ".join(attribute_names()) + "\n" + "\n".join(rows) + "\n")
    if partition is not None:
        (root / "list_eval_partition.txt").write_text("".join(f"{f} {p}\n" for f, p in zip(files, partition)))
    return attrs


def write_image_folder(
    directory: str | Path, classes: Sequence[str] | None = ("a", "b"), per_class: int = 10,
    size: int = 6, mode: str = "L", seed: int = 0,
) -> dict[str, list[np.ndarray]]:
    """Write ``size x size`` PNGs (``mode`` "L" or "RGB"), one subfolder per class (or none if
    ``classes`` is None), named ``img_00.png ...``; returns {class or "": [arrays in file order]}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    out = {}
    for cls in classes if classes is not None else [""]:
        folder = Path(directory) / cls
        folder.mkdir(parents=True, exist_ok=True)
        out[cls] = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(per_class)]
        for i, pixels in enumerate(out[cls]):
            Image.fromarray(pixels).save(folder / f"img_{i:02d}.png")
    return out


class ErrorInfo:
    """What :func:`expect_data_error` caught: ``message`` is filled in when the block exits."""

    message: str = ""


@contextlib.contextmanager
def expect_data_error(*fragments: str) -> Iterator[ErrorInfo]:
    """Assert that the block raises DataError with a one-line message containing every fragment."""
    info = ErrorInfo()
    try:
        yield info
    except DataError as exc:
        info.message = str(exc)
    else:
        raise AssertionError("expected a DataError, none was raised")
    assert "\n" not in info.message, f"message is not one line: {info.message!r}"
    for fragment in fragments:
        assert str(fragment) in info.message, f"{fragment!r} not in DataError message {info.message!r}"
