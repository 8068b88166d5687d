"""One array from an untrusted ``.npz`` file (``numpy.savez`` / ``savez_compressed``), in bounded memory.

``numpy.load`` trusts the archive: it reads the whole zip directory, allocates the shape an
``.npy`` header declares before reading any data, and decompresses bzip2/lzma members without
an output limit.  :func:`read_npz_array` checks instead, before allocating anything:

* the zip end record: at most :data:`MAX_NPZ_MEMBERS` members and a directory of at most
  :data:`MAX_ZIP_DIRECTORY_BYTES` (a forged directory of millions of entries costs nothing);
* the member: stored or deflated (what numpy writes), at most :data:`MAX_NPZ_ARRAY_BYTES` once
  decompressed, a size zipfile then enforces while inflating, so a zip bomb stops there;
* the ``.npy`` header: version 1 or 2, at most 10,000 characters, no Python objects (pickles
  are never loaded), and a shape whose byte count is exactly the member's declared size;

then reads the data in 16 MiB pieces into one array allocated after a memory-budget check,
and lets zipfile verify the CRC.  Every problem is one-line DataError ``"<file>: <problem>"``.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from capsgen.data.base import check_memory, data_error, fmt_bytes, one_line, open_regular, stat_path
from capsgen.errors import DataError

# A sample file holds one or two arrays; 50,000 64x64 RGB samples are 614 MB.
MAX_NPZ_MEMBERS = 64
MAX_ZIP_DIRECTORY_BYTES = 1 << 20
MAX_NPZ_ARRAY_BYTES = 1 << 31
MAX_NPY_HEADER = 10_000  # numpy's own default for max_header_size
_PIECE = 1 << 24
_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"


def _check_directory(path: Path, fh) -> None:
    """Read the zip end record the way zipfile finds it, and bound the directory it announces."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    tail_len = min(size, 22 + 0xFFFF)  # the end record, plus a comment of at most 64 KiB
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    at = len(tail) - 22 if tail[-22:-18] == _EOCD else tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < 22:
        raise data_error(path, "not a readable .npz file (no zip end record: truncated?)")
    entries, directory_bytes = struct.unpack("<HI", tail[at + 10: at + 16])
    if at >= 20 and tail[at - 20: at - 16] == _ZIP64_LOCATOR or entries == 0xFFFF:
        raise data_error(path, "a zip64 archive (more than 65,535 members or 4 GiB); "
                               "sample files this large are not supported")
    if entries > MAX_NPZ_MEMBERS:
        raise data_error(path, f"the archive lists {entries:,} members; an .npz of samples has a few "
                               f"(at most {MAX_NPZ_MEMBERS})")
    if directory_bytes > MAX_ZIP_DIRECTORY_BYTES:
        raise data_error(path, f"the zip directory is {fmt_bytes(directory_bytes)}, more than the "
                               f"{fmt_bytes(MAX_ZIP_DIRECTORY_BYTES)} this reader accepts")
    fh.seek(0)


def _read_header(path: Path, fp, member: str) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """(dtype, shape, fortran_order, header length) of the .npy member open in ``fp``."""
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=MAX_NPY_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=MAX_NPY_HEADER)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError) as exc:
        raise data_error(path, f"member {member} is not a readable .npy array ({one_line(exc)})") from None
    if dtype.hasobject:
        raise data_error(path, f"member {member} holds Python objects (a pickle), which are never loaded")
    return dtype, tuple(shape), bool(fortran), fp.tell()


def read_npz_array(
    path: str | os.PathLike, key: str, how: str,
    check: Callable[[np.dtype, tuple[int, ...]], None] | None = None,
) -> np.ndarray:
    """The array ``key`` of the .npz file ``path`` (see the module docstring for what is checked).

    ``how`` ends the messages about a file that is not an .npz of ``key`` ("save them with ...").
    ``check(dtype, shape)`` may raise to refuse the array from its header alone, before any of
    its data is read.  The result is a fresh writable array.
    """
    path = Path(path)
    if stat_path(path) is None:
        raise data_error(path, "file not found")
    with open_regular(path) as fh:
        magic = fh.read(6)
        if magic == b"\x93NUMPY":
            raise data_error(path, f"a single .npy array, not an .npz archive; {how}")
        if not magic.startswith(b"PK"):  # .npz files are zip archives of .npy arrays
            raise data_error(path, f"not an .npz archive (no zip header); {how}")
        try:
            _check_directory(path, fh)
            with zipfile.ZipFile(fh) as zf:
                infos = {i.filename: i for i in zf.infolist()}
                info = infos.get(f"{key}.npy") or infos.get(key)
                if info is None:
                    found = ", ".join(n[:-4] if n.endswith(".npy") else n for n in infos) or "nothing"
                    raise data_error(path, f"no array named {key!r} (found: {found}); {how}")
                return _read_member(path, zf, info, check)
        except DataError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, NotImplementedError,
                RuntimeError, struct.error) as exc:
            why = one_line(exc) or type(exc).__name__
            raise data_error(path, f"not a readable .npz file ({why})") from None


def _read_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo,
                 check: Callable[[np.dtype, tuple[int, ...]], None] | None) -> np.ndarray:
    name = info.filename
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise data_error(path, f"member {name} uses zip compression method {info.compress_type}; "
                               "only numpy.savez (stored) and savez_compressed (deflated) files are read")
    if info.file_size > MAX_NPZ_ARRAY_BYTES + MAX_NPY_HEADER + 16:
        raise data_error(path, f"member {name} is {fmt_bytes(info.file_size)} once decompressed, more than "
                               f"the {fmt_bytes(MAX_NPZ_ARRAY_BYTES)} this reader accepts")
    with zf.open(info) as fp:
        dtype, shape, fortran, header = _read_header(path, fp, name)
        if any(d < 0 for d in shape):
            raise data_error(path, f"member {name} has a negative size in its shape {list(shape)}")
        if check is not None:
            check(dtype, shape)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > MAX_NPZ_ARRAY_BYTES:
            raise data_error(path, f"member {name} declares shape {list(shape)} ({fmt_bytes(nbytes)}), more than "
                                   f"the {fmt_bytes(MAX_NPZ_ARRAY_BYTES)} this reader accepts")
        if info.file_size - header != nbytes:
            raise data_error(path, f"member {name} holds {info.file_size - header} bytes of array data but its "
                                   f"header's shape {list(shape)} of {dtype} needs {nbytes}")
        check_memory(path, nbytes, f"the array {name}")
        flat = np.empty(nbytes, dtype=np.uint8)
        view, done = memoryview(flat), 0
        while done < nbytes:
            piece = fp.read(min(_PIECE, nbytes - done))
            if not piece:
                raise data_error(path, f"member {name} is truncated: {done} of {nbytes} bytes of array data")
            view[done: done + len(piece)] = piece
            done += len(piece)
        if fp.read(1):  # also makes zipfile check the CRC of the whole member
            raise data_error(path, f"member {name} holds more data than its header declares")
    return flat.view(dtype).reshape(shape, order="F" if fortran else "C")
