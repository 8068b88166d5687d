"""Reliability of the dataset readers: bad input gives ONE line, never a traceback, a hang or unbounded memory.

Two classes of the reliability issue, each tried on every reader (IDX plain and gzipped, CIFAR
pickles, CelebA text files and images, image folders, the mnist-5k CSV, .npz sample files):

* small files that would exhaust memory: lying headers, gzip and zip bombs, memo-shared pickles.
  These run the reader in a child process whose address space is capped (RLIMIT_AS = what it
  uses after imports + a budget), and check the one-line error, the time taken and the growth
  of the peak resident memory;
* files that are not what they claim: FIFOs, sockets and devices named like data files,
  symlink loops, broken links, directories where a file is expected, unreadable or vanished
  files.  These run in-process under a SIGALRM deadline, so a hang fails instead of blocking.
"""

import contextlib
import gzip
import io
import json
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from capsgen.data import load_split
from capsgen.data.cifar import IMAGE_BYTES, read_batch
from capsgen.data.idx import IMAGES_MAGIC, read_idx
from capsgen.data.testing import (
    expect_data_error,
    write_celeba,
    write_cifar10,
    write_idx_dataset,
    write_image_folder,
)
from capsgen.eval.report_metrics import read_samples_npz

REPO = Path(__file__).resolve().parents[1]
MB = 1 << 20


# ----------------------------------------------------------------------------- harness


@contextlib.contextmanager
def deadline(seconds: int = 10):
    """Fail the test, instead of hanging the suite, if the block runs longer than ``seconds``."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: the reader hangs")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def refused(path, *fragments, seconds: int = 10):
    """Both guards at once: a one-line DataError naming ``path`` and ``fragments``, within ``seconds``."""
    stack = contextlib.ExitStack()
    stack.enter_context(deadline(seconds))
    stack.enter_context(expect_data_error(str(path), *fragments))
    return stack


_CHILD = r"""
import json, resource, sys, time
import numpy, PIL.Image, PIL.PngImagePlugin
import capsgen.data, capsgen.data.npz   # not capsgen.eval (torch): seconds to import, nothing to test
from capsgen.data import load_split
from capsgen.errors import CapsgenError

def vm_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

budget, code = int(sys.argv[1]), sys.argv[2]
resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + budget, resource.getrlimit(resource.RLIMIT_AS)[1]))
peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out, start = {}, time.perf_counter()
try:
    exec(code, {"load_split": load_split, "numpy": numpy, "capsgen": capsgen})
    out["result"] = "loaded"
except CapsgenError as exc:
    out["error"] = str(exc)
except BaseException as exc:
    out["crash"] = f"{type(exc).__name__}: {exc}"
out["seconds"] = time.perf_counter() - start
out["peak_growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
print(json.dumps(out))
"""


def run_bounded(code: str, budget_mb: int = 512, timeout: float = 120) -> dict:
    """Run ``code`` in a fresh interpreter whose address space may grow by ``budget_mb`` after
    imports; returns {"error" | "result" | "crash", "seconds", "peak_growth_mb"}.  A segfault or
    an uncaught MemoryError fails here, with the child's stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(budget_mb * MB), code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "crash" not in out, out["crash"]
    return out


def assert_refused_cheaply(out: dict, path, *fragments, max_growth_mb: float = 64, max_seconds: float = 10):
    """The child gave one line naming ``path`` and ``fragments``, quickly and without growing."""
    assert "error" in out, f"expected a DataError, the reader returned data: {out}"
    message = out["error"]
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert out["seconds"] < max_seconds, out
    assert out["peak_growth_mb"] < max_growth_mb, out


def gzip_of_zeros(n: int, head: bytes = b"") -> bytes:
    """gzip of ``head`` + ``n`` zero bytes, built in pieces (a bomb: ~1 KB per MB)."""
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    parts = [z.compress(head)]
    for start in range(0, n, 16 * MB):
        parts.append(z.compress(bytes(min(16 * MB, n - start))))
    return b"".join(parts) + z.flush()


def idx_header(magic: int, *dims: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height greyscale pixels, with one byte of image data:
    opening it costs nothing, decoding it would allocate the whole image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))
    return path


# ----------------------------------------------------------------------------- 6. memory: IDX


def test_idx_gzip_declaring_six_million_images_is_refused_before_reading(tmp_path):
    # The reported case: a small gzip whose header claims 6,000,000 images (4.7 GB).
    write_idx_dataset(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip_of_zeros(64 * MB, head=idx_header(0x803, 6_000_000, 28, 28)))
    assert path.stat().st_size < 1 * MB
    out = run_bounded(f"load_split('mnist', 'train', {str(tmp_path)!r})")
    assert_refused_cheaply(out, path, "(6000000, 28, 28) declare 4.4 GiB", "more than the 1.0 GiB")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_header_within_limits_but_data_missing_costs_what_the_file_holds(tmp_path, gz):
    # 1,000,000 images (784 MB) are plausible, so only the data can refute the header: the
    # reader's memory must follow what the file holds (12 images), not what it declares.
    write_idx_dataset(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    path = tmp_path / name
    raw = idx_header(0x803, 1_000_000, 28, 28) + bytes(12 * 784)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    labels = tmp_path / ("train-labels-idx1-ubyte" + (".gz" if gz else ""))
    lraw = idx_header(0x801, 1_000_000) + bytes(1_000_000)
    labels.write_bytes(gzip.compress(lraw) if gz else lraw)
    out = run_bounded(f"load_split('mnist', 'train', {str(tmp_path)!r})", budget_mb=1024)
    assert_refused_cheaply(out, path, "truncated", f"need {784_000_000} bytes", f"found {12 * 784}")


@pytest.mark.parametrize("name, dims, fragment", [
    ("train-labels-idx1-ubyte.gz", (20_000_000,), "20,000,000 items"),     # beyond the item limit
    ("train-images-idx3-ubyte.gz", (2_000_000, 28, 28), "1.5 GiB of data"),  # beyond the byte limit
])
def test_idx_declared_sizes_over_the_limits(tmp_path, name, dims, fragment):
    write_idx_dataset(tmp_path)
    path = tmp_path / name
    path.write_bytes(gzip_of_zeros(8 * MB, head=idx_header(0x800 | len(dims), *dims)))
    out = run_bounded(f"load_split('fashion-mnist', 'train', {str(tmp_path)!r})")
    assert_refused_cheaply(out, path, fragment, "more than the")


def test_idx_gzip_followed_by_a_bomb_of_garbage(tmp_path):
    # Valid member, then 64 MB of zeros that are not gzip: refused as corrupt without reading on.
    written = write_idx_dataset(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_header(0x803, 12, 28, 28) + written["train"][0].tobytes()) + bytes(64 * MB))
    out = run_bounded(f"load_split('mnist', 'train', {str(tmp_path)!r})")
    assert_refused_cheaply(out, path, "corrupt gzip data", max_growth_mb=32)


def test_idx_plain_file_larger_than_declared_is_refused_unread(tmp_path):
    write_idx_dataset(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    with open(path, "r+b") as f:
        f.truncate(5 << 30)  # sparse: 5 GiB that cost no disk
    out = run_bounded(f"load_split('mnist', 'train', {str(tmp_path)!r})")
    assert_refused_cheaply(out, path, "more data than the header sizes (12, 28, 28) declare", max_growth_mb=16)


@pytest.mark.slow
def test_idx_large_valid_gzip_loads_without_a_second_copy(tmp_path):
    # 1,000,000 blank images (784 MB) really present in a 0.8 MB gzip: a valid file.  It must
    # load in a 1 GiB budget, i.e. be decompressed into one growing buffer, never joined.
    images = tmp_path / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip_of_zeros(784_000_000, head=idx_header(0x803, 1_000_000, 28, 28)))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip_of_zeros(1_000_000, head=idx_header(0x801, 1_000_000)))
    out = run_bounded(f"d = load_split('mnist', 'train', {str(tmp_path)!r}); assert d.images.shape == (1_000_000, 28, 28, 1)",
                      budget_mb=1024, timeout=300)
    assert out["result"] == "loaded", out
    assert out["peak_growth_mb"] < 784 + 200, out


# ----------------------------------------------------------------------------- 6. memory: CIFAR


def _cifar_test_batch(tmp_path, batch: object, protocol: int = 4) -> Path:
    write_cifar10(tmp_path, per_batch=1)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)
    return path


def test_cifar_memo_shared_nested_labels(tmp_path):
    # The reported case: labels whose items are one list shared 1000 x 1000 times.  pickle stores
    # the shared list once (a few KB), numpy.asarray would have multiplied it out to 7.45 GiB.
    inner = [0] * 1000
    shared = [inner] * 1000
    path = _cifar_test_batch(tmp_path, {b"data": np.zeros((1, IMAGE_BYTES), np.uint8), b"labels": [shared]})
    assert path.stat().st_size < 30_000
    out = run_bounded(f"load_split('cifar10', 'test', {str(tmp_path)!r})")
    assert_refused_cheaply(out, path, "'labels' is not a list of integers", "entry 0 is a list")


def test_cifar_memo_shared_labels_of_the_right_length(tmp_path):
    shared = [[0] * 1000] * 1000
    path = _cifar_test_batch(tmp_path, {b"data": np.zeros((50, IMAGE_BYTES), np.uint8), b"labels": [shared] * 50})
    out = run_bounded(f"load_split('cifar10', 'test', {str(tmp_path)!r})")
    assert_refused_cheaply(out, path, "not a list of integers")


def test_cifar_huge_memo_index_is_refused_before_unpickling(tmp_path):
    # LONG_BINPUT 0x3fffffff: CPython's unpickler would size its memo table to 2^31 slots (16 GiB).
    write_cifar10(tmp_path, per_batch=1)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(b"\x80\x02}r\xff\xff\xff\x3f.")
    out = run_bounded(f"load_split('cifar10', 'test', {str(tmp_path)!r})")
    assert_refused_cheaply(out, path, "memo index 1073741823")


def test_cifar_millions_of_tiny_objects_are_refused(tmp_path):
    # Each "]" opcode is one byte and builds a new list (~56 bytes): 64x amplification.
    write_cifar10(tmp_path, per_batch=1)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(b"\x80\x02" + b"]" * 3_000_000 + b".")
    out = run_bounded(f"load_split('cifar10', 'test', {str(tmp_path)!r})")
    assert_refused_cheaply(out, path, "more than 500,000 pickle opcodes")


class _ForgedArray:
    """Pickles like a numpy array, with whatever shape, dtype and data we like."""

    def __init__(self, shape, dtype, raw, reconstruct_shape=(0,), state=True):
        self.args = (shape, dtype, raw, reconstruct_shape, state)

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        shape, dtype, raw, reconstruct_shape, state = self.args
        if not state:
            return (_reconstruct, (np.ndarray, reconstruct_shape, b"b"))
        return (_reconstruct, (np.ndarray, reconstruct_shape, b"b"), (1, shape, np.dtype(dtype), False, raw))


@pytest.mark.parametrize("array, fragment", [
    # numpy's own __setstate__ crashes the interpreter on this one (object dtype, short list).
    (_ForgedArray((10**8,), "O", [1]), "dtype 'O8' is not allowed"),
    (_ForgedArray((10**6, 10**6), "u1", b"abc"), "needs 1000000000000 bytes of data, found 3"),
    (_ForgedArray(None, None, None, reconstruct_shape=(10**5, 10**5), state=False), "not a numpy dtype"),
    (_ForgedArray((2, IMAGE_BYTES), "V3072", bytes(2 * IMAGE_BYTES)), "dtype 'V3072' is not allowed"),
])
def test_cifar_forged_arrays_never_reach_numpy(tmp_path, array, fragment):
    path = _cifar_test_batch(tmp_path, {b"data": array, b"labels": [0]})
    out = run_bounded(f"load_split('cifar10', 'test', {str(tmp_path)!r})")
    assert_refused_cheaply(out, path, fragment)


class _HugeShape:
    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (0,), b"b"), (1, (10**5000,), np.dtype("u1"), False, b""))


@pytest.mark.parametrize("batch, fragment", [
    # str() of an int beyond 4,300 digits raises ValueError: messages must not try it.
    ({b"data": np.zeros((1, IMAGE_BYTES), np.uint8), b"labels": [2**100_000]}, "label a 100001-bit integer"),
    ({b"data": _HugeShape(), b"labels": [0]}, "malformed numpy array shape (a 16610-bit integer)"),
])
def test_cifar_values_too_large_to_print(tmp_path, batch, fragment):
    path = _cifar_test_batch(tmp_path, batch)
    with refused(path, fragment):
        load_split("cifar10", "test", tmp_path)


def test_cifar_oversized_file_is_refused_unread(tmp_path):
    write_cifar10(tmp_path, per_batch=1)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    with open(path, "r+b") as f:
        f.truncate(200 * MB)  # sparse: costs no disk
    out = run_bounded(f"load_split('cifar10', 'train', {str(tmp_path)!r})")
    assert_refused_cheaply(out, path, "200.0 MiB", "64.0 MiB", max_growth_mb=16)


def test_cifar_data_as_bytes_is_accepted(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (2, IMAGE_BYTES), dtype=np.uint8)
    _cifar_test_batch(tmp_path, {b"data": data.tobytes(), b"labels": [3, 4]})
    test = load_split("cifar10", "test", tmp_path)
    np.testing.assert_array_equal(test.images, data.reshape(2, 3, 32, 32).transpose(0, 2, 3, 1))
    assert test.labels.tolist() == [3, 4]


# ----------------------------------------------------------------------------- 6. memory: text, CSV, images


def test_celeba_count_line_claiming_a_trillion_images(tmp_path):
    write_celeba(tmp_path, n=6)
    path = tmp_path / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(["1000000000000"] + lines[1:]) + "\n")
    out = run_bounded(f"load_split('celeba', 'train', {str(tmp_path)!r})")
    assert_refused_cheaply(out, path, "says 1000000000000 images but the file lists 6")


def test_celeba_text_bombs(tmp_path):
    write_celeba(tmp_path, n=6)
    attr = tmp_path / "list_attr_celeba.txt"
    attr.write_bytes(b"6\n" + b"a " * (2 * MB) + b"\n")  # one 4 MB line of 2M tokens
    with refused(attr, "line 2 is longer than 65,536 characters"):
        load_split("celeba", "train", tmp_path)
    attr.write_bytes(gzip_of_zeros(256 * MB))  # text files are gunzipped if they are gzip
    out = run_bounded(f"load_split('celeba', 'train', {str(tmp_path)!r})")
    assert_refused_cheaply(out, attr, "larger than the 64.0 MiB", "once decompressed", max_growth_mb=200)
    write_celeba(tmp_path, n=6, partition=[0] * 6)
    part = tmp_path / "list_eval_partition.txt"
    with open(part, "r+b") as f:
        f.truncate(100 * MB)  # sparse
    out = run_bounded(f"load_split('celeba', 'train', {str(tmp_path)!r})")
    assert_refused_cheaply(out, part, "partition file is larger than the 64.0 MiB", max_growth_mb=100)


def test_mnist_5k_csv_gzip_bomb(tmp_path):
    path = tmp_path / "mnist_5k.csv.gz"
    path.write_bytes(gzip_of_zeros(512 * MB))
    assert path.stat().st_size < 3 * MB
    out = run_bounded(f"load_split('mnist-5k', 'train', {str(tmp_path)!r})")
    assert_refused_cheaply(out, path, "CSV is larger than the 64.0 MiB", max_growth_mb=200, max_seconds=20)


def test_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    (tmp_path / "a").mkdir()
    write_image_folder(tmp_path, classes=["a"], per_class=10, size=4)
    big = png_header(tmp_path / "a" / "img_05.png", 10_000, 10_000)  # 100M pixels, 100 MB decoded
    out = run_bounded(f"load_split('folder', 'train', {str(tmp_path)!r}, image_size=4)")
    assert_refused_cheaply(out, big, "10000x10000", "89,478,485")


def test_folder_too_large_for_memory_is_refused_before_decoding(tmp_path):
    # 11 train images of 6000x6000 (36 MB each, under the pixel limit; 396 MB together) in a
    # 256 MB budget: refused from the headers alone, before a single image is decoded.
    for i in range(12):
        png_header(tmp_path / f"img_{i:02d}.png", 6000, 6000)
    out = run_bounded(f"load_split('folder', 'train', {str(tmp_path)!r})", budget_mb=256)
    assert_refused_cheaply(out, tmp_path, "11 decoded images of 6000x6000x1", "of memory but only")


# ----------------------------------------------------------------------------- 6. memory: .npz samples


def _npz_with_member(path: Path, header_shape, data: bytes, dtype="|u1", compression=zipfile.ZIP_STORED) -> Path:
    header = np.lib.format.header_data_from_array_1_0(np.zeros(0, np.uint8))
    header.update(shape=tuple(header_shape), descr=dtype)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr("images.npy", buf.getvalue() + data)
    return path


@pytest.mark.parametrize("shape, data, fragment", [
    ((10**6, 64, 64, 3), b"", "more than the 2.0 GiB"),               # 12 GB declared
    ((100, 8, 8, 1), bytes(10), "holds 10 bytes of array data"),      # short data
    ((10, 8, 8, 1), bytes(10 * 64 + 5), "needs 640"),                  # trailing data
])
def test_npz_lying_headers(tmp_path, shape, data, fragment):
    path = _npz_with_member(tmp_path / "s.npz", shape, data)
    out = run_bounded(f"capsgen.data.npz.read_npz_array({str(path)!r}, 'images', 'how')")
    assert_refused_cheaply(out, path, fragment)


def test_npz_zip_bomb_is_checked_against_memory(tmp_path):
    # 50,000 blank 64x64 RGB samples: a valid 614 MB array in a 0.6 MB file.  With a 256 MB
    # budget the reader must say so from the header, not die inflating it.
    n = 50_000 * 64 * 64 * 3
    header = np.lib.format.header_data_from_array_1_0(np.zeros(0, np.uint8))
    header.update(shape=(50_000, 64, 64, 3))
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    path = tmp_path / "s.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("images.npy", "w", force_zip64=True) as member:
            member.write(buf.getvalue())
            for _ in range(0, n, 16 * MB):
                member.write(bytes(min(16 * MB, n - _)))
    assert path.stat().st_size < 3 * MB
    out = run_bounded(f"capsgen.data.npz.read_npz_array({str(path)!r}, 'images', 'how')", budget_mb=256)
    assert_refused_cheaply(out, path, "585.9 MiB of memory but only")


def test_npz_other_archive_tricks(tmp_path):
    path = _npz_with_member(tmp_path / "bz.npz", (10, 8, 8, 1), bytes(640), compression=zipfile.ZIP_BZIP2)
    with refused(path, "compression method 12"):
        read_samples_npz(path)
    path = tmp_path / "many.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(100):
            zf.writestr(f"a{i}.npy", b"")
    with refused(path, "lists 100 members"):
        read_samples_npz(path)
    path = tmp_path / "objects.npz"
    np.savez(path, images=np.array([[1], [2]], dtype=object))
    with refused(path, "holds Python objects"):
        read_samples_npz(path)
    path = tmp_path / "crc.npz"
    np.savez(path, images=np.ones((20, 8, 8, 1), np.uint8))
    raw = bytearray(path.read_bytes())
    at = raw.index(b"\x01" * 64)
    raw[at] = 7  # stored member: the data changes, its CRC does not
    path.write_bytes(bytes(raw))
    with refused(path, "Bad CRC-32"):
        read_samples_npz(path)
    np.savez(path, images=np.ones((20, 8, 8, 1), np.uint8))
    path.write_bytes(path.read_bytes()[:-30])
    with refused(path, "not a readable .npz file"):
        read_samples_npz(path)


# ----------------------------------------------------------------------------- 7. not what they claim


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _socket(path: Path) -> Path:
    # bind() takes at most 107 bytes of path: bind in a short folder, then move the socket.
    with tempfile.TemporaryDirectory(dir="/tmp") as short:
        s = socket.socket(socket.AF_UNIX)
        s.bind(os.path.join(short, "s"))
        s.close()
        os.rename(os.path.join(short, "s"), path)
    return path


def _replace_with(path: Path, make) -> Path:
    """Remove the file at ``path`` and put ``make(path)`` there (a FIFO, a directory, a link...)."""
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()
    make(path)
    return path


SPECIALS = {
    "FIFO": (_fifo, "is a FIFO (named pipe), not a regular file"),
    "socket": (_socket, "is a socket, not a regular file"),
    "device": (lambda p: p.symlink_to("/dev/zero"), "is a character device, not a regular file"),
    "directory": (lambda p: p.mkdir(), "is a directory, not a regular file"),
}


_WRITERS = {
    "mnist": lambda d: write_idx_dataset(d),
    "cifar10": lambda d: write_cifar10(d, per_batch=1),
    "celeba": lambda d: write_celeba(d, n=4, partition=[0, 0, 2, 2]),
    "folder": lambda d: write_image_folder(d, classes=None, per_class=10),
    "folder-classes": lambda d: write_image_folder(d, classes=["a", "b"], per_class=10),
    "mnist-5k": lambda d: d.mkdir(parents=True),
}
# (writer, file to replace, split): one file of every kind each reader opens.
_TARGETS = [
    ("mnist", "train-images-idx3-ubyte.gz", "train"),
    ("mnist", "t10k-labels-idx1-ubyte.gz", "test"),
    ("cifar10", "cifar-10-batches-py/data_batch_3", "train"),
    ("cifar10", "cifar-10-batches-py/batches.meta", "test"),
    ("celeba", "list_attr_celeba.txt", "train"),
    ("celeba", "list_eval_partition.txt", "train"),
    ("celeba", "img_align_celeba/000002.png", "train"),
    ("folder", "img_04.png", "train"),
    ("folder-classes", "b/img_09.png", "test"),
    ("mnist-5k", "mnist_5k.csv.gz", "train"),
]


def _datasets(tmp_path: Path):
    """(dataset name, data dir, file to replace, split), each in a fresh copy of its dataset."""
    for i, (writer, target, split) in enumerate(_TARGETS):
        root = tmp_path / f"{i}-{writer}"
        _WRITERS[writer](root)
        yield writer.replace("-classes", ""), root, root / target, split


@pytest.mark.parametrize("special", list(SPECIALS))
def test_special_files_named_like_data_files(tmp_path, special):
    make, fragment = SPECIALS[special]
    for name, root, target, split in _datasets(tmp_path / special):
        if special == "directory" and name == "folder":
            continue  # in a folder dataset a directory is a class or a subfolder, whatever its name
        _replace_with(target, make)
        with refused(target, fragment):
            load_split(name, split, root)
    samples = _replace_with(tmp_path / "samples.npz", make)
    with refused(samples, fragment):
        read_samples_npz(samples)


def test_fifo_in_a_nested_class_folder(tmp_path):
    write_image_folder(tmp_path, classes=["a", "b"], per_class=10)
    (tmp_path / "b" / "deeper").mkdir()
    fifo = _fifo(tmp_path / "b" / "deeper" / "x.PNG")
    with refused(fifo, "FIFO"):
        load_split("folder", "train", tmp_path)
    fifo.rename(tmp_path / "b" / "deeper" / "notes.txt")  # not an image name: never opened
    with deadline():
        assert len(load_split("folder", "train", tmp_path)) == 18


def test_symlink_loops_and_broken_links_in_folders(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to("loop")  # the dataset folder itself
    with refused(loop, "symbolic link loop"):
        load_split("folder", "train", loop)

    flat = tmp_path / "flat"
    write_image_folder(flat, classes=None, per_class=10)
    (flat / "loop1").symlink_to("loop2")  # a loop at the top, not even an image name
    (flat / "loop2").symlink_to("loop1")
    with refused(flat / "loop1", "symbolic link loop"):
        load_split("folder", "train", flat)
    (flat / "loop1").unlink()
    (flat / "loop2").unlink()
    (flat / "self.png").symlink_to("self.png")
    with refused(flat / "self.png", "symbolic link loop"):
        load_split("folder", "train", flat)
    (flat / "self.png").unlink()
    (flat / "gone.png").symlink_to("nowhere.png")
    with refused(flat / "gone.png", "broken symbolic link"):
        load_split("folder", "train", flat)

    classes = tmp_path / "classes"
    write_image_folder(classes, classes=["a", "b"], per_class=10)
    (classes / "a" / "up").symlink_to("..")  # a cycle inside a class
    with refused(classes / "a" / "up", "symbolic link loop"):
        load_split("folder", "train", classes)
    (classes / "a" / "up").unlink()
    (classes / "c").symlink_to(".")  # a class that is the dataset folder itself
    with refused(classes / "c", "symbolic link loop"):
        load_split("folder", "train", classes)
    (classes / "c").unlink()
    (classes / "c").symlink_to("b")  # two classes, one folder
    with refused(classes / "c", "same folder as"):
        load_split("folder", "train", classes)
    (classes / "c").unlink()
    # A symlinked folder that is neither a loop nor read twice is followed.
    write_image_folder(tmp_path / "elsewhere", classes=["x"], per_class=10)
    (classes / "a" / "more").symlink_to(tmp_path / "elsewhere" / "x")
    with deadline():
        assert len(load_split("folder", "train", classes)) == 27


def test_symlink_loops_elsewhere(tmp_path):
    write_idx_dataset(tmp_path / "idx")
    target = _replace_with(tmp_path / "idx" / "train-images-idx3-ubyte.gz", lambda p: p.symlink_to(p.name))
    with refused(target, "symbolic link loop"):
        load_split("mnist", "train", tmp_path / "idx")
    write_celeba(tmp_path / "celeba", n=4)
    image_dir = tmp_path / "celeba" / "img_align_celeba"
    _replace_with(image_dir / "000001.png", lambda p: p.symlink_to(p.name))
    with refused(image_dir / "000001.png", "symbolic link loop"):
        load_split("celeba", "train", tmp_path / "celeba")


def test_folder_nested_too_deep(tmp_path):
    write_image_folder(tmp_path, classes=["a"], per_class=10)
    deep = tmp_path / "a"
    for i in range(40):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    with refused(tmp_path / "a", "nested more than 32 levels"):
        load_split("folder", "train", tmp_path)


def test_directory_where_a_file_or_a_folder_is_expected(tmp_path):
    write_celeba(tmp_path / "celeba", n=4)
    (tmp_path / "celeba" / "img_align_celeba").rename(tmp_path / "celeba" / "moved")
    (tmp_path / "celeba" / "img_align_celeba").write_bytes(b"")
    with refused(tmp_path / "celeba" / "img_align_celeba", "is a regular file, not a directory"):
        load_split("celeba", "train", tmp_path / "celeba")
    fifo = _fifo(tmp_path / "dataset")
    with refused(fifo, "is a FIFO (named pipe), not a directory"):
        load_split("folder", "train", fifo)


def test_files_that_vanish_between_finding_and_reading(tmp_path):
    # The readers find a file, then read it; the file may be gone by then.
    write_idx_dataset(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.unlink()
    with refused(path, "No such file or directory"):
        read_idx(path, IMAGES_MAGIC)
    write_cifar10(tmp_path, per_batch=1)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch.unlink()
    with refused(batch, "not found"):
        read_batch(batch)
    flat = tmp_path / "flat"
    write_image_folder(flat, classes=None, per_class=10)
    from capsgen.data.base import decode_image

    (flat / "img_03.png").unlink()
    with refused(flat / "img_03.png", "No such file or directory"):
        decode_image(flat / "img_03.png", None)


_UNREADABLE = r"""
import os, sys
from pathlib import Path
from capsgen.data import load_split
from capsgen.data.testing import expect_data_error, write_celeba, write_idx_dataset, write_image_folder
def write_all(root):
    write_image_folder(root / "folder", classes=["a", "b"], per_class=10)
    write_idx_dataset(root / "idx")
    write_celeba(root / "celeba", n=4)
    return root

if os.geteuid() == 0:  # root reads everything: drop to "nobody"
    warm = write_all(Path(sys.argv[1]) / "warm-up")  # first, as root, import every module needed
    for name in ("folder", "idx", "celeba"):
        load_split("mnist" if name == "idx" else name, "train", warm / name)
    os.setgroups([]); os.setgid(65534); os.setuid(65534)  # (the interpreter's files are root's)
root = write_all(Path(sys.argv[1]) / "data")
cases = [
    ("folder", root / "folder", root / "folder", "cannot list directory (Permission denied)"),
    ("folder", root / "folder", root / "folder" / "b", "cannot list directory (Permission denied)"),
    ("folder", root / "folder", root / "folder" / "a" / "img_02.png", "cannot open (Permission denied)"),
    ("mnist", root / "idx", root / "idx" / "train-labels-idx1-ubyte.gz", "cannot open (Permission denied)"),
    ("celeba", root / "celeba", root / "celeba" / "img_align_celeba", "cannot list directory (Permission denied)"),
    ("celeba", root / "celeba", root / "celeba" / "list_attr_celeba.txt", "cannot open (Permission denied)"),
]
for name, data_dir, target, fragment in cases:
    mode = target.stat().st_mode
    target.chmod(0)
    with expect_data_error(str(target), fragment):
        load_split(name, "train", data_dir)
    target.chmod(mode)
print("ok")
"""


def test_unreadable_files_and_directories():
    # As root the child drops to user "nobody" before writing its datasets, in a world-writable
    # temporary folder (pytest's own is private to root).
    with tempfile.TemporaryDirectory(prefix="capsgen-unreadable-") as tmp:
        os.chmod(tmp, 0o777)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
        proc = subprocess.run([sys.executable, "-c", _UNREADABLE, tmp], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
