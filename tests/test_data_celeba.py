"""CelebA reader: attribute file, partitions, crop/resize, lazy limit, and broken inputs."""

import numpy as np
import pytest
from PIL import Image

from capsgen.data import load_split
from capsgen.data.testing import expect_data_error, write_celeba


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_round_trip_without_partition_file(tmp_path, ext):
    attrs = write_celeba(tmp_path, n=12, ext=ext)
    train = load_split("celeba", "train", tmp_path)
    test = load_split("celeba", "test", tmp_path)
    # Without list_eval_partition.txt the last 10 % by name (rounded up: 2 of 12) are test.
    assert train.images.shape == (10, 64, 64, 3) and test.images.shape == (2, 64, 64, 3)
    assert train.images.dtype == np.uint8 and train.labels is None and train.class_names is None
    np.testing.assert_array_equal(train.attributes, attrs[:10])
    np.testing.assert_array_equal(test.attributes, attrs[10:])
    assert train.attributes.dtype == np.int64 and len(train.attribute_names) == 40
    x, y = test.to_tensors()
    assert x.shape == (2, 3, 64, 64) and y is None


def test_partition_file_crop_and_resize(tmp_path):
    attrs = write_celeba(tmp_path, n=5, size=(6, 10), partition=[0, 1, 2, 0, 2])
    # Make image 4 (train) a known picture: 6 wide, 10 high; the centre crop keeps rows 2..7.
    pixels = np.zeros((10, 6, 3), np.uint8)
    pixels[2:8] = 200
    Image.fromarray(pixels).save(tmp_path / "img_align_celeba" / "000004.png")
    train = load_split("celeba", "train", tmp_path, image_size=6)
    test = load_split("celeba", "test", tmp_path, image_size=3)
    np.testing.assert_array_equal(train.attributes, attrs[[0, 3]])
    np.testing.assert_array_equal(test.attributes, attrs[[2, 4]])
    assert train.images.shape == (2, 6, 6, 3) and test.images.shape == (2, 3, 3, 3)
    assert (train.images[1] == 200).all()


def test_limit_reads_only_what_it_needs(tmp_path):
    write_celeba(tmp_path, n=12)
    # An undecodable image beyond the limit is never opened.
    (tmp_path / "img_align_celeba" / "000009.png").write_bytes(b"not an image")
    assert len(load_split("celeba", "train", tmp_path, limit=3)) == 3
    with expect_data_error(str(tmp_path / "img_align_celeba" / "000009.png"), "cannot decode image"):
        load_split("celeba", "train", tmp_path)


def _edit_attr_file(tmp_path, edit):
    path = tmp_path / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")
    return path


@pytest.mark.parametrize("edit, fragment", [
    (lambda ls: ls[:3] + [ls[3] + " 1"] + ls[4:], "line 4: expected 41 columns"),
    (lambda ls: ls[:3] + [ls[3].rsplit(" ", 1)[0]] + ls[4:], "line 4: expected 41 columns"),
    (lambda ls: ["7"] + ls[1:], "line 1 says 7 images but the file lists 6"),
    (lambda ls: ["six"] + ls[1:], "line 1: expected the number of images"),
    (lambda ls: [ls[0], " ".join(ls[1].split()[:39])] + ls[2:], "line 2: expected 40 attribute names, found 39"),
    (lambda ls: ls[:2] + [ls[2].replace("-1", " 0", 1).replace(" 1", " 0", 1)] + ls[3:], "must be -1 or 1"),
    (lambda ls: ls[:3] + [ls[2]] + ls[4:], "more than once"),
    (lambda ls: ls[:1], "too short"),
])
def test_broken_attribute_file(tmp_path, edit, fragment):
    write_celeba(tmp_path, n=6)
    path = _edit_attr_file(tmp_path, edit)
    with expect_data_error(str(path), fragment):
        load_split("celeba", "train", tmp_path)


def test_missing_and_undecodable_images(tmp_path):
    write_celeba(tmp_path, n=6, partition=[0] * 6)
    image = tmp_path / "img_align_celeba" / "000002.png"
    image.write_bytes(image.read_bytes()[:60])  # truncated PNG
    with expect_data_error(str(image), "cannot decode image"):
        load_split("celeba", "train", tmp_path)
    image.unlink()
    with expect_data_error(str(image), "missing"):
        load_split("celeba", "train", tmp_path)


def test_broken_partition_file(tmp_path):
    write_celeba(tmp_path, n=4, partition=[0, 0, 2, 5])
    with expect_data_error("list_eval_partition.txt", "line 4", "0|1|2"):
        load_split("celeba", "train", tmp_path)
    write_celeba(tmp_path, n=4, partition=[0, 0, 2])
    with expect_data_error("list_eval_partition.txt", "no partition for 1 listed image", "000004.png"):
        load_split("celeba", "train", tmp_path)


def test_missing_files(tmp_path):
    with expect_data_error("cannot be downloaded", "--data-dir"):
        load_split("celeba", "train")
    with expect_data_error(str(tmp_path / "img_align_celeba"), "not found", "--data-dir"):
        load_split("celeba", "train", tmp_path)
    write_celeba(tmp_path, n=2)
    (tmp_path / "list_attr_celeba.txt").unlink()
    with expect_data_error(str(tmp_path / "list_attr_celeba.txt"), "not found", "--data-dir"):
        load_split("celeba", "train", tmp_path)
