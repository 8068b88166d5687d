"""The in-memory dataset type and the helpers every reader shares.

Readers never trust their input: every problem becomes a :class:`DataError` whose message is
one line, ``"<file>: <what is wrong>"``, so the CLI can print it instead of a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from capsgen.errors import DataError

SPLITS = ("train", "test")

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


@dataclass(repr=False)
class ImageData:
    """One split of a dataset, fully decoded.

    ``images`` is uint8 ``[N, H, W, C]`` with C = 1 or 3 (always 4-D); ``labels`` int64 ``[N]``
    class indices or None; ``attributes`` int64 {0, 1} ``[N, A]`` or None.  Arrays may be
    read-only views of a cache shared between calls: copy them before writing into them.
    """

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None
    attributes: np.ndarray | None = None
    attribute_names: list[str] | None = None
    name: str = ""
    split: str = ""

    def __post_init__(self) -> None:
        # These are programming errors in a reader, not bad user input: fail loudly.
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[3] not in (1, 3):
            raise ValueError(f"images must be uint8 [N, H, W, 1|3], got {self.images.dtype} {self.images.shape}")
        if self.labels is not None and (self.labels.dtype != np.int64 or self.labels.shape != (n,)):
            raise ValueError(f"labels must be int64 [{n}], got {self.labels.dtype} {self.labels.shape}")
        if self.attributes is not None and (self.attributes.ndim != 2 or len(self.attributes) != n):
            raise ValueError(f"attributes must be [{n}, A], got {self.attributes.shape}")

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:  # the default repr would print every pixel
        def desc(a: np.ndarray | None) -> str:
            return "None" if a is None else f"{a.dtype}{list(a.shape)}"

        return (f"ImageData(name={self.name!r}, split={self.split!r}, images={desc(self.images)}, "
                f"labels={desc(self.labels)}, classes={self.num_classes}, attributes={desc(self.attributes)})")

    @property
    def num_classes(self) -> int | None:
        """Number of classes, or None for a dataset without class labels."""
        return None if self.class_names is None else len(self.class_names)

    def to_tensors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """float32 images ``[N, C, H, W]`` in [0, 1] and int64 labels ``[N]`` (or None).

        Always copies, so the tensors are writable even when the arrays are read-only.
        """
        x = self.images.transpose(0, 3, 1, 2).astype(np.float32, order="C")
        x /= 255.0
        y = None if self.labels is None else torch.from_numpy(self.labels.astype(np.int64, copy=True))
        return torch.from_numpy(x), y

    def to_batch(self):
        """The whole split as one :class:`~capsgen.data.batch.Batch` (float images, labels, attributes)."""
        from capsgen.data.batch import Batch

        x, y = self.to_tensors()
        a = None if self.attributes is None else torch.from_numpy(self.attributes.astype(np.float32))
        return Batch(x, y, a)


# ----------------------------------------------------------------------------- errors


def data_error(path: str | os.PathLike, problem: str) -> DataError:
    """A one-line ``DataError`` ``"<path>: <problem>"`` (newlines in ``problem`` are folded)."""
    return DataError(one_line(f"{os.fspath(path)}: {problem}"))


def one_line(text: object) -> str:
    """Fold whitespace so third-party messages (Pillow, zlib, pickle) stay on one line."""
    return " ".join(str(text).split())


def require_dir(path: Path, hint: str) -> Path:
    """Return ``path`` if it is a directory, else a DataError ending in ``hint``."""
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "directory not found"
        raise data_error(path, f"{what}; {hint}")
    return path


def require_file(path: Path, hint: str) -> Path:
    """Return ``path`` if it is a file, else a DataError ending in ``hint``."""
    if not path.is_file():
        raise data_error(path, f"file not found; {hint}")
    return path


def list_dir(path: Path) -> list[os.DirEntry]:
    """Entries of a directory (unsorted); DataError if it cannot be listed."""
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except OSError as exc:
        raise data_error(path, f"cannot list directory ({exc.strerror or exc})") from None


def file_key(path: Path) -> tuple[str, int, int]:
    """Cache key for a file's decoded contents: changes when the file is rewritten."""
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


def frozen(array: np.ndarray) -> np.ndarray:
    """Mark a cached array read-only so that no caller can corrupt the cache."""
    array.setflags(write=False)
    return array


# ----------------------------------------------------------------------------- images


def decode_image(path: Path, size: int | None) -> np.ndarray:
    """Decode one image file to uint8 ``[H, W]`` (greyscale) or ``[H, W, 3]`` (colour).

    With ``size``, the image is centre-cropped to a square and resized to ``size x size``.
    """
    from PIL import Image  # imported here: the IDX/CIFAR paths don't need Pillow

    # Decoding a file that claims to be an image can fail in many ways inside Pillow (OSError,
    # SyntaxError, ValueError, struct.error, DecompressionBombError, ...): the input is
    # untrusted, so any Exception while decoding means "this file is not a usable image".
    try:
        with Image.open(path) as img:
            img.load()
            img = img.convert("L" if img.mode in GREY_MODES else "RGB")
            if size is not None:
                img = crop_resize(img, size)
            return np.asarray(img, dtype=np.uint8)
    except Exception as exc:
        raise data_error(path, f"cannot decode image ({type(exc).__name__}: {exc})") from None


def probe_image(path: Path) -> tuple[str, tuple[int, int]]:
    """Read only the header of an image: its Pillow mode and (width, height)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.mode, img.size
    except Exception as exc:  # untrusted file: see decode_image
        raise data_error(path, f"cannot decode image ({type(exc).__name__}: {exc})") from None


def crop_resize(img, size: int):
    """Centre-crop a PIL image to a square, then resize it to ``size x size`` (bilinear, antialiased)."""
    from PIL import Image

    w, h = img.size
    side = min(w, h)
    if w != h:
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return img


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 ``[N, H, W, C]`` to ``[N, size, size, C]`` (centre crop if not square)."""
    from PIL import Image

    n, h, w, c = images.shape
    if h == w == size:
        return images
    out = np.empty((n, size, size, c), dtype=np.uint8)
    for i in range(n):
        img = Image.fromarray(images[i, :, :, 0] if c == 1 else images[i])
        out[i] = np.asarray(crop_resize(img, size)).reshape(size, size, c)
    return out


def stack_images(arrays: Iterable[np.ndarray], channels: int) -> np.ndarray:
    """Stack decoded ``[H, W]`` / ``[H, W, 3]`` arrays into uint8 ``[N, H, W, channels]``."""
    out = []
    for a in arrays:
        if a.ndim == 2:
            a = a[:, :, None]
        if a.shape[2] != channels:  # a greyscale image in a colour dataset
            a = np.repeat(a, channels, axis=2)
        out.append(a)
    return np.stack(out).astype(np.uint8, copy=False)


def finish(
    images: np.ndarray,
    labels: np.ndarray | None,
    class_names: list[str] | None,
    *,
    image_size: int | None,
    limit: int | None,
) -> ImageData:
    """Apply ``limit`` (first N) and ``image_size`` to decoded arrays and wrap them."""
    if limit is not None:
        images = images[:limit]
        labels = None if labels is None else labels[:limit]
    if image_size is not None:
        images = resize_images(images, image_size)
    return ImageData(images=images, labels=labels, class_names=class_names)
