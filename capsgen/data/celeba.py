"""CelebA reader: ``img_align_celeba/`` + ``list_attr_celeba.txt`` (+ optional ``list_eval_partition.txt``).

``list_attr_celeba.txt`` is: a line with the image count, a line with the 40 attribute names,
then one line per image ``filename v1 ... v40`` with values -1 / 1.  CelebA has ~200k images,
so the text files are parsed fully but images are decoded only up to ``limit``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from capsgen.data.base import (
    ImageData,
    brief,
    data_error,
    decode_images,
    iter_dir,
    read_text,
    require_dir,
    require_file,
    stat_path,
    text_lines,
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
_VALUES = frozenset({"1", "-1"})


def read_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Parse ``list_attr_celeba.txt``: (attribute names [40], file names [N], int8 {0, 1} ``[N, 40]``).

    Rows are parsed one at a time and kept as one short string each (the 202,599-row real file
    ends as an 8 MB int8 table, never a Python string per cell): memory stays a small multiple
    of the file size, itself at most MAX_TEXT_BYTES.
    """
    return _parse_attributes(path, read_text(path, "attribute file"))


def _parse_attributes(path: Path, text: str) -> tuple[list[str], list[str], np.ndarray]:
    lines = ((n, line) for n, line in text_lines(path, text) if line.strip())
    head = [next(lines, None), next(lines, None)]
    if head[1] is None:
        raise data_error(path, "too short: expected a count line and an attribute-name line")
    (count_no, count_line), (names_no, names_line) = head
    try:
        count = int(count_line.strip())
    except ValueError:
        raise data_error(path, f"line {count_no}: expected the number of images, "
                               f"found {count_line.strip()[:40]!r}") from None
    if count < 0:
        raise data_error(path, f"line {count_no}: the number of images is negative ({count})")
    names = names_line.split()
    if len(names) != NUM_ATTRIBUTES:
        raise data_error(path, f"line {names_no}: expected {NUM_ATTRIBUTES} attribute names, found {len(names)}")
    files: list[str] = []
    bits: list[str] = []  # per row, its 40 values joined: "1-11..." (40 to 80 characters)
    for number, line in lines:
        fields = line.split()
        if len(fields) != NUM_ATTRIBUTES + 1:
            raise data_error(path, f"line {number}: expected {NUM_ATTRIBUTES + 1} columns "
                                   f"(file name and {NUM_ATTRIBUTES} values), found {len(fields)}")
        values = fields[1:]
        if not _VALUES.issuperset(values):
            c = next(i for i, v in enumerate(values) if v not in _VALUES)
            raise data_error(path, f"line {number}: value {values[c][:20]!r} of {names[c]} must be -1 or 1")
        files.append(fields[0])
        bits.append("".join(values))
    if len(files) != count:
        raise data_error(path, f"line {count_no} says {count} images but the file lists {len(files)}")
    if len(set(files)) != len(files):
        raise data_error(path, "lists some image file more than once")
    # Every value is "1" or "-1", so "-1" -> "0" leaves exactly one digit per value.
    digits = "".join(bits).replace("-1", "0").encode("ascii")
    table = (np.frombuffer(digits, dtype=np.uint8) - ord("0")).astype(np.int8).reshape(-1, NUM_ATTRIBUTES)
    return names, files, table


def read_partition(path: Path, files: list[str]) -> np.ndarray:
    """Parse ``list_eval_partition.txt``: int64 ``[N]`` partition (0/1/2) of each file in ``files``.

    Lines naming files not in ``files`` are checked but not kept, so memory follows ``files``.
    """
    text = read_text(path, "partition file")
    index = {f: i for i, f in enumerate(files)}
    part = np.full(len(files), -1, dtype=np.int64)
    for number, line in text_lines(path, text):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise data_error(path, f"line {number}: expected 'filename 0|1|2', found {line.strip()[:60]!r}")
        i = index.get(fields[0])
        if i is not None:
            part[i] = int(fields[1])
    missing = np.flatnonzero(part < 0)
    if missing.size:
        raise data_error(path, f"has no partition for {missing.size} listed image(s), e.g. {brief(files[missing[0]], 80)}")
    return part


def split_indices(directory: Path, files: list[str], split: str) -> np.ndarray:
    """Indices (into ``files``) of a split: from the partition file, else the last 10 % by name are test."""
    partition_path = directory / PARTITION_FILE
    if stat_path(partition_path) is not None:
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
    if os.path.isdir(image_dir / IMAGE_DIR):  # errors count as "no": the listing below reports them
        image_dir = image_dir / IMAGE_DIR
    attr_path = require_file(root / ATTR_FILE, _HINT)
    names, files, attributes = read_attributes(attr_path)
    # Presence of every listed file is checked up front (one directory listing, cheap even for
    # 200k files) so a broken download fails now rather than hours into training.  Only listed
    # names are kept, so a directory of millions of other files costs no memory.
    wanted = set(files)
    present = {e.name for e in iter_dir(image_dir) if e.name in wanted}
    if len(present) != len(wanted):
        missing = [f for f in files if f not in present]
        raise data_error(image_dir / missing[0][:200], f"listed in {ATTR_FILE} but missing "
                                                 f"({len(missing)} listed file(s) missing in total)")
    idx = split_indices(root, files, split)
    if limit is not None:
        idx = idx[:limit]
    if len(idx) == 0:
        raise data_error(attr_path, f"the {split} split is empty")
    size = image_size or DEFAULT_IMAGE_SIZE
    images = decode_images([image_dir / files[i] for i in idx], size, (size, size), 3, where=image_dir)
    return ImageData(images=images, labels=None, class_names=None,
                     attributes=attributes[idx].astype(np.int64), attribute_names=names)
