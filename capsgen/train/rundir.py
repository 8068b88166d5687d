"""Run folders: what a run writes and where. Every path of a run is spelled here and nowhere else.

    RUN/
      config.json        train + family config, capsgen version, data facts
      metrics.jsonl      one JSON object per logged row ({"step", "split", figures…})
      checkpoints/       last.safetensors, best.safetensors (atomic; see checkpoint.py)
      tb/                TensorBoard event files
      figures/           PNG pictures
      report.md          a short human-readable summary

capsgen writes only into folders it made: ``--out`` must not exist, or be an empty folder.
A folder that holds anything else (someone's report.md, metrics.jsonl, figures/) is refused
before any work starts, so no user file is ever overwritten or appended to. Run files are
created mode 0600 and folders 0700, whatever the umask: checkpoints and configs may hold
paths and data facts a user does not mean to share.

A lock file keeps two processes from writing one run at once; the kernel drops the lock when
a process dies, even by SIGKILL.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from capsgen.errors import CapsgenError
from capsgen.train.checkpoint import atomic_write_text

FILE_MODE, DIR_MODE = 0o600, 0o700


def _os_problem(path: Path, exc: OSError, what: str) -> CapsgenError:
    why = {errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on the device",
           errno.EACCES: "permission denied", errno.EPERM: "permission denied"}.get(exc.errno,
                                                                                  exc.strerror or str(exc))
    return CapsgenError(f"{path}: cannot {what} ({why})")


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fh = None

    # -- layout -----------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def tb(self) -> Path:
        return self.path / "tb"

    @property
    def report_path(self) -> Path:
        return self.path / "report.md"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints / f"{name}.safetensors"

    def figure(self, name: str) -> Path:
        return self.figures / name

    def is_run(self) -> bool:
        return self.config_path.is_file()

    # -- lifecycle ----------------------------------------------------------------------------
    def check_new(self) -> None:
        """Refuse a path capsgen may not create a run in, before any work starts.

        Allowed: a path that does not exist (its parent must be a writable folder, or creatable),
        or an empty folder. Refused: a run (continue it with --resume), a file, a non-empty folder.
        """
        if self.config_path.exists():
            raise CapsgenError(f"{self.path} already holds a run; continue it with "
                               f"--resume {self.path} or choose another --out")
        if self.path.is_symlink() and not self.path.exists():
            raise CapsgenError(f"{self.path} is a broken symbolic link; choose another --out")
        if self.path.exists():
            if not self.path.is_dir():
                raise CapsgenError(f"{self.path} exists and is not a folder; choose another --out")
            try:
                occupied = next(os.scandir(self.path), None) is not None
            except OSError as exc:
                raise _os_problem(self.path, exc, "read the folder") from None
            if occupied:
                raise CapsgenError(f"{self.path} is a folder capsgen did not create and it is not empty; "
                                   "capsgen writes only into new or empty folders — choose another --out")
            if not os.access(self.path, os.W_OK | os.X_OK):
                raise CapsgenError(f"{self.path}: not writable; choose another --out")
            return
        parent = self.path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise CapsgenError(f"{self.path}: {parent} is not a folder; choose another --out")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise CapsgenError(f"{self.path}: cannot create it, {parent} is not writable; choose another --out")

    def create(self, config: dict[str, Any]) -> None:
        """Make a fresh run folder (validated by :meth:`check_new`) and write its config."""
        self.check_new()
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            os.chmod(self.path, DIR_MODE)
            for sub in (self.checkpoints, self.figures, self.tb):   # before TensorBoard makes tb/ by the umask
                sub.mkdir(exist_ok=True, mode=DIR_MODE)
            self.lock()
            atomic_write_text(self.config_path, json.dumps(config, indent=2, sort_keys=True))
        except OSError as exc:
            raise _os_problem(self.path, exc, "create the run folder") from None

    def write_config(self, config: dict[str, Any]) -> None:
        try:
            atomic_write_text(self.config_path, json.dumps(config, indent=2, sort_keys=True))
        except OSError as exc:
            raise _os_problem(self.config_path, exc, "write") from None

    def read_config(self) -> dict[str, Any]:
        if not self.path.is_dir():
            raise CapsgenError(f"{self.path}: no such run folder")
        if not self.config_path.is_file():
            raise CapsgenError(f"{self.path} is not a capsgen run folder (no config.json)")
        try:
            if self.config_path.stat().st_size > 1_000_000:
                raise CapsgenError(f"{self.config_path}: larger than 1 MB, not a capsgen config")
            raw = json.loads(self.config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise CapsgenError(f"{self.config_path}: not valid JSON ({type(exc).__name__})") from None
        except OSError as exc:
            raise _os_problem(self.config_path, exc, "read") from None
        if not isinstance(raw, dict):
            raise CapsgenError(f"{self.config_path}: expected a JSON object, got {type(raw).__name__}")
        return raw

    def lock(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            fd = os.open(self.path / ".lock", os.O_WRONLY | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise _os_problem(self.path, exc, "lock the run folder") from None
        self._lock_fh = os.fdopen(fd, "w")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            self._lock_fh = None
            raise CapsgenError(f"{self.path} is in use by another capsgen process") from None

    def in_use(self) -> bool:
        """Whether a capsgen process holds this run's lock (it is being trained), asked without
        creating or changing any file: a run that never had a lock file has no writer."""
        try:
            fd = os.open(self.path / ".lock", os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _os_problem(self.path, exc, "read the lock of") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)   # closing drops a shared lock taken just above
        return False

    def unlock(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def secure(self) -> None:
        """Give every file of the run mode 0600 and every folder 0700 (TensorBoard and matplotlib
        create theirs with the umask's modes)."""
        for root, dirs, files in os.walk(self.path):
            for d in dirs:
                os.chmod(os.path.join(root, d), DIR_MODE)
            for f in files:
                full = os.path.join(root, f)
                if not os.path.islink(full):
                    os.chmod(full, FILE_MODE)

    # -- metrics ----------------------------------------------------------------------------
    def append_metrics(self, row: dict[str, Any]) -> None:
        try:
            fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
            with os.fdopen(fd, "a") as fh:
                fh.write(json.dumps(row) + "\n")
                fh.flush()
        except OSError as exc:
            raise _os_problem(self.metrics_path, exc, "append metrics") from None

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill: ignore it
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def truncate_metrics(self, step: int) -> None:
        """Drop rows logged after ``step`` (work a resumed run will redo)."""
        if not self.metrics_path.exists():
            return
        rows = [r for r in self.read_metrics() if isinstance(r.get("step", 0), int) and r.get("step", 0) <= step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
