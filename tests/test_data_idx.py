"""IDX reader (mnist, fashion-mnist): real-format round trips and every kind of broken file."""

import gzip
import struct

import numpy as np
import pytest

from capsgen.data import load_split
from capsgen.data.testing import expect_data_error, write_idx, write_idx_dataset


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_round_trip(tmp_path, gz, name):
    written = write_idx_dataset(tmp_path, n_train=12, n_test=6, gz=gz)
    for split in ("train", "test"):
        data = load_split(name, split, tmp_path)
        images, labels = written[split]
        assert data.images.dtype == np.uint8 and data.images.shape == (len(images), 28, 28, 1)
        np.testing.assert_array_equal(data.images[..., 0], images)
        assert data.labels.dtype == np.int64
        np.testing.assert_array_equal(data.labels, labels)
        assert (data.name, data.split, len(data)) == (name, split, len(images))
    assert load_split("fashion-mnist", "test", tmp_path).class_names[0] == "T-shirt/top"
    assert load_split("mnist", "test", tmp_path).class_names == [str(d) for d in range(10)]


def test_torchvision_raw_layout_and_limit(tmp_path):
    written = write_idx_dataset(tmp_path / "MNIST" / "raw", n_train=12)
    data = load_split("mnist", "train", tmp_path, limit=5, image_size=14)
    assert data.images.shape == (5, 14, 14, 1)
    np.testing.assert_array_equal(data.labels, written["train"][1][:5])


def test_cached_arrays_are_read_only(tmp_path):
    write_idx_dataset(tmp_path)
    first = load_split("mnist", "train", tmp_path)
    with pytest.raises(ValueError):
        first.images[0, 0, 0, 0] = 1
    x, _ = first.to_tensors()
    x[0] = 0.5  # the tensors are copies: writing to them must not touch the cache
    np.testing.assert_array_equal(load_split("mnist", "train", tmp_path).images, first.images)


def test_rewritten_file_is_reread(tmp_path):
    write_idx_dataset(tmp_path, seed=0)
    before = load_split("mnist", "train", tmp_path).images.copy()
    written = write_idx_dataset(tmp_path, seed=1)
    after = load_split("mnist", "train", tmp_path).images
    np.testing.assert_array_equal(after[..., 0], written["train"][0])
    assert not np.array_equal(before, after)


def _header(magic, *dims):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)


def test_bad_magic(tmp_path):
    write_idx_dataset(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(_header(0x802, 2, 28, 28) + bytes(2 * 784)))
    with expect_data_error(str(bad), "bad magic number 0x00000802 (expected 0x00000803 for IDX images)"):
        load_split("mnist", "train", tmp_path)


def test_labels_file_with_images_magic(tmp_path):
    write_idx_dataset(tmp_path, gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    write_idx(labels, np.zeros((12, 2, 2), np.uint8))
    with expect_data_error(str(labels), "expected 0x00000801 for IDX labels"):
        load_split("mnist", "train", tmp_path)


def test_truncated_payload(tmp_path):
    write_idx_dataset(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with expect_data_error(str(path), "truncated", str(12 * 784), str(12 * 784 - 100)):
        load_split("mnist", "train", tmp_path)


def test_truncated_gzip_reports_sizes(tmp_path):
    write_idx_dataset(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-200])
    with expect_data_error(str(path), "truncated", f"need {12 * 784} bytes", "gzip stream ends early"):
        load_split("mnist", "train", tmp_path)


def test_truncated_header_and_trailing_data(tmp_path):
    write_idx_dataset(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(_header(0x803, 12))
    with expect_data_error(str(path), "truncated"):
        load_split("mnist", "train", tmp_path)
    path.write_bytes(_header(0x803, 12, 28, 28) + bytes(12 * 784 + 1))
    with expect_data_error(str(path), "more data than the header"):
        load_split("mnist", "train", tmp_path)


def test_header_claiming_huge_size_does_not_allocate(tmp_path):
    write_idx_dataset(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(_header(0x803, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF) + bytes(10))
    with expect_data_error(str(path), "truncated"):
        load_split("mnist", "train", tmp_path)


def test_mismatched_counts(tmp_path):
    write_idx_dataset(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(labels, np.zeros(11, np.uint8))
    with expect_data_error(str(labels), "11 labels", "12 images"):
        load_split("mnist", "train", tmp_path)


def test_label_out_of_range(tmp_path):
    write_idx_dataset(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(labels, np.array([0, 1, 2, 3, 10, 5], np.uint8))
    with expect_data_error(str(labels), "label 10 at index 4", "0..9"):
        load_split("fashion-mnist", "test", tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped"])
def test_corrupt_gzip(tmp_path, damage):
    write_idx_dataset(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    if damage == "garbage":
        raw = b"this is not gzip data at all"
    elif damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:  # corrupt the deflate stream in the middle (CRC or stream error)
        raw[len(raw) // 2] ^= 0xFF
        raw[len(raw) // 2 + 1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with expect_data_error(str(path), "corrupt gzip data" if damage != "truncated" else "truncated"):
        load_split("mnist", "train", tmp_path)


def test_missing_files_and_dirs(tmp_path):
    write_idx_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with expect_data_error("t10k-labels-idx1-ubyte", "not found", "--data-dir"):
        load_split("mnist", "test", tmp_path)
    with expect_data_error("apt-get install -y dataset-fashion-mnist", "--data-dir"):
        load_split("fashion-mnist", "test", tmp_path)
    with expect_data_error(str(tmp_path / "nowhere"), "not found", "apt-get install -y dataset-fashion-mnist"):
        load_split("fashion-mnist", "train", tmp_path / "nowhere")


def test_mnist_without_data_dir_says_what_to_pass():
    with expect_data_error("MNIST cannot be downloaded here", "--data-dir", "four standard IDX files"):
        load_split("mnist", "train")


def test_multi_member_gzip_is_valid(tmp_path):
    written = write_idx_dataset(tmp_path, gz=False)
    raw = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").unlink()
    # `cat a.gz b.gz` is a valid gzip file whose content is the concatenation.
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    np.testing.assert_array_equal(load_split("mnist", "train", tmp_path).images[..., 0], written["train"][0])


def test_wrong_image_size(tmp_path):
    write_idx_dataset(tmp_path, size=14)
    with expect_data_error("train-images-idx3-ubyte.gz", "images are 14x14, expected 28x28"):
        load_split("mnist", "train", tmp_path)
