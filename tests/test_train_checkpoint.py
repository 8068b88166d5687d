"""Checkpoints: round trip, schema validation, checksum, atomic writes and their failure modes."""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from capsgen.errors import CapsgenError
from capsgen.train import checkpoint as ckpt
from capsgen.train.checkpoint import (atomic_write_bytes, finite_weights, load_checkpoint,
                                      read_checkpoint, remove_stale_temps, save_checkpoint)
from capsgen.train.checkpoint_schema import MAX_DEPTH, json_depth


def tiny(seed: int = 0, groups: int = 1) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A two-layer net and an Adam that has taken one step (so it has moments and a step count)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    params = list(model.parameters())
    spec = [{"params": params}] if groups == 1 else [{"params": params[:2]}, {"params": params[2:], "lr": 1e-3}]
    opt = torch.optim.Adam(spec, lr=1e-2)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    return model, opt


def one_line_error(path: Path, call, match: str) -> str:
    """Run ``call``; it must raise a one-line CapsgenError that names ``path`` and contains ``match``."""
    with pytest.raises(CapsgenError) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path)) and match in msg, msg
    return msg


def parts(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The raw tensors and capsgen JSON text of a checkpoint, bypassing every check."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return st_load(raw), json.loads(raw[8:8 + n])["__metadata__"]["capsgen"]


def rewrite(path: Path, tensors: dict[str, torch.Tensor], meta_json: str, digest: bool = True) -> None:
    """Write a checkpoint with this exact metadata text and a *correct* checksum, so the schema
    (not the checksum) is what a test of malformed metadata exercises."""
    md = {"capsgen": meta_json}
    if digest:
        md["capsgen.sha256"] = ckpt._digest(meta_json, tensors)
    path.write_bytes(st_save(tensors, metadata=md))


@pytest.fixture
def saved(tmp_path) -> Path:
    model, opt = tiny()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"m": model}, {"m": opt}, {"step": 7, "elapsed": 1.5, "best": None})
    return path


# ----------------------------------------------------------------------------- round trip

def test_round_trip_restores_weights_optimizer_rng_and_extras(tmp_path):
    model, opt = tiny(0)
    path = tmp_path / "c.safetensors"
    extras = {"ema": torch.randn(4, 3), "counts": torch.arange(5), "flag": torch.tensor(True)}
    state = {"step": 7, "elapsed": 12.5, "best": 0.25, "notes": {"phase": "warmup", "k": [1, 2]}}
    random.seed(1)
    np.random.seed(2)
    np.random.randn(1)   # leave a cached Gaussian in numpy's state
    save_checkpoint(path, {"m": model}, {"m": opt}, state, extras=extras)
    expect = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], np.random.randn(2))

    model2, opt2 = tiny(1)
    got: dict[str, torch.Tensor] = {"keep": torch.zeros(1)}
    assert load_checkpoint(path, {"m": model2}, {"m": opt2}, extras=got) == state
    assert (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], np.random.randn(2)).__repr__() \
        == expect.__repr__()
    assert set(got) == {"keep", "ema", "counts", "flag"}
    for k, v in extras.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v)
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k]), k
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == [dict(g, betas=tuple(g["betas"])) for g in s2["param_groups"]]
    for pid in s1["state"]:
        for k in s1["state"][pid]:
            assert torch.equal(torch.as_tensor(s1["state"][pid][k]), torch.as_tensor(s2["state"][pid][k]))
    # the restored optimizer keeps training exactly like the original
    for m, o in ((model, opt), (model2, opt2)):
        torch.manual_seed(5)
        o.zero_grad()
        m(torch.randn(5, 3)).pow(2).sum().backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    raw = path.read_bytes()
    assert raw[8:9] == b"{" and b"\x80\x04" not in raw[:16]   # safetensors, not a pickle


def test_extras_and_rng_are_optional_and_names_are_checked(saved, tmp_path):
    model, _ = tiny(1)
    torch.manual_seed(123)
    expect = torch.rand(2)
    torch.manual_seed(123)
    load_checkpoint(saved, {"m": model}, restore_rng=False)   # no optimizer, RNG untouched
    assert torch.equal(torch.rand(2), expect)
    with pytest.raises(TypeError, match="extras"):
        save_checkpoint(tmp_path / "x.safetensors", {"m": model}, {}, {"step": 0}, extras={"a": [1, 2]})
    assert not (tmp_path / "x.safetensors").exists()


def test_multi_group_optimizer_round_trip(tmp_path):
    model, opt = tiny(0, groups=2)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"m": model}, {"m": opt}, {"step": 1})
    model2, opt2 = tiny(1, groups=2)
    load_checkpoint(path, {"m": model2}, {"m": opt2})
    assert [g["lr"] for g in opt2.param_groups] == [1e-2, 1e-3]


def test_format_1_files_are_still_read(saved):
    """Checkpoints written before checksums existed load (schema-checked, no checksum to verify)."""
    tensors, meta_json = parts(saved)
    meta = json.loads(meta_json)
    meta["format"] = 1
    rewrite(saved, tensors, json.dumps(meta), digest=False)
    model, opt = tiny(1)
    assert load_checkpoint(saved, {"m": model}, {"m": opt})["step"] == 7
    assert torch.equal(model[0].weight, tensors["module.m.0.weight"])


def test_save_refuses_to_write_what_it_could_not_read(tmp_path):
    model, opt = tiny()
    path = tmp_path / "c.safetensors"
    for state in ({"elapsed": 1.0}, {"step": -1}, {"step": 1.0}, {"step": 1, "elapsed": -2.0}):
        with pytest.raises(ValueError, match="refusing to write"):
            save_checkpoint(path, {"m": model}, {"m": opt}, state)
    deep: list = []
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(ValueError, match="nests"):
        save_checkpoint(path, {"m": model}, {"m": opt}, {"step": 1, "deep": deep})
    assert not path.exists() and not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- malformed metadata

def _deep(meta: dict, depth: int) -> str:
    meta["state"]["deep"] = "@@"
    return json.dumps(meta).replace('"@@"', "[" * depth + "]" * depth)


def _set(path: tuple, value):
    def mutate(meta: dict):
        node = meta
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return meta
    return mutate


def _drop(path: tuple):
    def mutate(meta: dict):
        node = meta
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
        return meta
    return mutate


MALFORMED = {
    "json list": (lambda m: [m], "metadata must be a JSON object, got a JSON list"),
    "not json": (lambda m: json.dumps(m)[:-3], "metadata is not JSON"),
    "not utf8-json": (lambda m: "\x00\x01garbage", "metadata is not JSON"),
    "missing state": (_drop(("state",)), "metadata lacks 'state'"),
    "missing rng": (_drop(("rng",)), "metadata lacks 'rng'"),
    "missing step": (_drop(("state", "step")), "state lacks 'step'"),
    "unknown top key": (_set(("extra",), 1), "unknown key(s) 'extra'"),
    "deep nesting 25": (lambda m: _deep(m, 25), f"more than the limit of {MAX_DEPTH}"),
    "deep nesting 100000": (lambda m: _deep(m, 100_000), f"more than the limit of {MAX_DEPTH}"),
    "huge": (_set(("state", "blob"), "x" * (5 << 20)), "MiB limit"),
    "format string": (_set(("format",), "2"), "format '2' is not one this capsgen reads"),
    "format 99": (_set(("format",), 99), "format 99 is not one this capsgen reads"),
    "state list": (_set(("state",), [7]), "state must be a JSON object, got a JSON list"),
    "step string": (_set(("state", "step"), "7"), "state.step must be an integer"),
    "step negative": (_set(("state", "step"), -3), "state.step must be an integer"),
    "step float": (_set(("state", "step"), 7.5), "state.step must be an integer"),
    "step bool": (_set(("state", "step"), True), "state.step must be an integer"),
    "elapsed negative": (_set(("state", "elapsed"), -1.0), "state.elapsed must be"),
    "elapsed string": (_set(("state", "elapsed"), "1s"), "state.elapsed must be"),
    "best string": (_set(("state", "best"), "high"), "state.best must be a number or null"),
    "rng not object": (_set(("rng",), [1, 2]), "rng must be a JSON object"),
    "numpy rng short": (_set(("rng", "numpy"), ["MT19937", 0, 0]), "rng.numpy must be [kind"),
    "numpy rng kind": (_set(("rng", "numpy", 0), "PCG64"), "rng.numpy kind must be 'MT19937'"),
    "numpy rng pos": (_set(("rng", "numpy", 1), 9999), "rng.numpy pos must be an integer in [0, 624]"),
    "numpy gauss string": (_set(("rng", "numpy", 3), "0"), "cached_gaussian must be a number"),
    "python rng 624 words": (lambda m: _set(("rng", "python", 1), m["rng"]["python"][1][:624])(m),
                             "rng.python state must be a list of 625"),
    "python rng word too big": (_set(("rng", "python", 1, 3), 2**40), "rng.python state must be a list of 625"),
    "python rng index": (_set(("rng", "python", 1, 624), 700), "rng.python state index"),
    "python gauss string": (_set(("rng", "python", 2), "x"), "gauss_next must be a number or null"),
    "optimizers list": (_set(("optimizers",), []), "optimizers must be a JSON object"),
    "optimizer missing groups": (_drop(("optimizers", "m", "param_groups")), "lacks 'param_groups'"),
    "param_groups dict": (_set(("optimizers", "m", "param_groups"), {"params": [0]}),
                          "param_groups must be a non-empty JSON list"),
    "param group not object": (_set(("optimizers", "m", "param_groups", 0), 3), "param_groups[0] must be a JSON object"),
    "params strings": (_set(("optimizers", "m", "param_groups", 0, "params"), ["a"]), "list of parameter ids"),
    "params repeated": (_set(("optimizers", "m", "param_groups", 0, "params"), [0, 0, 1, 2, 3, 4, 5]),
                        "repeats a parameter id"),
    "lr string": (_set(("optimizers", "m", "param_groups", 0, "lr"), "fast"), "lr is 'fast', expected something like 0.01"),
    "lr nan": (_set(("optimizers", "m", "param_groups", 0, "lr"), float("nan")), "lr must be a finite number"),
    "scalars bad key": (_set(("optimizers", "m", "scalars", "x.step"), 1), "not '<parameter id>.<field>'"),
    "scalars nested": (_set(("optimizers", "m", "scalars", "0.step"), [1]), "must be a finite number"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_metadata_is_one_line(saved, case):
    mutate, match = MALFORMED[case]
    tensors, meta_json = parts(saved)
    out = mutate(json.loads(meta_json))
    rewrite(saved, tensors, out if isinstance(out, str) else json.dumps(out))
    model, opt = tiny(1)
    one_line_error(saved, lambda: load_checkpoint(saved, {"m": model}, {"m": opt}), match)


MALFORMED_TENSORS = {
    "torch rng missing": (lambda t: t.pop("rng.torch"), "rng.torch must be uint8 [5056], got nothing"),
    "torch rng float": (lambda t: t.update({"rng.torch": t["rng.torch"].float()}), "rng.torch must be uint8"),
    "torch rng short": (lambda t: t.update({"rng.torch": t["rng.torch"][:100]}), "rng.torch must be uint8"),
    "numpy rng shape": (lambda t: t.update({"rng.numpy": t["rng.numpy"][:10]}), "rng.numpy must be int64 [624]"),
    "numpy rng range": (lambda t: t["rng.numpy"].__setitem__(0, -5), "outside [0, 2**32)"),
    "unexpected tensor": (lambda t: t.update({"payload": torch.zeros(1)}), "unexpected tensor 'payload'"),
    "optim for no optimizer": (lambda t: t.update({"optim.x.0.exp_avg": torch.zeros(1)}), "names no optimizer"),
    "optim for no parameter": (lambda t: t.update({"optim.m.99.exp_avg": torch.zeros(1)}), "parameter 99"),
}


@pytest.mark.parametrize("case", list(MALFORMED_TENSORS))
def test_malformed_tensor_names_are_one_line(saved, case):
    mutate, match = MALFORMED_TENSORS[case]
    tensors, meta_json = parts(saved)
    mutate(tensors)
    rewrite(saved, tensors, meta_json)
    one_line_error(saved, lambda: read_checkpoint(saved), match)


def _edit_group(fn):
    def mutate(meta: dict) -> dict:
        fn(meta["optimizers"]["m"]["param_groups"][0])
        return meta
    return mutate


OPTIMIZER_MISMATCH = {
    "unknown hyper-parameter": (_edit_group(lambda g: g.update(Lr=0.1)), "unknown key(s) 'Lr'"),
    "betas not a pair": (_edit_group(lambda g: g.update(betas=0.9)), "betas is 0.9"),
    "amsgrad a number": (_edit_group(lambda g: g.update(amsgrad=1)), "amsgrad is 1"),
    "other parameter ids": (_edit_group(lambda g: g.update(params=[p + 10 for p in g["params"]])),
                            "do not match"),
    "fewer parameters": (_edit_group(lambda g: g.update(params=g["params"][:-1])), "groups of sizes"),
}


@pytest.mark.parametrize("case", list(OPTIMIZER_MISMATCH))
def test_optimizer_groups_must_match_the_optimizer_being_loaded(saved, case):
    mutate, match = OPTIMIZER_MISMATCH[case]
    tensors, meta_json = parts(saved)
    meta = mutate(json.loads(meta_json))
    # keep the tensors consistent with the (edited) parameter ids so only the mismatch is tested
    groups = meta["optimizers"]["m"]["param_groups"]
    ids = {p for g in groups for p in g["params"]}
    meta["optimizers"]["m"]["scalars"] = {}
    tensors = {k: v for k, v in tensors.items() if not k.startswith("optim.") or int(k.split(".")[2]) in ids}
    rewrite(saved, tensors, json.dumps(meta))
    model, opt = tiny(1)
    one_line_error(saved, lambda: load_checkpoint(saved, {"m": model}, {"m": opt}), match)


def test_optimizer_state_shape_and_group_count_are_checked(saved, tmp_path):
    tensors, meta_json = parts(saved)
    tensors["optim.m.0.exp_avg"] = torch.zeros(7)
    rewrite(saved, tensors, meta_json)
    model, opt = tiny(1)
    one_line_error(saved, lambda: load_checkpoint(saved, {"m": model}, {"m": opt}), "has shape [7]")
    two = tmp_path / "two.safetensors"
    model2, opt2 = tiny(0, groups=2)
    save_checkpoint(two, {"m": model2}, {"m": opt2}, {"step": 1})
    one_line_error(two, lambda: load_checkpoint(two, {"m": model}, {"m": opt}), "groups of sizes [6], the checkpoint [2, 4]")
    one_line_error(two, lambda: load_checkpoint(two, {"m": model}, {"other": opt}), "no state for optimizer 'other'")


def test_missing_hyper_parameters_are_filled_from_the_optimizer(saved):
    """A checkpoint from a torch that lacked a newer option still resumes."""
    tensors, meta_json = parts(saved)
    meta = json.loads(meta_json)
    del meta["optimizers"]["m"]["param_groups"][0]["amsgrad"]
    rewrite(saved, tensors, json.dumps(meta))
    model, opt = tiny(1)
    load_checkpoint(saved, {"m": model}, {"m": opt})
    assert opt.param_groups[0]["amsgrad"] is False


def test_header_attacks_are_one_line(tmp_path):
    path = tmp_path / "h.safetensors"
    cases = {
        (2**60).to_bytes(8, "little") + b"{}": "header of",
        (100_000).to_bytes(8, "little") + b"[" * 50_000 + b"]" * 50_000: "header nests 50000 deep",
        (2).to_bytes(8, "little") + b"[]": "not a capsgen checkpoint",
        st_save({"w": torch.zeros(2)}): "not a capsgen checkpoint",
        st_save({"w": torch.zeros(2)}, metadata={"capsgen": "{}"})[:-3]: "not a readable capsgen checkpoint",
    }
    for raw, match in cases.items():
        path.write_bytes(raw)
        one_line_error(path, lambda: read_checkpoint(path), match)
    one_line_error(tmp_path / "none", lambda: read_checkpoint(tmp_path / "none"), "checkpoint not found")


def test_json_depth_ignores_brackets_in_strings():
    assert json_depth(b'{"a": [1, {"b": "[[[{{{\\"]]]"}]}') == 3
    assert json_depth(b"[]") == 1 and json_depth(b"3") == 0 and json_depth(b"") == 0


# ----------------------------------------------------------------------------- corruption

@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_in_tensor_data_fail_the_checksum(saved, seed):
    raw = bytearray(saved.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    rng = random.Random(seed)
    for _ in range(1 + seed):
        i = rng.randrange(start, len(raw))
        raw[i] = (raw[i] + rng.randrange(1, 256)) % 256   # a different byte, surely
    saved.write_bytes(raw)
    one_line_error(saved, lambda: read_checkpoint(saved), "checksum mismatch: the file is corrupt")


def test_any_single_byte_change_is_refused_or_harmless(saved):
    """A byte changed anywhere (header, metadata, data) gives one line, never a traceback; the
    only accepted changes are those that leave every tensor and the metadata as they were."""
    good = saved.read_bytes()
    ref_tensors, ref_meta = read_checkpoint(saved)
    rng = random.Random(0)
    accepted = 0
    for _ in range(300):
        raw = bytearray(good)
        i = rng.randrange(len(raw))
        raw[i] = (raw[i] + rng.randrange(1, 256)) % 256
        saved.write_bytes(raw)
        try:
            tensors, meta = read_checkpoint(saved)
        except CapsgenError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(saved))
            continue
        accepted += 1   # e.g. header padding turned into other JSON whitespace
        assert meta == ref_meta and tensors.keys() == ref_tensors.keys()
        assert all(torch.equal(tensors[k], ref_tensors[k]) for k in tensors)
    assert accepted < 10


def test_truncated_files_are_one_line(saved):
    good = saved.read_bytes()
    n = int.from_bytes(good[:8], "little")
    for cut in (0, 4, 8, 8 + n // 2, 8 + n, 8 + n + 10, len(good) - 1):
        saved.write_bytes(good[:cut])
        one_line_error(saved, lambda: read_checkpoint(saved), "capsgen checkpoint")


# ----------------------------------------------------------------------------- atomic writes

def test_a_killed_writer_leaves_the_old_file_and_its_temp_is_removed_next_time(saved, tmp_path):
    old = saved.read_bytes()
    child = ("import os, signal, sys\n"
             "from capsgen.train import checkpoint\n"
             "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # die between mkstemp and replace\n"
             "checkpoint.atomic_write_bytes(sys.argv[1], b'new contents')\n")
    r = subprocess.run([sys.executable, "-c", child, str(saved)], cwd=Path(__file__).parent.parent,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    stale = list(tmp_path.glob(f".{saved.name}.*.tmp"))
    assert len(stale) == 1 and stale[0].read_bytes() == b"new contents"
    assert saved.read_bytes() == old
    # a live writer's temp, a pid-less temp of an older capsgen, and another file's temp
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        live = tmp_path / f".{saved.name}.{sleeper.pid}.abcdefgh.tmp"
        legacy = tmp_path / f".{saved.name}.k2j4h5g6.tmp"
        other = tmp_path / ".c.safetensors.bak.12345678.tmp"
        for p in (live, legacy, other):
            p.write_bytes(b"x")
        model, opt = tiny(1)
        save_checkpoint(saved, {"m": model}, {"m": opt}, {"step": 8})
        assert sorted(tmp_path.glob(".*.tmp")) == sorted([live, other])
        assert read_checkpoint(saved)[1]["state"]["step"] == 8
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_stale_temps(saved) == [live]   # its writer is gone now


def test_files_are_created_0600_whatever_the_umask(tmp_path):
    model, opt = tiny()
    old = os.umask(0)
    try:
        path = tmp_path / "c.safetensors"
        path.write_bytes(b"old")
        os.chmod(path, 0o666)
        save_checkpoint(path, {"m": model}, {"m": opt}, {"step": 1})
        assert path.stat().st_mode & 0o777 == 0o600
        ckpt.atomic_write_text(tmp_path / "t.json", "{}")
        assert (tmp_path / "t.json").stat().st_mode & 0o777 == 0o600
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "shared.bin", b"x", mode=0o644)   # applied exactly
        assert (tmp_path / "shared.bin").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


@pytest.fixture
def tmpfs(tmp_path):
    """A real 256 KiB tmpfs (needs root with CAP_SYS_ADMIN; skipped elsewhere)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_read_only_file_system_gives_one_line_and_keeps_the_checkpoint(tmpfs):
    model, opt = tiny()
    path = tmpfs / "c.safetensors"
    save_checkpoint(path, {"m": model}, {"m": opt}, {"step": 1})
    old = path.read_bytes()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    msg = one_line_error(path, lambda: save_checkpoint(path, {"m": model}, {"m": opt}, {"step": 2}),
                         "cannot write (Read-only file system)")
    assert "previous file is unchanged" in msg
    assert path.read_bytes() == old and read_checkpoint(path)[1]["state"]["step"] == 1


def test_full_disk_gives_one_line_and_keeps_the_checkpoint(tmpfs):
    model, opt = tiny()
    path = tmpfs / "c.safetensors"
    save_checkpoint(path, {"m": model}, {"m": opt}, {"step": 1})
    old = path.read_bytes()
    big = {"buffer": torch.zeros(512 * 1024)}   # 2 MiB: more than the tmpfs holds
    one_line_error(path, lambda: save_checkpoint(path, {"m": model}, {"m": opt}, {"step": 2}, extras=big),
                   "cannot write (No space left on device)")
    assert path.read_bytes() == old and read_checkpoint(path)[1]["state"]["step"] == 1
    assert sorted(p.name for p in tmpfs.iterdir()) == ["c.safetensors"]   # no temp file left


@pytest.mark.parametrize("where,code", [("replace", errno.EROFS), ("fsync", errno.ENOSPC)])
def test_os_errors_anywhere_in_the_write_give_one_line(saved, monkeypatch, where, code):
    """Portable version of the two tests above, for machines where a tmpfs cannot be mounted."""
    old = saved.read_bytes()

    def fail(*args):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, where, fail)
    model, opt = tiny(1)
    one_line_error(saved, lambda: save_checkpoint(saved, {"m": model}, {"m": opt}, {"step": 9}),
                   f"cannot write ({os.strerror(code)})")
    monkeypatch.undo()
    assert saved.read_bytes() == old and not list(saved.parent.glob(".*.tmp"))


def test_missing_folder_gives_one_line(tmp_path):
    path = tmp_path / "nope" / "c.bin"
    one_line_error(path, lambda: atomic_write_bytes(path, b"x"), "No such file or directory")


# ----------------------------------------------------------------------------- finite weights

def test_finite_weights_names_the_module_and_tensor():
    model, _ = tiny()
    other = torch.nn.Linear(2, 2).double()
    assert finite_weights({"m": model, "o": other}) is None
    with torch.no_grad():
        other.weight.fill_(1e29)   # large but not overflowing
        assert finite_weights({"m": model, "o": other}) is None
        other.weight[0, 1] = 2e31
        assert finite_weights({"m": model, "o": other}) == "weights of 'o' overflowed (max |weight| = 2e+31 > 1e+30)"
        model[2].bias[1] = float("nan")
        model[2].bias[0] = -float("inf")
        assert finite_weights({"m": model}) == ("weights of 'm' are not finite "
                                                "(2 of 2 values of 2.bias are NaN or inf)")
    model, _ = tiny()
    model[1].running_var[0] = float("inf")     # buffers count too; integer buffers are skipped
    assert "1.running_var" in finite_weights({"m": model})
