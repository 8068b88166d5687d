"""IDX readers (MNIST, Fashion-MNIST): ``*-images-idx3-ubyte`` and ``*-labels-idx1-ubyte``, gzipped or not.

An IDX file is a 4-byte big-endian magic number ``0x000008NN`` (0x08 = unsigned bytes,
NN = number of dimensions), NN big-endian uint32 sizes, then the payload in C order.
"""

from __future__ import annotations

import functools
import math
import zlib
from pathlib import Path

import numpy as np

from capsgen.data.base import ImageData, data_error, file_key, finish, frozen, require_dir

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
_CHUNK = 1 << 24


def idx_filenames(split: str) -> tuple[str, str]:
    """Standard (images, labels) file names of a split, without ``.gz``."""
    p = _PREFIX[split]
    return f"{p}-images-idx3-ubyte", f"{p}-labels-idx1-ubyte"


def find_idx_file(directory: Path, stem: str, hint: str) -> Path:
    """Locate ``stem`` or ``stem.gz`` in ``directory`` (or a torchvision ``raw/`` layout)."""
    for sub in _SUBDIRS:
        for name in (stem + ".gz", stem):
            path = directory / sub / name
            if path.is_file():
                return path
    raise data_error(directory / f"{stem}[.gz]", f"file not found; {hint}")



def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read and validate one IDX file: uint8 ``[N, H, W]`` (magic 0x803) or ``[N]`` (0x801).

    The result is read-only and cached by (path, mtime, size), so reloading is free.
    """
    return _read_idx_cached(file_key(path), magic)


class _Stream:
    """Sequential reads from a raw or gzipped file held in memory.

    gzip goes through ``zlib.decompressobj`` rather than ``gzip.GzipFile`` so that a truncated
    stream simply ends early (and we can report how many bytes it held) instead of raising
    EOFError, and so that output is produced only as far as it is asked for.
    """

    def __init__(self, raw: bytes, gz: bool):
        self._raw, self._pos = raw, 0
        self._z = zlib.decompressobj(wbits=31) if gz else None  # 31: gzip header, CRC checked
        self._pending = raw
        self.ended_early = False  # the gzip stream stopped before its end marker

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end of the data.  zlib.error on corrupt gzip."""
        if self._z is None:
            out = self._raw[self._pos:self._pos + n]
            self._pos += len(out)
            return out
        parts, left = [], n
        while left > 0:
            if self._z.eof:
                if not self._z.unused_data:
                    break
                # Another gzip member follows: concatenated members form one valid .gz file.
                self._pending, self._z = self._z.unused_data, zlib.decompressobj(wbits=31)
            chunk = self._z.decompress(self._pending, min(left, _CHUNK))
            self._pending = self._z.unconsumed_tail
            if not chunk and not self._pending:
                self.ended_early = not self._z.eof
                break
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(key: tuple[str, int, int], magic: int) -> np.ndarray:
    path = Path(key[0])
    kind = "IDX images" if magic == IMAGES_MAGIC else "IDX labels"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise data_error(path, f"cannot read file ({exc.strerror or exc})") from None
    stream = _Stream(raw, gz=path.suffix == ".gz" or raw[:2] == b"\x1f\x8b")
    ndim = magic & 0xFF
    try:
        header = stream.read(4 + 4 * ndim)
        found = int.from_bytes(header[:4], "big")
        if len(header) >= 4 and found != magic:
            raise data_error(path, f"bad magic number 0x{found:08x} (expected 0x{magic:08x} for {kind})")
        if len(header) < 4 + 4 * ndim:
            raise data_error(path, f"truncated: an {kind} header needs {4 + 4 * ndim} bytes, found {len(header)}")
        dims = tuple(int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
        if 0 in dims:
            raise data_error(path, f"empty {kind}: header sizes are {dims}")
        expected = math.prod(dims)
        # Read at most one byte more than declared: a lying header cannot make us allocate more
        # than the file really holds, and one extra byte is enough to detect trailing garbage.
        payload = stream.read(expected + 1)
    except zlib.error as exc:
        raise data_error(path, f"corrupt gzip data ({exc})") from None
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
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if image_hw is not None and images.shape[1:] != tuple(image_hw):
        h, w = images.shape[1:]
        raise data_error(images_path, f"images are {h}x{w}, expected {image_hw[0]}x{image_hw[1]}")
    if len(images) != len(labels):
        raise data_error(
            labels_path, f"has {len(labels)} labels but {images_path.name} has {len(images)} images"
        )
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
    return finish(images, labels, list(class_names), image_size=image_size, limit=limit)


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
