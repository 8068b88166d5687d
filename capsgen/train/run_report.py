"""A short Markdown report for one run: settings, final figures, curves and pictures.

Generic for every family: the final evaluation as a table, curves of the logged figures and
every PNG in ``figures/``. A family that draws its own curves (``figures/*_curves.png``, e.g.
the GANs' ``gan_curves.png``) gets those instead of the generic ``curves.png``; a generative
run shows its samples grid first and its fixed-noise progress grids (``figures/samples/``) in
order of training step.
"""
from __future__ import annotations

import json
from pathlib import Path

from capsgen.report.figures import plot_curves
from capsgen.train.checkpoint import atomic_write_text
from capsgen.train.rundir import RunDir

# What a GAN's final figures mean (GANTask.evaluate); shown under the table when present.
_GAN_NOTE = ("d_acc is the discriminator's accuracy on {n} real test images and as many fresh "
             "generator samples (P(real) > 1/2 counts as 'real'): 1.0 means it always tells them "
             "apart, 0.5 is chance level (d_acc_real / d_acc_fake say on which side it errs); "
             "d_real / d_fake are the mean P(real) it gives to real / generated images.")


def _figure(name: str, rel: str) -> list[str]:
    return ["", f"**{name}**", "", f"![{name}]({rel})"]


def write_run_report(run: RunDir, final: dict) -> Path:
    cfg = run.read_config()
    rows = run.read_metrics()
    own_curves = sorted(run.figures.glob("*_curves.png"))   # curves the family drew itself
    train_keys = sorted({k for r in rows if r.get("split") == "train" for k in r}
                        - {"step", "split", "epoch", "time"})
    curves = own_curves[0] if own_curves else None
    if curves is None and rows and train_keys:
        keys = [("train", k) for k in train_keys[:3]]
        if any(r.get("split") == "test" and "test_error" in r for r in rows):
            keys.append(("test", "test_error"))
        curves = plot_curves(rows, keys, run.figures / "curves.png", title=run.path.name)
    last_train = next((r for r in reversed(rows) if r.get("split") == "train"), {})
    t, m = cfg["train"], cfg.get("model", {})
    lines = [
        f"# capsgen run `{run.path.name}`",
        "",
        f"- model: **{t['family']}**, data: **{t['data']}** "
        f"({cfg['data']['train_size']} training images, shape {tuple(cfg['data']['shape'])})",
    ]
    if "discriminator" in m and "generator" in m:
        lr_d = m.get("lr_d") if m.get("lr_d") is not None else m.get("lr")
        lines.append(f"- generator: {m['generator']}, discriminator: {m['discriminator']}, "
                     f"objective: {m.get('objective')}, Adam lr G {m.get('lr'):g} / D {lr_d:g}")
    lines += [
        f"- steps: {last_train.get('step', 0)} (epoch {last_train.get('epoch', 0)}), batch {t['batch_size']}, "
        f"seed {t['seed']}, wall time {last_train.get('time', 0):.0f} s",
        "",
        "## Final evaluation (test split)",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in final.items()]
    if "d_acc" in final and "d_fake" in final:
        lines += ["", _GAN_NOTE.format(n=final.get("n", "the"))]
    lines += ["", "## Pictures"]
    samples = run.figures / "samples.png"
    if samples.exists():
        lines += _figure("samples", f"figures/{samples.name}")
    if curves:
        lines += _figure("curves", f"figures/{curves.name}")
    for png in sorted(run.figures.glob("*.png")):
        if png.name != "curves.png" and png != curves and png != samples:
            lines += _figure(png.stem, f"figures/{png.name}")
    progress = sorted((run.figures / "samples").glob("step_*.png"))
    if progress:
        lines += ["", "## Progress (the same fixed noise during training)"]
        for png in progress:
            step = png.stem.removeprefix("step_").lstrip("0") or "0"
            lines += _figure(f"step {step}", f"figures/samples/{png.name}")
    lines += ["", "## Configuration", "", "```json", json.dumps(cfg, indent=2, sort_keys=True), "```", ""]
    path = run.report_path
    atomic_write_text(path, "\n".join(lines))
    return path
