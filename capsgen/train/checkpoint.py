"""Atomic, pickle-free, self-checking checkpoints: one safetensors file per checkpoint.

File format (version 2), one safetensors file::

    tensors    module.<module>.<state_dict key>       weights and buffers
               optim.<optimizer>.<param id>.<field>   optimizer state tensors (Adam moments, step)
               rng.torch  uint8 [5056]                torch CPU generator state
               rng.numpy  int64 [624]                 numpy MT19937 key
               extra.<name>                           task state given to save_checkpoint(extras=...)
    metadata   capsgen         JSON {"format": 2, "state": {...}, "optimizers": {...}, "rng": {...}}
               capsgen.sha256  SHA-256 over the capsgen JSON text and every tensor (see _digest)

Why it is safe to load a checkpoint of unknown origin:

- No pickle: safetensors holds raw numbers plus JSON, so loading cannot execute code.
- Bounded parsing: the header and the capsgen JSON are size-limited and their nesting depth is
  measured (vectorised, strings stripped) *before* ``json.loads``, so a hostile file can neither
  exhaust memory nor the stack (a RecursionError is still caught as a second line of defence).
- Validated: the JSON and the tensor names are checked against a hand-written schema
  (:func:`check_meta`) and optimizer groups against the optimizer being loaded, before anything
  reaches torch, numpy or ``random``. Every problem is one CapsgenError line naming the file.
- Checksummed: random bytes inside the tensor data would otherwise load silently and surface
  later as a "diverging" run. The digest hashes each tensor's name, dtype, shape and bytes in
  sorted name order, rather than the raw data section of the file, because (a) it does not depend
  on the order safetensors lays tensors out in, an implementation detail, and (b) it also covers
  the header fields a data-section hash would miss: a bit flip turning "F32" into "I32" keeps every
  offset valid. Offsets themselves are validated by safetensors (they must tile the data section
  exactly) and a swap of two tensors' bytes changes the (name, bytes) pairs, so only the header's
  whitespace padding is outside the digest. The checksum guards against accidents, not forgery:
  the schema, not the digest, is what makes a deliberately crafted file harmless.
- Atomic: one file means one ``os.replace`` makes the whole checkpoint appear at once; a run
  killed mid-write leaves the previous checkpoint intact, and the next write of that file removes
  the dead writer's temp file.

Format 1 files (written before checksums existed) are still read, with the same schema checks but
no checksum to verify; the next save of the run writes format 2.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from capsgen.errors import CapsgenError
from capsgen.train.checkpoint_schema import (MAX_HEADER_BYTES, MAX_META_BYTES, Invalid, bounded_json,
                                              check_meta, is_num, kind, optimizer_of, show)

FORMAT_VERSION = 2
META_KEY, DIGEST_KEY = "capsgen", "capsgen.sha256"
# |w| beyond this is an overflow in progress (float32 ends at 3.4e38; a product of two such
# weights is already inf), so such weights are not "good" even while still finite.
OVERFLOW = 1e30


# ----------------------------------------------------------------------------- atomic writes

_TEMP_SUFFIX = ".tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True   # exists but belongs to someone else, or unknown: keep its file
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove temp files of ``path`` whose writer died between mkstemp and os.replace.

    Temp files are named ``.NAME.<pid>.<8 random>.tmp``; one whose pid is ours (a container
    restarted under the same pid) or belongs to no process is stale. Older pid-less names
    ``.NAME.<8 random>.tmp`` come from capsgen before this scheme and are always stale. A live
    writer's temp file is never touched. Returns the removed paths.
    """
    path = Path(path)
    name = re.escape(path.name)
    pattern = re.compile(rf"\.{name}\.(?:(\d+)\.)?[a-z0-9_]{{8}}{re.escape(_TEMP_SUFFIX)}")
    removed = []
    try:
        entries = os.listdir(path.parent)
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry)
        if m is None:
            continue
        pid = m.group(1)
        if pid is not None and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        try:
            os.unlink(path.parent / entry)
            removed.append(path.parent / entry)
        except OSError:
            pass
    return removed


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def atomic_write_bytes(path: Path, payload: bytes, mode: int = 0o600) -> None:
    """Write ``payload`` to ``path`` so readers see either the old file or the whole new one.

    ``mode`` is the new file's permission bits, applied exactly (``fchmod``, so the umask does not
    narrow or widen it); the default 0o600 keeps run files private. Stale temp files of ``path``
    left by a killed writer are removed first. Any OS failure (unwritable folder, read-only file
    system, disk full) raises a one-line CapsgenError naming the file and the OS reason, and
    leaves the previous file untouched.
    """
    path = Path(path)
    remove_stale_temps(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                                   suffix=_TEMP_SUFFIX)
    except OSError as exc:
        raise CapsgenError(f"{path}: cannot write ({_reason(exc)}); the previous file is unchanged") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)   # rename keeps the inode, so the file gets this mode
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise CapsgenError(f"{path}: cannot write ({_reason(exc)}); "
                               "the previous file is unchanged") from None
        raise
    try:   # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):   # file systems without directory fsync
            raise CapsgenError(f"{path}: written, but its folder could not be synced ({_reason(exc)})") from None


def atomic_write_text(path: Path, text: str, mode: int = 0o600) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)


# ----------------------------------------------------------------------------- save

def _digest(meta_json: str, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the metadata text and each tensor's (name, dtype, shape, bytes), by sorted name.

    Every field is length-prefixed, so no two different checkpoints hash the same byte stream.
    """
    h = hashlib.sha256(b"capsgen checkpoint 2\0")

    def put(data: bytes | np.ndarray) -> None:
        h.update(len(memoryview(data).cast("B")).to_bytes(8, "little"))
        h.update(data)

    put(meta_json.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name]
        put(json.dumps([name, str(t.dtype), list(t.shape)]).encode("utf-8"))
        put(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _own(t: torch.Tensor) -> torch.Tensor:
    # safetensors refuses shared or strided storage; a contiguous copy is always accepted.
    return t.detach().to("cpu").contiguous().clone()


def _rng_state(tensors: dict[str, torch.Tensor]) -> dict:
    tensors["rng.torch"] = torch.get_rng_state()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py = random.getstate()
    return {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "python": [py[0], list(py[1]), py[2]]}


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))


def save_checkpoint(path: Path, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], state: dict[str, Any],
                    extras: dict[str, torch.Tensor] | None = None) -> None:
    """Write modules, optimizers, RNG states, the JSON-able ``state`` and ``extras`` atomically.

    ``state`` needs an integer "step" >= 0; "elapsed" (seconds) and "best" are checked when
    present; other keys are free JSON. ``extras`` holds further task state as tensors (stored as
    "extra.<name>"; :func:`load_checkpoint` gives them back). The checkpoint is validated before it
    is written, so a file this function writes is one :func:`read_checkpoint` accepts.
    """
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"module.{name}.{key}"] = _own(value)
    optim_meta: dict[str, Any] = {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        scalars: dict[str, Any] = {}
        for pid, pstate in sd["state"].items():
            for key, value in pstate.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{name}.{pid}.{key}"] = _own(value)
                else:
                    scalars[f"{pid}.{key}"] = value
        optim_meta[name] = {"param_groups": sd["param_groups"], "scalars": scalars}
    for name, value in (extras or {}).items():
        if not isinstance(name, str) or not name or not torch.is_tensor(value):
            raise TypeError(f"extras must map non-empty names to tensors, got {name!r}: {type(value).__name__}")
        tensors[f"extra.{name}"] = _own(value)
    meta = {"format": FORMAT_VERSION, "state": state, "optimizers": optim_meta,
            "rng": _rng_state(tensors)}
    meta_json = json.dumps(meta)
    try:   # round-trip through the reader's checks: never write a checkpoint we would refuse
        check_meta(bounded_json(meta_json.encode("utf-8"), "metadata", MAX_META_BYTES), tensors)
    except Invalid as exc:
        raise ValueError(f"{path}: refusing to write an unreadable checkpoint: {exc}") from None
    payload = st_save(tensors, metadata={META_KEY: meta_json, DIGEST_KEY: _digest(meta_json, tensors)})
    atomic_write_bytes(path, payload)


# ----------------------------------------------------------------------------- load

def _parse(raw: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and validated metadata of a checkpoint's bytes; raises Invalid."""
    if len(raw) < 8:
        raise Invalid(f"not a readable capsgen checkpoint (only {len(raw)} bytes)")
    n = int.from_bytes(raw[:8], "little")
    if n > MAX_HEADER_BYTES or 8 + n > len(raw):
        raise Invalid(f"not a readable capsgen checkpoint (header of {n} bytes in a file of "
                      f"{len(raw)}: truncated or not safetensors)")
    try:
        header = bounded_json(raw[8:8 + n], "header", MAX_HEADER_BYTES)
    except Invalid as exc:
        raise Invalid(f"not a readable capsgen checkpoint ({exc})") from None
    st_meta = header.get("__metadata__") if type(header) is dict else None
    if type(st_meta) is not dict or type(st_meta.get(META_KEY)) is not str:
        raise Invalid("not a capsgen checkpoint (its safetensors metadata has no 'capsgen' entry)")
    try:
        tensors = st_load(raw)
    except (SafetensorError, ValueError, TypeError, RuntimeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise Invalid(f"not a readable capsgen checkpoint ({first})") from None
    meta_json = st_meta[META_KEY]
    meta = bounded_json(meta_json.encode("utf-8"), "metadata", MAX_META_BYTES)
    if type(meta) is not dict:
        raise Invalid(f"metadata must be a JSON object, got {kind(meta)}")
    if meta.get("format") == FORMAT_VERSION and type(meta.get("format")) is int:
        stored = st_meta.get(DIGEST_KEY)
        if type(stored) is not str:
            raise Invalid("format-2 checkpoint without its checksum: the file is corrupt")
        if stored != _digest(meta_json, tensors):
            raise Invalid("checksum mismatch: the file is corrupt (changed or damaged after it was "
                          "written); restore a copy or delete it")
    check_meta(meta, tensors)
    return tensors, meta


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read and verify a checkpoint's tensors and metadata; one-line CapsgenError for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise CapsgenError(f"{path}: checkpoint not found")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CapsgenError(f"{path}: cannot read the checkpoint ({_reason(exc)})") from None
    try:
        return _parse(raw)
    except Invalid as exc:
        raise CapsgenError(f"{path}: {exc}") from None


def load_modules(tensors: dict[str, torch.Tensor], modules: dict[str, torch.nn.Module], path: Path) -> None:
    for name, module in modules.items():
        prefix = f"module.{name}."
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "shape mismatch"
            raise CapsgenError(f"{path}: weights of '{name}' do not fit this model "
                               f"(was the config changed?): {first}") from None


def _same_kind(saved: Any, current: Any) -> bool:
    """Whether a stored hyper-parameter can stand in for the optimizer's current one."""
    if saved is None or current is None:    # e.g. foreach/fused: None means "let torch choose"
        return type(saved if current is None else current) in (type(None), bool, int, float, str)
    if type(current) in (list, tuple):
        return type(saved) is list and len(saved) == len(current) and all(map(_same_kind, saved, current))
    if type(current) is bool or type(saved) is bool:
        return type(saved) is type(current)
    if isinstance(current, (int, float)):
        return is_num(saved)
    return type(saved) is type(current)


def _load_optimizer(name: str, opt: torch.optim.Optimizer, om: dict,
                    tensors: dict[str, torch.Tensor], names: list[str]) -> None:
    """Check the stored groups against ``opt`` and load them; raises Invalid."""
    current = opt.state_dict()["param_groups"]
    saved = om["param_groups"]
    if [len(g["params"]) for g in saved] != [len(g["params"]) for g in current]:
        raise Invalid(f"optimizer '{name}' has parameter groups of sizes "
                      f"{[len(g['params']) for g in current]}, the checkpoint "
                       f"{[len(g['params']) for g in saved]} (was the config changed?)")
    groups = []
    for i, (s, c) in enumerate(zip(saved, current)):
        if s["params"] != c["params"]:
            raise Invalid(f"optimizer '{name}' group {i}: parameter ids {show(s['params'])} "
                          f"do not match {show(c['params'])}")
        unknown = sorted(set(s) - set(c))
        if unknown:
            raise Invalid(f"optimizer '{name}' group {i} has unknown key(s) {', '.join(map(repr, unknown))}")
        for key, value in s.items():
            if key != "params" and not _same_kind(value, c[key]):
                raise Invalid(f"optimizer '{name}' group {i}: {key} is {show(value)}, "
                              f"expected something like {show(c[key])}")
        # keys a newer torch added are filled from the optimizer as configured now
        groups.append({**c, **s})
    shapes = {pid: p.shape for g, pg in zip(current, opt.param_groups) for pid, p in zip(g["params"], pg["params"])}
    pstates: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        found = optimizer_of(key, names) if key.startswith("optim.") else None
        if found is None or found[0] != name:
            continue
        _, pid, field = found
        # Holds for every torch.optim optimizer capsgen uses (Adam, AdamW, SGD, RMSprop):
        # per-parameter state is either a scalar (step) or shaped like its parameter.
        if value.dim() > 0 and value.shape != shapes[pid]:
            raise Invalid(f"tensor {key} has shape {list(value.shape)}, its parameter {list(shapes[pid])}")
        pstates.setdefault(pid, {})[field] = value
    for key, value in om["scalars"].items():
        pid, field = key.split(".", 1)
        pstates.setdefault(int(pid), {})[field] = value
    try:
        opt.load_state_dict({"state": pstates, "param_groups": groups})
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise Invalid(f"optimizer '{name}' state does not load: {first}") from None


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer] | None = None,
                    restore_rng: bool = True,
                    extras: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; returns its JSON ``state``.

    If ``extras`` is a dict it is updated in place with the stored extra tensors (names without
    the "extra." prefix); entries the checkpoint lacks are left as they are.
    """
    path = Path(path)
    tensors, meta = read_checkpoint(path)
    load_modules(tensors, modules, path)
    names = sorted(meta["optimizers"], key=len, reverse=True)
    for name, opt in (optimizers or {}).items():
        om = meta["optimizers"].get(name)
        if om is None:
            raise CapsgenError(f"{path}: no state for optimizer '{name}'")
        try:
            _load_optimizer(name, opt, om, tensors, names)
        except Invalid as exc:
            raise CapsgenError(f"{path}: {exc}") from None
    if extras is not None:
        extras.update({k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")})
    if restore_rng:
        _set_rng_state(tensors, meta["rng"])
    return meta["state"]


def finite_weights(modules: dict[str, torch.nn.Module]) -> str | None:
    """None if every floating weight and buffer is finite with |w| <= OVERFLOW, else why not (one line).

    The loop calls this before saving, so NaN or overflowing weights never become "the last good
    checkpoint". One reduction (and one host sync) per tensor: max |w| is NaN or inf exactly when
    some entry is.
    """
    for name, module in modules.items():
        for key, t in module.state_dict().items():
            if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
                continue
            peak = float(t.detach().abs().amax())
            if not math.isfinite(peak):
                bad = int((~torch.isfinite(t.detach())).sum())
                return f"weights of '{name}' are not finite ({bad} of {t.numel()} values of {key} are NaN or inf)"
            if peak > OVERFLOW:
                return f"weights of '{name}' overflowed (max |{key}| = {peak:.3g} > {OVERFLOW:g})"
    return None
