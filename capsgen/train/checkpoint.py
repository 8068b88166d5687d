"""Atomic, pickle-free checkpoints: one safetensors file per checkpoint.

Tensors (module weights, optimizer moments, the torch/numpy RNG states) go into the
safetensors body; everything else (step, optimizer hyper-parameters, Python RNG state,
counters) is JSON stored in the file's metadata under the key ``capsgen``. One file means one
``os.replace`` makes the whole checkpoint appear at once: a run killed mid-write leaves the
previous checkpoint intact, and loading a downloaded checkpoint cannot execute code.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from capsgen.errors import CapsgenError

FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so readers see either the old file or the whole new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


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
                    optimizers: dict[str, torch.optim.Optimizer], state: dict[str, Any]) -> None:
    """Write modules, optimizers, RNG states and the JSON-able ``state`` atomically to ``path``."""
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
    meta = {"format": FORMAT_VERSION, "state": state, "optimizers": optim_meta,
            "rng": _rng_state(tensors)}
    payload = st_save(tensors, metadata={"capsgen": json.dumps(meta)})
    atomic_write_bytes(path, payload)


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint's tensors and metadata, with a one-line error for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise CapsgenError(f"{path}: checkpoint not found")
    try:
        with open(path, "rb") as fh:
            tensors = st_load(fh.read())
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["capsgen"])
    except (SafetensorError, KeyError, ValueError, OSError) as exc:
        raise CapsgenError(f"{path}: not a readable capsgen checkpoint ({exc})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise CapsgenError(f"{path}: checkpoint format {meta.get('format')} is not {FORMAT_VERSION}")
    return tensors, meta


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


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer] | None = None,
                    restore_rng: bool = True) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; returns its JSON ``state``."""
    tensors, meta = read_checkpoint(path)
    load_modules(tensors, modules, path)
    for name, opt in (optimizers or {}).items():
        om = meta["optimizers"].get(name)
        if om is None:
            raise CapsgenError(f"{path}: no state for optimizer '{name}'")
        prefix = f"optim.{name}."
        pstates: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith(prefix):
                pid, field = key[len(prefix):].split(".", 1)
                pstates.setdefault(int(pid), {})[field] = value
        for key, value in om["scalars"].items():
            pid, field = key.split(".", 1)
            pstates.setdefault(int(pid), {})[field] = value
        opt.load_state_dict({"state": pstates, "param_groups": om["param_groups"]})
    if restore_rng:
        _set_rng_state(tensors, meta["rng"])
    return meta["state"]
