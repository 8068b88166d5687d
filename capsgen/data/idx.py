"""IDX readers (MNIST, Fashion-MNIST): ``*-images-idx3-ubyte`` and ``*-labels-idx1-ubyte``, gzipped or not.

An IDX file is a 4-byte big-endian magic number ``0x000008NN`` (0x08 = unsigned bytes,
NN = number of dimensions), NN big-endian uint32 sizes, then the payload in C order.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from capsgen.data.base import (
    ByteStream,
    ImageData,
    check_memory,
    data_error,
    file_key,
    file_size,
    finish,
    fmt_bytes,
    frozen,
    open_regular,
    require_dir,
    require_file,
    stat_path,
)

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
_PREFIX = {"train": "train", "test": "t10k"}
# torchvision keeps the same files under <root>/<Name>/raw: accept that layout too.
_SUBDIRS = ("", "raw", "MNIST/raw", "FashionMNIST/raw")
# What a header may declare.  The largest IDX set we know, EMNIST ByClass, has 697,932 images
# (547 MB); MNIST's train file holds 47 MB.  A header beyond these is refused before anything is
# read, so a 4.5 MB gzip claiming 6,000,000 images costs nothing.
MAX_IDX_ITEMS = 10_000_000
MAX_IDX_BYTES = 1 << 30


def idx_filenames(split: str) -> tuple[str, str]:
    """Standard (images, labels) file names of a split, without ``.gz``."""
    p = _PREFIX[split]
    return f"{p}-images-idx3-ubyte", f"{p}-labels-idx1-ubyte"


def find_idx_file(directory: Path, stem: str, hint: str) -> Path:
    """Locate ``stem`` or ``stem.gz`` in ``directory`` (or a torchvision ``raw/`` layout).

    The first name that exists is taken and must be a regular file: a directory or FIFO of
    that name is reported rather than skipped.
    """
    for sub in _SUBDIRS:
        for name in (stem + ".gz", stem):
            path = directory / sub / name
            if stat_path(path) is not None:
                return require_file(path, hint)
    raise data_error(directory / f"{stem}[.gz]", f"file not found; {hint}")


def _kind(magic: int) -> str:
    return "IDX images" if magic == IMAGES_MAGIC else "IDX labels"


def _read_header(stream: ByteStream, path: Path, magic: int) -> tuple[int, ...]:
    """Parse and check the magic number and sizes; return the sizes (N, ...)."""
    kind, ndim = _kind(magic), magic & 0xFF
    header = stream.read(4 + 4 * ndim)
    found = int.from_bytes(header[:4], "big")
    if len(header) >= 4 and found != magic:
        raise data_error(path, f"bad magic number 0x{found:08x} (expected 0x{magic:08x} for {kind})")
    if len(header) < 4 + 4 * ndim:
        raise data_error(path, f"truncated: an {kind} header needs {4 + 4 * ndim} bytes, found {len(header)}")
    dims = tuple(int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if 0 in dims:
        raise data_error(path, f"empty {kind}: header sizes are {dims}")
    return dims


def _check_declared(path: Path, dims: tuple[int, ...], magic: int, stream: ByteStream, size: int) -> int:
    """Refuse sizes the file cannot hold or beyond the documented limits; return the payload bytes.

    A plain file's size says what it holds, so a lying header is caught by comparison; a gzip
    file's content is known only by decompressing it, so there the limits are what protect us.
    """
    kind, expected = _kind(magic), math.prod(dims)
    found = size - (4 + 4 * len(dims))
    if not stream.gz and found < expected:
        raise data_error(path, f"truncated: header sizes {dims} need {expected} bytes of data, found {found}")
    if not stream.gz and found > expected:
        raise data_error(path, f"more data than the header sizes {dims} declare ({expected} bytes; "
                               f"the file holds {found})")
    if dims[0] > MAX_IDX_ITEMS:
        raise data_error(path, f"header declares {dims[0]:,} items, more than the {MAX_IDX_ITEMS:,} "
                               f"an {kind} file may hold")
    if expected > MAX_IDX_BYTES:
        raise data_error(path, f"header sizes {dims} declare {fmt_bytes(expected)} of data, more than "
                               f"the {fmt_bytes(MAX_IDX_BYTES)} an {kind} file may hold")
    return expected


def read_idx_header(path: Path, magic: int) -> tuple[int, ...]:
    """The validated sizes (N, ...) of an IDX file, reading only its header."""
    with open_regular(path) as f:
        stream = ByteStream(f, path, gz=True if path.suffix == ".gz" else None)
        dims = _read_header(stream, path, magic)
        _check_declared(path, dims, magic, stream, file_size(f, path))
    return dims


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read and validate one IDX file: uint8 ``[N, H, W]`` (magic 0x803) or ``[N]`` (0x801).

    The result is read-only and cached by (path, mtime, size), so reloading is free.
    """
    return _read_idx_cached(file_key(path), magic)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(key: tuple[str, int, int], magic: int) -> np.ndarray:
    path = Path(key[0])
    with open_regular(path) as f:
        stream = ByteStream(f, path, gz=True if path.suffix == ".gz" else None)
        dims = _read_header(stream, path, magic)
        expected = _check_declared(path, dims, magic, stream, file_size(f, path))
        check_memory(path, expected, f"the {_kind(magic)}")
        # Read at most one byte more than declared: the buffer grows with what the file really
        # holds (a lying header costs nothing), and one extra byte detects trailing garbage.
        payload = bytearray()
        stream.read_into(payload, expected + 1)
    if len(payload) < expected:
        early = " (the gzip stream ends early)" if stream.ended_early else ""
        raise data_error(path, f"truncated: header sizes {dims} need {expected} bytes of data, "
                               f"found {len(payload)}{early}")
    if len(payload) > expected:
        raise data_error(path, f"more data than the header sizes {dims} declare ({expected} bytes)")
    return frozen(np.frombuffer(payload, dtype=np.uint8).reshape(dims))


def read_idx_pair(
    images_path: Path, labels_path: Path, num_classes: int, image_hw: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a matching images/labels pair: uint8 ``[N, H, W, 1]`` and int64 ``[N]`` in 0..num_classes-1.

    With ``image_hw``, the images must be exactly that (H, W).
    """
    # Headers first: a wrong image size or count is reported before any payload is read.
    image_dims = read_idx_header(images_path, IMAGES_MAGIC)
    label_dims = read_idx_header(labels_path, LABELS_MAGIC)
    if image_hw is not None and image_dims[1:] != tuple(image_hw):
        h, w = image_dims[1:]
        raise data_error(images_path, f"images are {h}x{w}, expected {image_hw[0]}x{image_hw[1]}")
    if image_dims[0] != label_dims[0]:
        raise data_error(
            labels_path, f"has {label_dims[0]} labels but {images_path.name} has {image_dims[0]} images"
        )
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != image_dims[1:]:  # rewritten meanwhile
        raise data_error(images_path, "changed while being read; try again")
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        i = int(bad[0])
        raise data_error(labels_path, f"label {labels[i]} at index {i} is outside 0..{num_classes - 1}")
    return images[:, :, :, None], labels.astype(np.int64)


def _load_idx_dataset(
    directory: Path, split: str, class_names: list[str], hint: str,
    image_size: int | None, limit: int | None,
) -> ImageData:
    require_dir(directory, hint)
    img_stem, lbl_stem = idx_filenames(split)
    images, labels = read_idx_pair(
        find_idx_file(directory, img_stem, hint), find_idx_file(directory, lbl_stem, hint),
        len(class_names), image_hw=(28, 28),  # MNIST and Fashion-MNIST are both 28x28
    )
    return finish(images, labels, list(class_names), image_size=image_size, limit=limit, where=directory)


_FILES = "the four standard IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], " \
         "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])"


def load_fashion_mnist(
    directory: Path | None, split: str, image_size: int | None = None, limit: int | None = None
) -> ImageData:
    """Fashion-MNIST: uint8 ``[N, 28, 28, 1]`` (60,000 train / 10,000 test), labels 0..9."""
    hint = (f"install it with `apt-get install -y dataset-fashion-mnist` (files go to {FASHION_DEFAULT_DIR}) "
            f"or pass --data-dir with {_FILES}")
    return _load_idx_dataset(Path(directory or FASHION_DEFAULT_DIR), split, FASHION_CLASSES, hint, image_size, limit)


def load_mnist(
    directory: Path | None, split: str, image_size: int | None = None, limit: int | None = None
) -> ImageData:
    """Full MNIST from ``--data-dir``: uint8 ``[N, 28, 28, 1]`` (60,000 train / 10,000 test), labels 0..9."""
    hint = f"pass --data-dir with {_FILES}"
    if directory is None:
        raise data_error("mnist", f"MNIST cannot be downloaded here (no network); {hint}, "
                                  "or use the bundled 'mnist-5k' dataset")
    return _load_idx_dataset(Path(directory), split, MNIST_CLASSES, hint, image_size, limit)
