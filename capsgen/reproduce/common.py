"""What every experiment shares: progress lines, the report folder check, results.json, and the
rule by which a difference over seeds counts (:func:`compare`).

A reproduction keeps each finished stage's result in its folder's ``results.json`` (written
atomically), so running the same command again continues where it stopped; a folder made with
other settings, or a folder capsgen did not make, is refused before any work.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from capsgen.errors import CapsgenError
from capsgen.train.checkpoint import atomic_write_text


def say(msg: str) -> None:
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def open_report_folder(s: Any) -> Path:
    """The report folder of settings ``s`` (``s.out``), checked, with ``s.data`` made the dataset's
    canonical name. Nothing is created: a run() calls this before any work."""
    from capsgen.data.registry import get_spec

    s.data = get_spec(s.data).name
    folder = Path(s.out)
    check_report_folder(folder)
    return folder


def check_report_folder(folder: Path) -> None:
    """Refuse a file, or a non-empty folder that holds no reproduction (capsgen did not make it)."""
    if folder.exists() and not folder.is_dir():
        raise CapsgenError(f"{folder} exists and is not a folder; choose another --out")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "results.json").is_file():
        raise CapsgenError(f"{folder} is a folder capsgen did not create and it is not empty; choose another --out")


class Results:
    """results.json of a reproduce folder: one entry per finished stage, written atomically.

    ``settings.identity()`` is the dict of settings that decide the results; a folder is only
    continued with the same ones. ``fmt`` (optional) is the experiment's results format: a folder
    written in another format is refused.
    """

    def __init__(self, folder: Path, settings: Any, fmt: int | None = None):
        self.path = folder / "results.json"
        mine = settings.identity()
        self.data: dict[str, Any] = {"settings": mine, "stages": {}, "timing": {}}
        if fmt is not None:
            self.data["format"] = fmt
        if self.path.exists():
            try:
                old = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise CapsgenError(f"{self.path}: unreadable ({exc}); delete it or choose another --out") from None
            if not isinstance(old, dict):
                raise CapsgenError(f"{self.path}: not a results file; delete it or choose another --out")
            if fmt is not None and old.get("format") != fmt:
                raise CapsgenError(f"{folder} holds a reproduction of an older capsgen (results format "
                                   f"{old.get('format', 1)}); choose another --out")
            if old.get("settings") != mine:
                diff = sorted(k for k in mine if (old.get("settings") or {}).get(k) != mine[k])
                raise CapsgenError(f"{folder} holds a reproduction with other settings ({', '.join(diff)}); "
                                   "repeat its command or choose another --out")
            self.data = old
            self.data.setdefault("stages", {})
        self.data.setdefault("timing", {})

    def get(self, stage: str) -> Any:
        return self.data["stages"].get(stage)

    def put(self, stage: str, value: Any, seconds: float) -> None:
        self.data["stages"][stage] = value
        self.data["timing"][stage] = round(seconds, 1)
        atomic_write_text(self.path, json.dumps(self.data, indent=1, default=float))

    def stage(self, name: str, fn: Callable[[], Any]) -> Any:
        """The stored result of ``name``, or run ``fn`` now and store it."""
        done = self.get(name)
        if done is not None:
            say(f"{name}: done before, kept")
            return done
        say(f"{name} …")
        t0 = time.perf_counter()
        value = fn()
        self.put(name, value, time.perf_counter() - t0)
        return value


# ------------------------------------------------------------------------------------ reports
CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;line-height:1.45}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}code,pre{background:#f4f4f4}pre{padding:.6em;overflow-x:auto}
img{max-width:100%;image-rendering:pixelated}.grid{display:flex;gap:1em;flex-wrap:wrap}"""


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table (lines, ending with a blank one)."""
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|",
            *["| " + " | ".join(r) + " |" for r in rows], ""]


def check_deviations(md: str) -> None:
    """Refuse a report without a deviations list: a "## Deviations…" section with at least one item.

    Every reproduction differs from its paper (scale, data, optimiser, readings of what the paper
    leaves open); a report that lists none hides them, so no report is written without one.
    """
    lines = md.splitlines()
    starts = [k for k, line in enumerate(lines) if line.startswith("## Deviations")]
    for k in starts:
        body = []
        for line in lines[k + 1:]:
            if line.startswith("## "):
                break
            body.append(line)
        if any(line.lstrip().startswith("- ") for line in body):
            return
    raise ValueError("a report must end with a '## Deviations …' section listing at least one deviation")


def write_report(folder: Path, title: str, md: str) -> Path:
    """report.md, and report.html rendering the same text (markdown tables extension); returns report.md.

    The Markdown is the source; the HTML is that text rendered with a small style sheet, so both
    always say the same thing. A report without a deviations list is refused (:func:`check_deviations`).
    """
    import markdown

    check_deviations(md)
    path = folder / "report.md"
    atomic_write_text(path, md)
    body = markdown.markdown(md, extensions=["tables", "fenced_code"])
    atomic_write_text(folder / "report.html", f"<!doctype html><html><head><meta charset='utf-8'><title>{title}"
                                              f"</title><style>{CSS}</style></head><body>{body}</body></html>")
    return path


def mean_sd_n(xs: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample sd, n) of ``xs``; sd is nan for n < 2; mean is inf/nan if any value is."""
    xs = [float(x) for x in xs]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    if not all(math.isfinite(x) for x in xs):
        return (math.inf if all(not math.isnan(x) for x in xs) else math.nan), math.nan, n
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else math.nan
    return m, sd, n


def compare(a: Sequence[float], b: Sequence[float], lower_is_better: bool = True) -> str:
    """"a" or "b" (the better one, resolved), "spread" (inside mean ± sd), "one seed" or "not finite"."""
    ma, sa, na = mean_sd_n(a)
    mb, sb, nb = mean_sd_n(b)
    if na < 2 or nb < 2:
        return "one seed"
    if not (math.isfinite(ma) and math.isfinite(mb)):
        return "not finite"
    if not lower_is_better:
        ma, mb = -ma, -mb
    if ma + sa < mb - sb:
        return "a"
    if mb + sb < ma - sa:
        return "b"
    return "spread"
