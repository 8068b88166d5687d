"""The schema of a checkpoint's metadata, checked before anything in it is used.

A hand-written validator (no dependency): exact JSON types for every field of the format-1/2
metadata described in :mod:`capsgen.train.checkpoint`, plus size and nesting limits applied
before ``json.loads`` runs. Each problem is raised as :class:`Invalid` with a one-line
description; the checkpoint reader prefixes the file name and turns it into a CapsgenError.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import torch

READABLE_FORMATS = (1, 2)
# A real checkpoint's capsgen JSON is ~12 KB (7 KB of it the Python RNG state) and nests 5 deep
# (optimizers.<name>.param_groups[i].betas); the header adds ~100 bytes per tensor.
MAX_META_BYTES = 4 << 20
MAX_HEADER_BYTES = 16 << 20
MAX_DEPTH = 20

# ----------------------------------------------------------------------------- bounded JSON

class Invalid(Exception):
    """A problem with a checkpoint's contents; read_checkpoint prefixes the file name."""


# A JSON string literal, unrolled so the regex engine does not backtrack per character.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)


def json_depth(text: bytes) -> int:
    """Deepest nesting of ``[``/``{`` in the JSON ``text``, brackets inside strings ignored."""
    skeleton = np.frombuffer(_JSON_STRING.sub(b"", text), dtype=np.uint8)
    step = ((skeleton == ord("[")) | (skeleton == ord("{"))).astype(np.int64)
    step -= (skeleton == ord("]")) | (skeleton == ord("}"))
    return int(np.cumsum(step).max(initial=0))


def bounded_json(text: bytes, what: str, limit: int) -> Any:
    if len(text) > limit:
        raise Invalid(f"{what} is {len(text) / 2**20:.1f} MiB, more than the {limit >> 20} MiB limit")
    depth = json_depth(text)
    if depth > MAX_DEPTH:
        raise Invalid(f"{what} nests {depth} deep, more than the limit of {MAX_DEPTH}")
    try:
        return json.loads(text)
    except RecursionError:
        raise Invalid(f"{what} nests too deep") from None
    except (ValueError, UnicodeDecodeError) as exc:   # JSONDecodeError is a ValueError
        raise Invalid(f"{what} is not JSON ({exc})") from None


# ----------------------------------------------------------------------------- schema

def kind(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            list: "a JSON list", dict: "a JSON object"}.get(type(v), type(v).__name__)


def show(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def is_int(v: Any) -> bool:
    return type(v) is int          # bool is an int subclass; JSON true is not a step


def is_num(v: Any) -> bool:
    return type(v) in (int, float)


def _obj(v: Any, where: str, required: tuple[str, ...] = (), optional: tuple[str, ...] = (),
         open_: bool = False) -> dict:
    if type(v) is not dict:
        raise Invalid(f"{where} must be a JSON object, got {kind(v)}")
    missing = [k for k in required if k not in v]
    if missing:
        raise Invalid(f"{where} lacks {', '.join(map(repr, missing))}")
    unknown = sorted(set(v) - set(required) - set(optional))
    if unknown and not open_:
        raise Invalid(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}")
    return v


def _int_in(v: Any, where: str, lo: int, hi: int) -> int:
    if not is_int(v) or not lo <= v <= hi:
        raise Invalid(f"{where} must be an integer in [{lo}, {hi}], got {show(v)} ({kind(v)})")
    return v


def _check_state(state: Any) -> None:
    _obj(state, "state", ("step",), open_=True)   # tasks may keep more JSON here
    _int_in(state["step"], "state.step", 0, 2**62)
    if "elapsed" in state:
        e = state["elapsed"]
        if not is_num(e) or not math.isfinite(e) or e < 0:
            raise Invalid(f"state.elapsed must be a number of seconds >= 0, got {show(e)} ({kind(e)})")
    if "best" in state and state["best"] is not None and not is_num(state["best"]):
        b = state["best"]
        raise Invalid(f"state.best must be a number or null, got {show(b)} ({kind(b)})")


def _hyper(v: Any, where: str) -> None:
    """An optimizer hyper-parameter: null, bool, finite number, string, or a short list of those."""
    items = v if type(v) is list and len(v) <= 16 else [v]
    for x in items:
        if x is None or type(x) in (bool, str):
            continue
        if not is_num(x) or not math.isfinite(x):
            raise Invalid(f"{where} must be a finite number, bool, string or null, got {show(v)} ({kind(v)})")


def _check_optimizers(optimizers: Any) -> None:
    _obj(optimizers, "optimizers", open_=True)
    for name, om in optimizers.items():
        where = f"optimizers.{name}"
        _obj(om, where, ("param_groups", "scalars"))
        groups = om["param_groups"]
        if type(groups) is not list or not groups:
            raise Invalid(f"{where}.param_groups must be a non-empty JSON list, got {kind(groups)}")
        seen: set[int] = set()
        for i, g in enumerate(groups):
            gw = f"{where}.param_groups[{i}]"
            _obj(g, gw, ("params",), open_=True)
            ids = g["params"]
            if type(ids) is not list or not all(is_int(p) and p >= 0 for p in ids):
                raise Invalid(f"{gw}.params must be a list of parameter ids (integers >= 0)")
            if seen.intersection(ids) or len(set(ids)) != len(ids):
                raise Invalid(f"{gw}.params repeats a parameter id")
            seen.update(ids)
            for key, value in g.items():
                if key != "params":
                    _hyper(value, f"{gw}.{key}")
        _obj(om["scalars"], f"{where}.scalars", open_=True)
        for key, value in om["scalars"].items():
            pid, _, field = key.partition(".")
            if not (pid.isdigit() and int(pid) in seen and field):
                raise Invalid(f"{where}.scalars has key {show(key)}, not '<parameter id>.<field>'")
            if not (value is None or type(value) in (bool, str) or (is_num(value) and math.isfinite(value))):
                raise Invalid(f"{where}.scalars.{key} must be a finite number, bool, string or null")


def _check_rng(rng: Any, tensors: dict[str, torch.Tensor]) -> None:
    _obj(rng, "rng", ("numpy", "python"))
    npm, py = rng["numpy"], rng["python"]
    if type(npm) is not list or len(npm) != 4:
        raise Invalid(f"rng.numpy must be [kind, pos, has_gauss, cached_gaussian], got {kind(npm)}")
    if npm[0] != "MT19937":
        raise Invalid(f"rng.numpy kind must be 'MT19937', got {show(npm[0])}")
    _int_in(npm[1], "rng.numpy pos", 0, 624)
    _int_in(npm[2], "rng.numpy has_gauss", 0, 1)
    if not is_num(npm[3]):
        raise Invalid(f"rng.numpy cached_gaussian must be a number, got {kind(npm[3])}")
    if type(py) is not list or len(py) != 3:
        raise Invalid(f"rng.python must be [version, state, gauss_next], got {kind(py)}")
    _int_in(py[0], "rng.python version", 0, 2**31)
    words = py[1]
    if type(words) is not list or len(words) != 625 or not all(is_int(w) and 0 <= w < 2**32 for w in words):
        raise Invalid("rng.python state must be a list of 625 integers in [0, 2**32)")
    _int_in(words[-1], "rng.python state index", 0, 624)
    if py[2] is not None and not is_num(py[2]):
        raise Invalid(f"rng.python gauss_next must be a number or null, got {kind(py[2])}")
    t = tensors.get("rng.torch")
    n_torch = torch.get_rng_state().numel()
    if t is None or t.dtype != torch.uint8 or tuple(t.shape) != (n_torch,):
        raise Invalid(f"tensor rng.torch must be uint8 [{n_torch}], got "
                      f"{'nothing' if t is None else f'{t.dtype} {list(t.shape)}'}")
    t = tensors.get("rng.numpy")
    if t is None or t.dtype != torch.int64 or tuple(t.shape) != (624,):
        raise Invalid("tensor rng.numpy must be int64 [624], got "
                      f"{'nothing' if t is None else f'{t.dtype} {list(t.shape)}'}")
    if int(t.min()) < 0 or int(t.max()) >= 2**32:
        raise Invalid("tensor rng.numpy holds values outside [0, 2**32)")


def optimizer_of(key: str, names: list[str]) -> tuple[str, int, str] | None:
    """Split 'optim.<name>.<pid>.<field>' using the known names (longest first: names may hold dots)."""
    for name in names:
        prefix = f"optim.{name}."
        if key.startswith(prefix):
            pid, _, field = key[len(prefix):].partition(".")
            if pid.isdigit() and field:
                return name, int(pid), field
    return None


def check_meta(meta: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Raise Invalid with a one-line problem unless ``meta`` and the tensor names fit format 1/2."""
    _obj(meta, "metadata", ("format", "state", "optimizers", "rng"))
    if not is_int(meta["format"]) or meta["format"] not in READABLE_FORMATS:
        raise Invalid(f"checkpoint format {show(meta['format'])} is not one this capsgen reads "
                      f"({', '.join(map(str, READABLE_FORMATS))}); use a matching capsgen version")
    _check_state(meta["state"])
    _check_optimizers(meta["optimizers"])
    _check_rng(meta["rng"], tensors)
    names = sorted(meta["optimizers"], key=len, reverse=True)
    for key in tensors:
        if key in ("rng.torch", "rng.numpy"):
            continue
        if key.startswith("optim."):
            found = optimizer_of(key, names)
            if found is None:
                raise Invalid(f"tensor {show(key)} names no optimizer of the metadata")
            name, pid, _ = found
            if not any(pid in g["params"] for g in meta["optimizers"][name]["param_groups"]):
                raise Invalid(f"tensor {show(key)} is for parameter {pid}, which optimizer '{name}' lacks")
        elif not (key.startswith(("module.", "extra.")) and key.split(".", 1)[1]):
            raise Invalid(f"unexpected tensor {show(key)}")
