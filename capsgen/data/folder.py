"""A folder of image files, with one subfolder per class or no classes at all.

Layouts: ``DIR/<class>/**/<image>`` (sorted subfolder names give labels 0..K-1) or
``DIR/<image>`` (labels None).  Fixed split: within each class, every 10th file in sorted
order (the 10th, 20th, ...) is test, the rest train, so classes stay balanced across splits.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from capsgen.data.base import (
    GREY_MODES,
    IMAGE_SUFFIXES,
    ImageData,
    data_error,
    decode_image,
    list_dir,
    probe_image,
    require_dir,
    stack_images,
)

_HINT = "pass --data-dir with a folder of images, or of one subfolder of images per class"
TEST_EVERY = 10


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _images_under(folder: Path) -> list[Path]:
    """Image files anywhere below ``folder``, sorted by relative path (deterministic order)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath) / f for f in filenames if _is_image(f)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def scan_folder(root: Path) -> tuple[list[list[Path]], list[str] | None]:
    """Files grouped by class (one group when there are no classes) and the class names or None."""
    entries = list_dir(root)
    subdirs = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not subdirs:
        files = sorted(root / e.name for e in entries if e.is_file() and _is_image(e.name))
        if not files:
            raise data_error(root, f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}); {_HINT}")
        return [files], None
    groups = [_images_under(root / d) for d in subdirs]
    for name, files in zip(subdirs, groups):
        if not files:
            raise data_error(root / name, "class folder holds no image files")
    return groups, subdirs


def _interleave(groups: list[list[tuple[Path, int]]]) -> list[tuple[Path, int]]:
    """Round-robin over classes, so that the first N items (``limit``) stay class-balanced."""
    out = []
    for i in range(max(len(g) for g in groups)):
        out += [g[i] for g in groups if i < len(g)]
    return out


def _check_images(groups: list[list[Path]], image_size: int | None) -> int:
    """Read every header (both splits must agree); return the channel count, 1 if all greyscale."""
    first = groups[0][0]
    first_size = probe_image(first)[1]
    grey = True
    for path in (p for files in groups for p in files):
        mode, size = probe_image(path)
        grey = grey and mode in GREY_MODES
        if image_size is None and size != first_size:
            raise data_error(path, f"image is {size[0]}x{size[1]} but {first.name} is "
                                   f"{first_size[0]}x{first_size[1]}; pass image_size to resize all images "
                                   "to one square size")
    return 1 if grey else 3


def load_folder(
    directory: Path | None, split: str, image_size: int | None = None, limit: int | None = None
) -> ImageData:
    """Images of a folder: uint8 ``[N, H, W, C]``, C = 1 if every image is greyscale else 3.

    With ``image_size`` every image is centre-cropped to a square and resized to
    ``image_size``; without it all images must already share one size.
    """
    if directory is None:
        raise data_error("folder", f"no folder given; {_HINT}")
    root = require_dir(Path(directory), _HINT)
    groups, class_names = scan_folder(root)
    channels = _check_images(groups, image_size)
    want_test = split == "test"
    chosen = _interleave([
        [(p, k) for i, p in enumerate(files) if ((i % TEST_EVERY) == TEST_EVERY - 1) == want_test]
        for k, files in enumerate(groups)
    ])
    if limit is not None:
        chosen = chosen[:limit]
    if not chosen:
        raise data_error(root, f"the {split} split is empty (every {TEST_EVERY}th image of each class is test)")
    images = stack_images((decode_image(p, image_size) for p, _ in chosen), channels=channels)
    labels = None if class_names is None else np.array([k for _, k in chosen], dtype=np.int64)
    return ImageData(images=images, labels=labels, class_names=class_names)
