"""The registry: names, bad names/splits/options, shapes, ImageData, and the installed Fashion-MNIST."""

from pathlib import Path

import numpy as np
import pytest
import torch

from capsgen.data import DATASETS, ImageData, dataset_names, image_shape, load_split
from capsgen.errors import ConfigError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def test_registry_contents():
    assert dataset_names() == ["fashion-mnist", "mnist", "mnist-5k", "digits", "cifar10", "celeba", "shapes-attributes", "folder"]
    for name, spec in DATASETS.items():
        assert spec.name == name and spec.description and "\n" not in spec.description
    assert DATASETS["fashion-mnist"].default_dir == str(FASHION_DIR)
    assert DATASETS["mnist"].default_dir is None


def test_unknown_name_lists_choices():
    with pytest.raises(ConfigError) as info:
        load_split("imagenet")
    message = str(info.value)
    assert "imagenet" in message and "\n" not in message
    assert all(name in message for name in dataset_names())
    with pytest.raises(ConfigError):
        image_shape("imagenet")


def test_name_normalisation():
    assert load_split("MNIST_5K", "test", limit=3).name == "mnist-5k"


@pytest.mark.parametrize("kwargs, fragment", [
    ({"split": "val"}, "train, test"),
    ({"limit": 0}, "limit"),
    ({"limit": -3}, "limit"),
    ({"limit": 2.5}, "limit"),
    ({"image_size": 0}, "image_size"),
    ({"image_size": True}, "image_size"),
])
def test_bad_options(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_split("digits", **kwargs)


def test_image_shape():
    assert image_shape("fashion-mnist") == (1, 28, 28)
    assert image_shape("mnist-5k") == (1, 28, 28)
    assert image_shape("digits") == (1, 8, 8)
    assert image_shape("cifar10") == (3, 32, 32)
    assert image_shape("celeba") == (3, 64, 64)
    assert image_shape("celeba", image_size=32) == (3, 32, 32)
    with pytest.raises(ConfigError, match="depends on its files"):
        image_shape("folder")


def test_image_size_and_limit_generic():
    data = load_split("digits", "train", image_size=16, limit=7)
    assert data.images.shape == (7, 16, 16, 1) and data.labels.shape == (7,)
    full = load_split("digits", "train")
    np.testing.assert_array_equal(data.labels, full.labels[:7])
    assert image_shape("digits", image_size=16) == data.to_tensors()[0].shape[1:]


def test_image_data_to_tensors():
    images = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    images.setflags(write=False)  # as a cached array would be: no warning, a writable copy
    data = ImageData(images, np.array([1, 0]), ["a", "b"])
    x, y = data.to_tensors()
    assert x.dtype == torch.float32 and x.shape == (2, 3, 3, 4)
    assert torch.equal(x[1, 2, 0, 1], torch.tensor(images[1, 0, 1, 2] / 255.0, dtype=torch.float32))
    assert y.dtype == torch.int64 and y.tolist() == [1, 0]
    assert len(data) == 2 and data.num_classes == 2
    with pytest.raises(ValueError):
        ImageData(images[0], None, None)  # 3-D images are a reader bug


@pytest.mark.skipif(not FASHION_DIR.is_dir(),
                    reason="Fashion-MNIST not installed: apt-get install -y dataset-fashion-mnist")
def test_installed_fashion_mnist():
    train, test = load_split("fashion-mnist", "train"), load_split("fashion-mnist", "test")
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert train.class_names[9] == "Ankle boot" and train.name == "fashion-mnist"
    assert load_split("fashion-mnist", "test", limit=5).labels.tolist() == test.labels[:5].tolist()
