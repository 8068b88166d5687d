"""Image-folder reader: class subfolders or none, grey/colour, sizes, the fixed split, bad files."""

import numpy as np
from PIL import Image

from capsgen.data import load_split
from capsgen.data.testing import expect_data_error, write_image_folder


def test_class_subfolders(tmp_path):
    written = write_image_folder(tmp_path, classes=["cat", "dog"], per_class=12, size=6, mode="L")
    train = load_split("folder", "train", tmp_path)
    test = load_split("folder", "test", tmp_path)
    assert train.class_names == ["cat", "dog"] and test.class_names == ["cat", "dog"]
    assert train.images.shape == (22, 6, 6, 1) and train.images.dtype == np.uint8
    # Every 10th file of each class (img_09) is test; splits interleave the classes.
    assert test.labels.tolist() == [0, 1]
    np.testing.assert_array_equal(test.images[0, :, :, 0], written["cat"][9])
    np.testing.assert_array_equal(test.images[1, :, :, 0], written["dog"][9])
    assert train.labels.tolist() == [0, 1] * 11
    expected = [written[c][i] for i in (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11) for c in ("cat", "dog")]
    np.testing.assert_array_equal(train.images[..., 0], np.stack(expected))
    assert load_split("folder", "train", tmp_path, limit=4).labels.tolist() == [0, 1, 0, 1]


def test_no_classes_rgb(tmp_path):
    written = write_image_folder(tmp_path, classes=None, per_class=10, size=5, mode="RGB")
    train = load_split("folder", "train", tmp_path)
    assert train.labels is None and train.class_names is None
    assert train.images.shape == (9, 5, 5, 3)
    np.testing.assert_array_equal(train.images, np.stack(written[""][:9]))
    x, y = train.to_tensors()
    assert x.shape == (9, 3, 5, 5) and y is None and float(x.max()) <= 1.0


def test_mixed_grey_and_colour_becomes_rgb(tmp_path):
    write_image_folder(tmp_path, classes=["a"], per_class=10, size=4, mode="L")
    Image.fromarray(np.full((4, 4, 3), 9, np.uint8)).save(tmp_path / "a" / "img_99.png")
    data = load_split("folder", "train", tmp_path)
    assert data.images.shape == (10, 4, 4, 3)
    assert (data.images[..., 0] == data.images[..., 2]).all()  # grey images repeated to 3 channels


def test_sizes_must_agree_unless_image_size(tmp_path):
    write_image_folder(tmp_path, classes=["a"], per_class=10, size=4)
    odd = tmp_path / "a" / "img_05.png"
    Image.fromarray(np.zeros((8, 6), np.uint8)).save(odd)
    with expect_data_error(str(odd), "6x8", "4x4", "image_size"):
        load_split("folder", "train", tmp_path)
    assert load_split("folder", "train", tmp_path, image_size=3).images.shape == (9, 3, 3, 1)


def test_broken_inputs(tmp_path):
    with expect_data_error("--data-dir"):
        load_split("folder", "train")
    with expect_data_error(str(tmp_path / "missing"), "not found", "--data-dir"):
        load_split("folder", "train", tmp_path / "missing")
    with expect_data_error(str(tmp_path), "no image files"):
        load_split("folder", "train", tmp_path)
    write_image_folder(tmp_path, classes=["a"], per_class=10)
    (tmp_path / "b").mkdir()
    with expect_data_error(str(tmp_path / "b"), "no image files"):
        load_split("folder", "train", tmp_path)
    (tmp_path / "b").rmdir()
    bad = tmp_path / "a" / "img_03.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with expect_data_error(str(bad), "cannot decode image"):
        load_split("folder", "test", tmp_path)


def test_empty_test_split(tmp_path):
    write_image_folder(tmp_path, classes=["a"], per_class=3)
    assert len(load_split("folder", "train", tmp_path)) == 3
    with expect_data_error(str(tmp_path), "test split is empty"):
        load_split("folder", "test", tmp_path)
