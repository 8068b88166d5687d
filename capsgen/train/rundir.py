"""Run folders: what a run writes and where.

    RUN/
      config.json        train + family config, capsgen version, data facts
      metrics.jsonl      one JSON object per logged row ({"step", "split", figures…})
      checkpoints/       last.safetensors, best.safetensors (atomic; see checkpoint.py)
      tb/                TensorBoard event files
      figures/           PNG pictures
      report.md          a short human-readable summary

A lock file keeps two processes from writing one run at once; the kernel drops the lock when
a process dies, even by SIGKILL.
"""
from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any

from capsgen.errors import CapsgenError
from capsgen.train.checkpoint import atomic_write_text


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

    def checkpoint(self, name: str) -> Path:
        return self.path / "checkpoints" / f"{name}.safetensors"

    # -- lifecycle ----------------------------------------------------------------------------
    def check_new(self) -> None:
        """Refuse a path that already holds a run (or is a file) before any work starts."""
        if self.config_path.exists():
            raise CapsgenError(f"{self.path} already holds a run; continue it with "
                               f"--resume {self.path} or choose another --out")
        if self.path.exists() and not self.path.is_dir():
            raise CapsgenError(f"{self.path} exists and is not a folder; choose another --out")

    def create(self, config: dict[str, Any]) -> None:
        """Make a fresh run folder; refuses a folder that already holds a run."""
        self.check_new()
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.figures.mkdir(exist_ok=True)
        self.lock()
        atomic_write_text(self.config_path, json.dumps(config, indent=2, sort_keys=True))

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.is_file():
            raise CapsgenError(f"{self.path} is not a capsgen run folder (no config.json)")
        try:
            return json.loads(self.config_path.read_text())
        except json.JSONDecodeError as exc:
            raise CapsgenError(f"{self.config_path}: not valid JSON ({exc})") from None

    def lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(self.path / ".lock", "w")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CapsgenError(f"{self.path} is in use by another capsgen process") from None

    def unlock(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    # -- metrics ----------------------------------------------------------------------------
    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill: ignore it
        return rows

    def truncate_metrics(self, step: int) -> None:
        """Drop rows logged after ``step`` (work a resumed run will redo)."""
        if not self.metrics_path.exists():
            return
        rows = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
