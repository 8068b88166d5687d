"""The in-memory dataset type and the helpers every reader shares.

Readers never trust their input: every problem becomes a :class:`DataError` whose message is
one line, ``"<file>: <what is wrong>"``, so the CLI can print it instead of a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import io
import math
import os
import stat
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from capsgen.errors import DataError

SPLITS = ("train", "test")

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


@dataclass(repr=False)
class ImageData:
    """One split of a dataset, fully decoded.

    ``images`` is uint8 ``[N, H, W, C]`` with C = 1 or 3 (always 4-D); ``labels`` int64 ``[N]``
    class indices or None; ``attributes`` int64 {0, 1} ``[N, A]`` or None.  Arrays may be
    read-only views of a cache shared between calls: copy them before writing into them.
    """

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None
    attributes: np.ndarray | None = None
    attribute_names: list[str] | None = None
    name: str = ""
    split: str = ""

    def __post_init__(self) -> None:
        # These are programming errors in a reader, not bad user input: fail loudly.
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[3] not in (1, 3):
            raise ValueError(f"images must be uint8 [N, H, W, 1|3], got {self.images.dtype} {self.images.shape}")
        if self.labels is not None and (self.labels.dtype != np.int64 or self.labels.shape != (n,)):
            raise ValueError(f"labels must be int64 [{n}], got {self.labels.dtype} {self.labels.shape}")
        if self.attributes is not None and (self.attributes.ndim != 2 or len(self.attributes) != n):
            raise ValueError(f"attributes must be [{n}, A], got {self.attributes.shape}")

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:  # the default repr would print every pixel
        def desc(a: np.ndarray | None) -> str:
            return "None" if a is None else f"{a.dtype}{list(a.shape)}"

        return (f"ImageData(name={self.name!r}, split={self.split!r}, images={desc(self.images)}, "
                f"labels={desc(self.labels)}, classes={self.num_classes}, attributes={desc(self.attributes)})")

    @property
    def num_classes(self) -> int | None:
        """Number of classes, or None for a dataset without class labels."""
        return None if self.class_names is None else len(self.class_names)

    def to_tensors(self) -> tuple["torch.Tensor", "torch.Tensor | None"]:
        """float32 images ``[N, C, H, W]`` in [0, 1] and int64 labels ``[N]`` (or None).

        Always copies, so the tensors are writable even when the arrays are read-only.
        """
        import torch   # here, not at the top: listing datasets (capsgen --help) needs no torch

        x = self.images.transpose(0, 3, 1, 2).astype(np.float32, order="C")
        x /= 255.0
        y = None if self.labels is None else torch.from_numpy(self.labels.astype(np.int64, copy=True))
        return torch.from_numpy(x), y

    def to_batch(self):
        """The whole split as one :class:`~capsgen.data.batch.Batch` (float images, labels, attributes)."""
        import torch

        from capsgen.data.batch import Batch

        x, y = self.to_tensors()
        a = None if self.attributes is None else torch.from_numpy(self.attributes.astype(np.float32))
        return Batch(x, y, a)


# ----------------------------------------------------------------------------- limits

# What a reader accepts before refusing a file as implausible.  Each limit is far above the real
# datasets (sizes in brackets) and far below what would exhaust memory; docs/reliability-data.md
# lists them all.  Format-specific limits live with their reader (idx.py, cifar.py, folder.py).
MAX_TEXT_BYTES = 64 << 20      # a text/CSV file, after gunzip (list_attr_celeba.txt 26.7 MB, mnist_5k.csv 9.1 MB)
MAX_LINE_CHARS = 1 << 16       # one line of it (CelebA rows ~130 characters, mnist-5k rows < 3,200)
MAX_IMAGE_PIXELS = 89_478_485  # one image: Pillow's decompression-bomb threshold (CelebA 178x218)
READ_CHUNK = 1 << 20           # bytes read from disk at a time when streaming
_GUNZIP_CHUNK = 1 << 24        # bytes of gunzipped output produced at a time


# ----------------------------------------------------------------------------- errors


def data_error(path: str | os.PathLike, problem: str) -> DataError:
    """A one-line ``DataError`` ``"<path>: <problem>"`` (newlines in ``problem`` are folded)."""
    return DataError(one_line(f"{os.fspath(path)}: {problem}"))


def one_line(text: object) -> str:
    """Fold whitespace so third-party messages (Pillow, zlib, pickle) stay on one line."""
    return " ".join(str(text).split())


def os_reason(exc: BaseException) -> str:
    """The human part of an OSError ("Permission denied"), else the folded message."""
    if isinstance(exc, OSError) and exc.strerror:
        return "symbolic link loop" if exc.errno == errno.ELOOP else exc.strerror
    return one_line(exc) or type(exc).__name__


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words: "directory", "FIFO (named pipe)", ..."""
    for test, name in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def fmt_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``: sizes in messages (a forged header can declare any number)."""
    if n >= 1 << 70:
        return f"about 2^{n.bit_length() - 1} bytes"
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def brief(value: object, chars: int = 40) -> str:
    """A short, safe rendering of a value read from an untrusted file, for messages.

    Never ``str()`` of a huge int (Python refuses beyond 4,300 digits) or ``repr()`` of a huge
    string or container (it could be gigabytes): long values are cut, containers only named.
    """
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else f"a {value.bit_length()}-bit integer"
    if isinstance(value, (str, bytes, bytearray)):
        return repr(value[:chars]) + ("..." if len(value) > chars else "")
    return f"a {type(value).__name__}"


# ----------------------------------------------------------------------------- paths and files


def stat_path(path: str | os.PathLike) -> os.stat_result | None:
    """``os.stat`` of ``path`` (symlinks followed); None if nothing is there.

    DataError when it exists but cannot be examined: a broken symlink, a symlink loop, a
    directory on the way that may not be searched.  (``Path.is_file`` would say False, or raise.)
    """
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            raise data_error(path, "broken symbolic link (its target does not exist)") from None
        return None
    except OSError as exc:
        raise data_error(path, f"cannot access ({os_reason(exc)})") from None
    except ValueError as exc:  # an embedded NUL byte
        raise data_error(path, f"invalid path ({one_line(exc)})") from None


def require_dir(path: Path, hint: str) -> Path:
    """Return ``path`` if it is a directory, else a DataError ending in ``hint``."""
    st = stat_path(path)
    if st is None:
        raise data_error(path, f"directory not found; {hint}")
    if not stat.S_ISDIR(st.st_mode):
        raise data_error(path, f"is a {file_kind(st.st_mode)}, not a directory; {hint}")
    return path


def require_file(path: Path, hint: str) -> Path:
    """Return ``path`` if it is a regular file, else a DataError ending in ``hint``."""
    st = stat_path(path)
    if st is None:
        raise data_error(path, f"file not found; {hint}")
    if not stat.S_ISREG(st.st_mode):
        raise data_error(path, f"is a {file_kind(st.st_mode)}, not a regular file; {hint}")
    return path


def iter_dir(path: Path) -> Iterator[os.DirEntry]:
    """Entries of a directory, one at a time (unsorted); DataError if it cannot be listed."""
    try:
        entries = os.scandir(path)
    except (OSError, ValueError) as exc:
        raise data_error(path, f"cannot list directory ({os_reason(exc)})") from None
    with entries:
        while True:
            try:
                entry = next(entries)
            except StopIteration:
                return
            except OSError as exc:  # e.g. EIO, or the directory removed while listing
                raise data_error(path, f"cannot list directory ({os_reason(exc)})") from None
            yield entry


def list_dir(path: Path) -> list[os.DirEntry]:
    """Entries of a directory (unsorted); DataError if it cannot be listed."""
    return list(iter_dir(path))


def file_key(path: Path) -> tuple[str, int, int]:
    """Cache key for a file's decoded contents: changes when the file is rewritten."""
    try:
        st = os.stat(path)
        real = os.path.realpath(path)
    except (OSError, ValueError) as exc:  # vanished since it was found, loop, permissions
        raise data_error(path, f"cannot access ({os_reason(exc)})") from None
    return (real, st.st_mtime_ns, st.st_size)


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open a regular file for binary reading; DataError for anything else, without blocking.

    ``O_NONBLOCK`` makes opening a FIFO return at once instead of waiting forever for a writer,
    and ``fstat`` of the opened descriptor then refuses FIFOs, sockets, devices and directories:
    the check is on the very file we read, so nothing can be swapped in between.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except (OSError, ValueError) as exc:
        st = stat_path(path)  # name what is there (a socket refuses open with ENXIO, say)
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise data_error(path, f"is a {file_kind(st.st_mode)}, not a regular file") from None
        raise data_error(path, f"cannot open ({os_reason(exc)})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise data_error(path, f"is a {file_kind(mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except OSError as exc:
        os.close(fd)
        raise data_error(path, f"cannot open ({os_reason(exc)})") from None
    except BaseException:
        os.close(fd)
        raise


def file_size(f: BinaryIO, path: str | os.PathLike) -> int:
    """Size in bytes of the open regular file ``f`` (DataError naming ``path`` on an I/O error)."""
    try:
        return os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise data_error(path, f"cannot read ({os_reason(exc)})") from None


def too_big(size: int, limit: int, what: str) -> str:
    return f"{what} is {fmt_bytes(size)}, more than the {fmt_bytes(limit)} this reader accepts"


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The whole of a regular file, refused (before reading) when it is larger than ``limit`` bytes."""
    with open_regular(path) as f:
        size = file_size(f, path)
        if size > limit:
            raise data_error(path, too_big(size, limit, what))
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise data_error(path, f"cannot read ({os_reason(exc)})") from None
    if len(data) > limit:  # it grew while we read it
        raise data_error(path, too_big(len(data), limit, what))
    return data


class ByteStream:
    """Sequential reads from an open file, gunzipped on the fly when ``gz``.

    Input is read ``READ_CHUNK`` bytes at a time and output made only as far as it is asked for,
    so memory follows what the caller asks for, never what a gzip bomb would expand to.  gzip
    goes through ``zlib.decompressobj`` so that a truncated stream simply ends early
    (:attr:`ended_early`) instead of raising; concatenated gzip members form one stream, as in
    ``gunzip``.  Corrupt gzip data and read errors raise DataError naming ``path``.
    """

    def __init__(self, f: BinaryIO, path: Path, gz: bool | None = None):
        self._f, self.path = f, path
        self._pending = self._read_raw()          # input not yet given to the decompressor
        self.gz = gz if gz is not None else self._pending[:2] == b"\x1f\x8b"
        self._z = zlib.decompressobj(wbits=31) if self.gz else None  # 31: gzip header, CRC checked
        self.ended_early = False                  # the gzip stream stopped before its end marker

    def _read_raw(self) -> bytes:
        try:
            return self._f.read(READ_CHUNK)
        except OSError as exc:
            raise data_error(self.path, f"cannot read ({os_reason(exc)})") from None

    def read_into(self, out: bytearray, n: int) -> int:
        """Append up to ``n`` bytes to ``out``; fewer only at the end of the data.  Returns the count."""
        start = len(out)
        try:
            while (left := n - (len(out) - start)) > 0:
                if not self._pending:
                    self._pending = self._read_raw()
                if self._z is None:
                    if not self._pending:
                        break
                    take = self._pending[:left]
                    out += take
                    self._pending = self._pending[len(take):]
                    continue
                if self._z.eof:
                    rest = self._z.unused_data + self._pending
                    if not rest:
                        break
                    # Another gzip member follows (or garbage, which the new object rejects).
                    self._pending, self._z = rest, zlib.decompressobj(wbits=31)
                    continue
                if not self._pending:  # the file ended inside a gzip member
                    self.ended_early = True
                    break
                out += self._z.decompress(self._pending, min(left, _GUNZIP_CHUNK))
                # At the end of a member, unused_data holds all input after it (unconsumed_tail
                # is then a stale copy of part of it: using both would duplicate data).
                self._pending = b"" if self._z.eof else self._z.unconsumed_tail
        except zlib.error as exc:
            raise data_error(self.path, f"corrupt gzip data ({exc})") from None
        return len(out) - start

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (for small reads such as headers)."""
        out = bytearray()
        self.read_into(out, n)
        return bytes(out)


def read_text(path: Path, what: str, limit: int = MAX_TEXT_BYTES) -> str:
    """An ASCII text file (``what``: "CSV", "attribute file"), gunzipped if it is gzip, at most
    ``limit`` bytes once decompressed: a gzip bomb is cut off there, having cost ``limit`` bytes."""
    with open_regular(path) as f:
        stream = ByteStream(f, path, gz=True if path.suffix == ".gz" else None)
        size = file_size(f, path)
        if not stream.gz and size > limit:  # a plain file's size is known: refuse it unread
            raise data_error(path, f"{what} is larger than the {fmt_bytes(limit)} this reader accepts")
        raw = bytearray()
        if stream.read_into(raw, limit + 1) > limit:
            raise data_error(path, f"{what} is larger than the {fmt_bytes(limit)} this reader accepts"
                                   + (" (once decompressed)" if stream.gz else ""))
        if stream.ended_early:
            raise data_error(path, f"corrupt or unreadable {what} (truncated: the gzip stream ends early)")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise data_error(path, f"{what} is not ASCII text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None


def text_lines(path: Path, text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its newline) for each line; DataError for an absurdly long line."""
    for number, line in enumerate(io.StringIO(text, newline=None), start=1):
        if len(line) > MAX_LINE_CHARS:
            raise data_error(path, f"line {number} is longer than {MAX_LINE_CHARS:,} characters")
        yield number, line.rstrip("\n")


# ----------------------------------------------------------------------------- memory


def memory_budget() -> int | None:
    """Bytes this process can still allocate, or None if unknown.

    The smallest of: ``MemAvailable``, the cgroup's ``memory.max`` headroom (containers) and the
    ``RLIMIT_AS`` headroom (``ulimit -v``).  Read fresh at each call; Linux only, None elsewhere.
    """
    budgets = []
    meminfo = _read_small("/proc/meminfo")
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            budgets.append(int(line.split()[1]) * 1024)
    cg_max, cg_now = _read_small("/sys/fs/cgroup/memory.max").strip(), _read_small("/sys/fs/cgroup/memory.current")
    if cg_max.isdigit() and cg_now.strip().isdigit():
        budgets.append(max(0, int(cg_max) - int(cg_now)))
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            for line in _read_small("/proc/self/status").splitlines():
                if line.startswith("VmSize:"):
                    budgets.append(max(0, soft - int(line.split()[1]) * 1024))
    except (ImportError, ValueError, OSError):
        pass
    return min(budgets) if budgets else None


def _read_small(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(1 << 16)
    except OSError:
        return ""


def check_memory(path: str | os.PathLike, nbytes: int, what: str) -> None:
    """DataError unless ``nbytes`` more bytes fit in :func:`memory_budget`."""
    budget = memory_budget()
    if budget is not None and nbytes > budget:
        raise data_error(path, f"{what} would take {fmt_bytes(nbytes)} of memory but only {fmt_bytes(budget)} "
                               "is available; read fewer or smaller images (limit, image_size)")


def allocate_images(path: str | os.PathLike, shape: tuple[int, int, int, int], what: str) -> np.ndarray:
    """An uninitialised uint8 array of ``shape``, after :func:`check_memory`: a dataset too large
    for this machine fails here, before any decoding, with one line instead of a MemoryError."""
    nbytes = math.prod(shape)
    check_memory(path, nbytes, what)
    try:
        return np.empty(shape, dtype=np.uint8)
    except MemoryError:
        raise data_error(path, f"not enough memory for {what} ({fmt_bytes(nbytes)})") from None


def frozen(array: np.ndarray) -> np.ndarray:
    """Mark a cached array read-only so that no caller can corrupt the cache."""
    array.setflags(write=False)
    return array


# ----------------------------------------------------------------------------- images


@contextlib.contextmanager
def _open_image(path: Path):
    """A Pillow image of the regular file ``path``, its pixel count checked before any decoding."""
    from PIL import Image  # imported here: the IDX/CIFAR paths don't need Pillow

    with open_regular(path) as f:
        # Decoding a file that claims to be an image can fail in many ways inside Pillow (OSError,
        # SyntaxError, ValueError, struct.error, DecompressionBombError, ...): the input is
        # untrusted, so any Exception while decoding means "this file is not a usable image".
        try:
            with warnings.catch_warnings():
                # Pillow only warns between 1x and 2x its limit; we refuse from 1x (below).
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(f)
        except Exception as exc:
            raise data_error(path, f"cannot decode image ({type(exc).__name__}: {exc})") from None
        with img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise data_error(path, f"image is {w}x{h} = {w * h:,} pixels, more than the {MAX_IMAGE_PIXELS:,} "
                                       "allowed (Pillow's decompression-bomb limit)")
            try:
                yield img
            except DataError:
                raise
            except Exception as exc:
                raise data_error(path, f"cannot decode image ({type(exc).__name__}: {exc})") from None


def decode_image(path: Path, size: int | None) -> np.ndarray:
    """Decode one image file to uint8 ``[H, W]`` (greyscale) or ``[H, W, 3]`` (colour).

    With ``size``, the image is centre-cropped to a square and resized to ``size x size``.
    """
    with _open_image(path) as img:
        img.load()
        img = img.convert("L" if img.mode in GREY_MODES else "RGB")
        if size is not None:
            img = crop_resize(img, size)
        return np.asarray(img, dtype=np.uint8)


def probe_image(path: Path) -> tuple[str, tuple[int, int]]:
    """Read only the header of an image: its Pillow mode and (width, height)."""
    with _open_image(path) as img:
        return img.mode, img.size


def crop_resize(img, size: int):
    """Centre-crop a PIL image to a square, then resize it to ``size x size`` (bilinear, antialiased)."""
    from PIL import Image

    w, h = img.size
    side = min(w, h)
    if w != h:
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return img


def resize_images(images: np.ndarray, size: int, where: str | os.PathLike = "images") -> np.ndarray:
    """Resize uint8 ``[N, H, W, C]`` to ``[N, size, size, C]`` (centre crop if not square)."""
    from PIL import Image

    n, h, w, c = images.shape
    if h == w == size:
        return images
    out = allocate_images(where, (n, size, size, c), f"{n} images of {size}x{size}")
    for i in range(n):
        img = Image.fromarray(images[i, :, :, 0] if c == 1 else images[i])
        out[i] = np.asarray(crop_resize(img, size)).reshape(size, size, c)
    return out


def decode_images(paths: Sequence[Path], size: int | None, hw: tuple[int, int], channels: int,
                  where: str | os.PathLike) -> np.ndarray:
    """Decode ``paths`` into one uint8 ``[N, H, W, channels]`` array, ``hw`` = (H, W) known beforehand.

    The output is allocated once, up front (after :func:`check_memory`), and filled image by
    image: no list of arrays to stack, so peak memory is the result plus one image.
    Greyscale images in a colour dataset are repeated across the channels.
    """
    out = allocate_images(where, (len(paths), hw[0], hw[1], channels),
                          f"{len(paths)} decoded images of {hw[1]}x{hw[0]}x{channels}")
    for i, path in enumerate(paths):
        a = decode_image(path, size)
        if a.ndim == 2:
            a = a[:, :, None]
        if a.shape[:2] != hw or a.shape[2] > channels:  # the file changed since its header was read
            raise data_error(path, f"image is now {a.shape[1]}x{a.shape[0]}x{a.shape[2]}, expected "
                                   f"{hw[1]}x{hw[0]}x{channels}; did it change while being read?")
        out[i] = a
    return out


def finish(
    images: np.ndarray,
    labels: np.ndarray | None,
    class_names: list[str] | None,
    *,
    image_size: int | None,
    limit: int | None,
    where: str | os.PathLike = "images",
) -> ImageData:
    """Apply ``limit`` (first N) and ``image_size`` to decoded arrays and wrap them."""
    if limit is not None:
        images = images[:limit]
        labels = None if labels is None else labels[:limit]
    if image_size is not None:
        images = resize_images(images, image_size, where)
    return ImageData(images=images, labels=labels, class_names=class_names)
