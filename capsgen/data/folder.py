"""A folder of image files, with one subfolder per class or no classes at all.

Layouts: ``DIR/<class>/**/<image>`` (sorted subfolder names give labels 0..K-1) or
``DIR/<image>`` (labels None).  Fixed split: within each class, every 10th file in sorted
order (the 10th, 20th, ...) is test, the rest train, so classes stay balanced across splits.

The walk trusts nothing it finds: every entry is examined with ``stat`` before anything is
opened, so a FIFO, socket or device named ``*.png`` is reported instead of hanging the reader;
symlinked folders are followed, but one that leads back to a folder containing it (a loop) or
to a folder already read is reported, as are broken links and trees deeper than
:data:`MAX_DEPTH`.  Names starting with "." are skipped, as are non-image files (never opened).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from capsgen.data.base import (
    GREY_MODES,
    IMAGE_SUFFIXES,
    ImageData,
    data_error,
    decode_images,
    file_kind,
    iter_dir,
    os_reason,
    probe_image,
    require_dir,
)

_HINT = "pass --data-dir with a folder of images, or of one subfolder of images per class"
TEST_EVERY = 10
# Class folders nest a level or two; 32 levels only happen by accident (or by a link farm).
MAX_DEPTH = 32
# ImageNet-1k's train set has 1.28M images: twice that is beyond any folder we would decode.
MAX_IMAGES = 2_500_000
# Directory entries examined in all (images or not): bounds the time spent walking.
MAX_ENTRIES = 10_000_000


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


@dataclass
class _Walk:
    """State of one walk: directories already read (device, inode) and the running counts."""

    seen_dirs: dict[tuple[int, int], Path] = field(default_factory=dict)
    entries: int = 0
    images: int = 0


def _entries(directory: Path, walk: _Walk) -> list[tuple[str, os.stat_result]]:
    """Non-hidden entries of ``directory`` with their ``stat`` (symlinks followed), sorted by name."""
    out = []
    for entry in iter_dir(directory):
        walk.entries += 1
        if walk.entries > MAX_ENTRIES:
            raise data_error(directory, f"the folder tree holds more than {MAX_ENTRIES:,} entries")
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            st = entry.stat()  # follows symlinks; no open(), so a FIFO cannot block us
        except FileNotFoundError:
            if entry.is_symlink():
                raise data_error(path, "broken symbolic link (its target does not exist)") from None
            continue  # removed while we were listing: it is simply not part of the dataset
        except OSError as exc:  # a symlink loop (ELOOP), a forbidden directory on the way
            raise data_error(path, f"cannot access ({os_reason(exc)})") from None
        out.append((entry.name, st))
    return sorted(out, key=lambda e: e[0])


def _enter(directory: Path, st: os.stat_result, chain: tuple[tuple[int, int], ...], walk: _Walk):
    """Register a directory about to be read; DataError for a loop, a second visit or too deep."""
    ident = (st.st_dev, st.st_ino)
    if ident in chain:
        raise data_error(directory, "symbolic link loop: this folder leads back to a folder that contains it")
    if ident in walk.seen_dirs:
        raise data_error(directory, f"is the same folder as {walk.seen_dirs[ident]} (through a symbolic link); "
                                    "each folder may be read only once")
    if len(chain) > MAX_DEPTH:
        raise data_error(directory, f"folders nested more than {MAX_DEPTH} levels deep")
    walk.seen_dirs[ident] = directory
    return chain + (ident,)


def _collect(directory: Path, rel: str, chain: tuple[tuple[int, int], ...], walk: _Walk,
             out: list[str]) -> None:
    """Append the relative paths of the images below ``directory`` to ``out`` (depth first)."""
    for name, st in _entries(directory, walk):
        path = directory / name
        if stat.S_ISDIR(st.st_mode):
            _collect(path, f"{rel}{name}/", _enter(path, st, chain, walk), walk, out)
        elif _is_image(name):
            if not stat.S_ISREG(st.st_mode):
                raise data_error(path, f"is a {file_kind(st.st_mode)}, not a regular file; an image must be a file")
            walk.images += 1
            if walk.images > MAX_IMAGES:
                raise data_error(directory, f"more than {MAX_IMAGES:,} image files below the dataset folder")
            out.append(rel + name)


def scan_folder(root: Path) -> tuple[list[list[Path]], list[str] | None]:
    """Files grouped by class (one group when there are no classes) and the class names or None."""
    walk = _Walk()
    try:
        root_stat = os.stat(root)
    except OSError as exc:
        raise data_error(root, f"cannot access ({os_reason(exc)})") from None
    chain = _enter(root, root_stat, (), walk)
    entries = _entries(root, walk)
    subdirs = [(name, st) for name, st in entries if stat.S_ISDIR(st.st_mode)]
    if not subdirs:
        files: list[str] = []
        for name, st in entries:
            if _is_image(name):
                if not stat.S_ISREG(st.st_mode):
                    raise data_error(root / name, f"is a {file_kind(st.st_mode)}, not a regular file; "
                                                  "an image must be a file")
                files.append(name)
        if not files:
            raise data_error(root, f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}); {_HINT}")
        return [[root / f for f in files]], None
    groups = []
    for name, st in subdirs:
        found: list[str] = []
        _collect(root / name, "", _enter(root / name, st, chain, walk), walk, found)
        if not found:
            raise data_error(root / name, "class folder holds no image files")
        groups.append([root / name / f for f in sorted(found)])
    return groups, [name for name, _ in subdirs]


def _interleave(groups: list[list[tuple[Path, int]]]) -> list[tuple[Path, int]]:
    """Round-robin over classes, so that the first N items (``limit``) stay class-balanced."""
    out = []
    for i in range(max(len(g) for g in groups)):
        out += [g[i] for g in groups if i < len(g)]
    return out


def _check_images(groups: list[list[Path]], image_size: int | None) -> tuple[int, tuple[int, int]]:
    """Read every header (both splits must agree): (channels, 1 if all greyscale; (width, height) of the first)."""
    first = groups[0][0]
    first_size = probe_image(first)[1]
    grey = True
    for path in (p for files in groups for p in files):
        mode, size = probe_image(path)
        grey = grey and mode in GREY_MODES
        if image_size is None and size != first_size:
            raise data_error(path, f"image is {size[0]}x{size[1]} but {first.name} is "
                                   f"{first_size[0]}x{first_size[1]}; give --set train.image_size=N "
                                   "to resize every image to N x N")
    return (1 if grey else 3), first_size


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
    channels, (width, height) = _check_images(groups, image_size)
    want_test = split == "test"
    chosen = _interleave([
        [(p, k) for i, p in enumerate(files) if ((i % TEST_EVERY) == TEST_EVERY - 1) == want_test]
        for k, files in enumerate(groups)
    ])
    if limit is not None:
        chosen = chosen[:limit]
    if not chosen:
        raise data_error(root, f"the {split} split is empty (every {TEST_EVERY}th image of each class is test)")
    hw = (image_size, image_size) if image_size is not None else (height, width)
    images = decode_images([p for p, _ in chosen], image_size, hw, channels, where=root)
    labels = None if class_names is None else np.array([k for _, k in chosen], dtype=np.int64)
    return ImageData(images=images, labels=labels, class_names=class_names)
