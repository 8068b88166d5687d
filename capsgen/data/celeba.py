"""CelebA reader: ``img_align_celeba/`` + ``list_attr_celeba.txt`` (+ optional ``list_eval_partition.txt``).

``list_attr_celeba.txt`` is: a line with the image count, a line with the 40 attribute names,
then one line per image ``filename v1 ... v40`` with values -1 / 1.  CelebA has ~200k images,
so the text files are parsed fully but images are decoded only up to ``limit``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from capsgen.data.base import (
    ImageData,
    data_error,
    decode_image,
    list_dir,
    require_dir,
    require_file,
    stack_images,
)

NUM_ATTRIBUTES = 40
DEFAULT_IMAGE_SIZE = 64
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_DIR = "img_align_celeba"
_HINT = (f"pass --data-dir with the CelebA files ({IMAGE_DIR}/ and {ATTR_FILE}; "
         f"{PARTITION_FILE} is optional)")
# list_eval_partition.txt: 0 = train, 1 = validation, 2 = test.  We use 0 as train and 2 as
# test and leave validation out, so the test split matches the published one.
_PARTITION_OF_SPLIT = {"train": 0, "test": 2}


def read_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Parse ``list_attr_celeba.txt``: (attribute names [40], file names [N], int64 {0, 1} ``[N, 40]``)."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise data_error(path, f"cannot read attribute file ({type(exc).__name__}: {exc})") from None
    lines = [line for line in lines if line.strip()]
    if len(lines) < 2:
        raise data_error(path, "too short: expected a count line and an attribute-name line")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise data_error(path, f"line 1: expected the number of images, found {lines[0].strip()[:40]!r}") from None
    names = lines[1].split()
    if len(names) != NUM_ATTRIBUTES:
        raise data_error(path, f"line 2: expected {NUM_ATTRIBUTES} attribute names, found {len(names)}")
    rows = lines[2:]
    if len(rows) != count:
        raise data_error(path, f"line 1 says {count} images but the file lists {len(rows)}")
    files: list[str] = []
    cells: list[list[str]] = []
    for i, row in enumerate(rows):
        fields = row.split()
        if len(fields) != NUM_ATTRIBUTES + 1:
            raise data_error(path, f"line {i + 3}: expected {NUM_ATTRIBUTES + 1} columns "
                                   f"(file name and {NUM_ATTRIBUTES} values), found {len(fields)}")
        files.append(fields[0])
        cells.append(fields[1:])
    table = np.array(cells, dtype=str).reshape(len(rows), NUM_ATTRIBUTES)
    bad = np.argwhere((table != "1") & (table != "-1"))
    if bad.size:
        r, c = (int(v) for v in bad[0])
        raise data_error(path, f"line {r + 3}: value {table[r, c][:20]!r} of {names[c]} must be -1 or 1")
    values = (table == "1").astype(np.int64)
    if len(set(files)) != len(files):
        raise data_error(path, "lists some image file more than once")
    return names, files, values


def read_partition(path: Path, files: list[str]) -> np.ndarray:
    """Parse ``list_eval_partition.txt``: int64 ``[N]`` partition (0/1/2) of each file in ``files``."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise data_error(path, f"cannot read partition file ({type(exc).__name__}: {exc})") from None
    part: dict[str, int] = {}
    for i, line in enumerate(lines):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise data_error(path, f"line {i + 1}: expected 'filename 0|1|2', found {line.strip()[:60]!r}")
        part[fields[0]] = int(fields[1])
    missing = [f for f in files if f not in part]
    if missing:
        raise data_error(path, f"has no partition for {len(missing)} listed image(s), e.g. {missing[0]}")
    return np.array([part[f] for f in files], dtype=np.int64)


def split_indices(directory: Path, files: list[str], split: str) -> np.ndarray:
    """Indices (into ``files``) of a split: from the partition file, else the last 10 % by name are test."""
    partition_path = directory / PARTITION_FILE
    if partition_path.is_file():
        return np.flatnonzero(read_partition(partition_path, files) == _PARTITION_OF_SPLIT[split])
    order = np.argsort(np.array(files, dtype=object), kind="stable")
    n_test = math.ceil(len(files) / 10)
    return np.sort(order[len(files) - n_test:] if split == "test" else order[: len(files) - n_test])


def load_celeba(
    directory: Path | None, split: str, image_size: int | None = None, limit: int | None = None
) -> ImageData:
    """CelebA faces, centre-cropped and resized: uint8 ``[N, S, S, 3]`` (S = image_size, default 64).

    ``attributes`` is int64 {0, 1} ``[N, 40]``; ``labels`` is None.  Only the first ``limit``
    images of the split (in file-list order) are decoded.
    """
    if directory is None:
        raise data_error("celeba", f"CelebA cannot be downloaded here (no network); {_HINT}")
    root = require_dir(Path(directory), _HINT)
    image_dir = require_dir(root / IMAGE_DIR, _HINT)
    # The Kaggle archive nests the folder once more: img_align_celeba/img_align_celeba/.
    if (image_dir / IMAGE_DIR).is_dir():
        image_dir = image_dir / IMAGE_DIR
    attr_path = require_file(root / ATTR_FILE, _HINT)
    names, files, attributes = read_attributes(attr_path)
    # Presence of every listed file is checked up front (one directory listing, cheap even for
    # 200k files) so a broken download fails now rather than hours into training.
    present = {e.name for e in list_dir(image_dir)}
    missing = [f for f in files if f not in present]
    if missing:
        raise data_error(image_dir / missing[0], f"listed in {ATTR_FILE} but missing "
                                                 f"({len(missing)} listed file(s) missing in total)")
    idx = split_indices(root, files, split)
    if limit is not None:
        idx = idx[:limit]
    if len(idx) == 0:
        raise data_error(attr_path, f"the {split} split is empty")
    size = image_size or DEFAULT_IMAGE_SIZE
    images = stack_images((decode_image(image_dir / files[i], size) for i in idx), channels=3)
    return ImageData(images=images, labels=None, class_names=None,
                     attributes=attributes[idx], attribute_names=names)
