"""CIFAR-10 pickle reader: real-format batches, and refusal of malicious or malformed pickles."""

import os
import pickle

import numpy as np
import pytest

from capsgen.data import load_split
from capsgen.data.cifar import safe_load
from capsgen.data.testing import dump_pickle, expect_data_error, write_cifar10


@pytest.mark.parametrize("style", ["py2", "4", "5"])
def test_round_trip(tmp_path, style):
    written = write_cifar10(tmp_path, per_batch=3, style=style)
    for split, n in (("train", 15), ("test", 3)):
        data = load_split("cifar10", split, tmp_path)
        assert data.images.dtype == np.uint8 and data.images.shape == (n, 32, 32, 3)
        np.testing.assert_array_equal(data.images, written[split][0])
        np.testing.assert_array_equal(data.labels, written[split][1])
        assert data.class_names[0] == "airplane" and len(data.class_names) == 10


def test_channel_layout(tmp_path):
    # A row is 1024 red values, then 1024 green, then 1024 blue: pixel (0, 0) is (r[0], g[0], b[0]).
    write_cifar10(tmp_path, per_batch=1)
    root = tmp_path / "cifar-10-batches-py"
    row = np.zeros(3072, np.uint8)
    row[0], row[1024], row[2048], row[1] = 10, 20, 30, 40
    dump_pickle({b"data": row[None], b"labels": [7]}, root / "test_batch")
    data = load_split("cifar10", "test", root)  # the batches folder itself is accepted too
    assert data.images[0, 0, 0].tolist() == [10, 20, 30] and data.images[0, 0, 1, 0] == 40
    assert data.labels.tolist() == [7]


def test_numpy_1_module_names_accepted(tmp_path):
    # The real files (written with numpy 1.x) name numpy.core.multiarray, not numpy._core.
    path = dump_pickle({b"data": np.arange(6, dtype=np.uint8).reshape(2, 3)}, tmp_path / "b", "py2")
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    assert b"numpy.core.multiarray" in path.read_bytes()
    np.testing.assert_array_equal(safe_load(path)[b"data"], np.arange(6).reshape(2, 3))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    write_cifar10(tmp_path, per_batch=2)
    marker = tmp_path / "pwned"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    with open(batch, "wb") as f:
        pickle.dump({b"data": _Evil(marker), b"labels": [0]}, f, protocol=4)
    with expect_data_error(str(batch), "refusing to load global", "system"):
        load_split("cifar10", "train", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("global_", [b"cos\nsystem\n", b"cbuiltins\neval\n", b"c__builtin__\nexec\n"])
def test_handwritten_global_opcodes_refused(tmp_path, global_):
    marker = tmp_path / "pwned"
    path = tmp_path / "test_batch"
    path.write_bytes(global_ + b"(V" + f"touch {marker}".encode() + b"\ntR.")
    with expect_data_error(str(path), "refusing"):
        safe_load(path)
    assert not marker.exists()


def _rewrite_test_batch(tmp_path, batch):
    root = tmp_path / "cifar-10-batches-py"
    write_cifar10(tmp_path, per_batch=2)
    return dump_pickle(batch, root / "test_batch")


@pytest.mark.parametrize("batch, fragment", [
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "label 10 at index 1 is outside 0..9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "'data' has 2 rows"),
    ({b"data": np.zeros((2, 3071), np.uint8), b"labels": [0, 1]}, "uint8 array [n, 3072]"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8 array [n, 3072]"),
    ({b"data": [1, 2, 3], b"labels": [0]}, "found list"),
    ({b"labels": [0]}, "missing key 'data'"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": ["cat"]}, "not a list of integers"),
    ([1, 2, 3], "expected a dict"),
])
def test_malformed_batches(tmp_path, batch, fragment):
    path = _rewrite_test_batch(tmp_path, batch)
    with expect_data_error(str(path), fragment):
        load_split("cifar10", "test", tmp_path)


def test_truncated_and_garbage_pickles(tmp_path):
    path = _rewrite_test_batch(tmp_path, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})
    path.write_bytes(path.read_bytes()[:500])
    with expect_data_error(str(path), "not a valid CIFAR-10 pickle"):
        load_split("cifar10", "test", tmp_path)
    path.write_bytes(b"\x00\x01garbage")
    with expect_data_error(str(path), "not a valid CIFAR-10 pickle"):
        load_split("cifar10", "test", tmp_path)


def test_missing_batch_and_dir(tmp_path):
    write_cifar10(tmp_path, per_batch=1)
    (tmp_path / "cifar-10-batches-py" / "data_batch_5").unlink()
    with expect_data_error("data_batch_5", "not found", "--data-dir"):
        load_split("cifar10", "train", tmp_path)
    with expect_data_error("cannot be downloaded", "--data-dir"):
        load_split("cifar10", "train")
    with expect_data_error(str(tmp_path / "nope"), "--data-dir"):
        load_split("cifar10", "train", tmp_path / "nope")


def test_bad_meta(tmp_path):
    write_cifar10(tmp_path, per_batch=1)
    meta = dump_pickle({b"label_names": [b"a", b"b"]}, tmp_path / "cifar-10-batches-py" / "batches.meta")
    with expect_data_error(str(meta), "list of 10 names"):
        load_split("cifar10", "test", tmp_path)
