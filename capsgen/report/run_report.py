"""A short Markdown report for one run: settings, final figures, curves and pictures."""
from __future__ import annotations

import json
from pathlib import Path

from capsgen.report.figures import plot_curves
from capsgen.train.checkpoint import atomic_write_text
from capsgen.train.rundir import RunDir


def write_run_report(run: RunDir, final: dict) -> Path:
    cfg = run.read_config()
    rows = run.read_metrics()
    train_keys = sorted({k for r in rows if r.get("split") == "train" for k in r}
                        - {"step", "split", "epoch", "time"})
    curves = None
    if rows and train_keys:
        keys = [("train", k) for k in train_keys[:3]]
        if any(r.get("split") == "test" and "test_error" in r for r in rows):
            keys.append(("test", "test_error"))
        curves = plot_curves(rows, keys, run.figures / "curves.png", title=run.path.name)
    last_train = next((r for r in reversed(rows) if r.get("split") == "train"), {})
    t = cfg["train"]
    lines = [
        f"# capsgen run `{run.path.name}`",
        "",
        f"- model: **{t['family']}**, data: **{t['data']}** "
        f"({cfg['data']['train_size']} training images, shape {tuple(cfg['data']['shape'])})",
        f"- steps: {last_train.get('step', 0)} (epoch {last_train.get('epoch', 0)}), batch {t['batch_size']}, "
        f"seed {t['seed']}, wall time {last_train.get('time', 0):.0f} s",
        "",
        "## Final evaluation (test split)",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in final.items()]
    lines += ["", "## Pictures", ""]
    if curves:
        lines.append(f"![curves](figures/{curves.name})")
    for png in sorted(run.figures.glob("*.png")):
        if png.name != "curves.png":
            lines += ["", f"**{png.stem}**", "", f"![{png.stem}](figures/{png.name})"]
    lines += ["", "## Configuration", "", "```json", json.dumps(cfg, indent=2, sort_keys=True), "```", ""]
    path = run.path / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
