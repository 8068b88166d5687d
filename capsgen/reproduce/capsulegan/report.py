"""report.md and report.html of ``capsgen reproduce capsulegan``: measured numbers beside the papers'.

The Markdown is the source; the HTML is the same text rendered by the ``markdown`` package
(tables extension) with a small style sheet, so both always say the same thing.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from capsgen.train.checkpoint import atomic_write_text

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}code,pre{background:#f4f4f4}pre{padding:.6em;overflow-x:auto}
img{max-width:100%;image-rendering:pixelated}.grid{display:flex;gap:1em;flex-wrap:wrap}"""


def _f(x: Any, fmt: str = ".4f") -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    return f"{x:{fmt}}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|",
            *["| " + " | ".join(r) + " |" for r in rows], ""]


def _paper_dataset(data: str) -> str:
    return "CIFAR-10" if "cifar" in data else "MNIST"


def claims(stages: dict[str, Any], models: tuple, battles: tuple) -> list[str]:
    """Each paper claim, and whether it held in this run."""
    from capsgen.eval.gam import VERDICT_A

    out = []
    for a, b in battles:
        r = stages.get(f"battle/{a}-vs-{b}")
        if r:
            held = r["verdict"] == VERDICT_A
            out.append(f"- **GAM (Jaiswal et al. 2018, §5.3): CapsuleGAN beats the convolutional GAN** — {a} vs {b}: "
                       f"r_samples = {_f(r['r_samples'], '.3f')}, r_test = {_f(r['r_test'], '.3f')}, verdict "
                       f"*{r['verdict']}* → the claim **{'held' if held else 'did not hold'}** here.")
    dc = stages.get("semisup/dcgan")
    for spec in models[1:]:
        cs = stages.get(f"semisup/{spec.name}")
        if dc and cs:
            wins = [c["error"] < d["error"] for c, d in zip(cs["rows"], dc["rows"])]
            gaps = ", ".join(f"n={c['labelled']}: {100 * (d['error'] - c['error']):+.2f} pp"
                             for c, d in zip(cs["rows"], dc["rows"]))
            out.append(f"- **Semi-supervised (Jaiswal et al. 2018, §5.4): CapsuleGAN samples lower the Label Spreading "
                       f"error at every n** — {spec.name} vs dcgan ({gaps}; positive = CapsuleGAN better) → "
                       f"the claim **{'held' if all(wins) else 'did not hold'}** here "
                       f"({sum(wins)} of {len(wins)} n).")
    m = {spec.name: stages.get(f"metrics/{spec.name}") for spec in models}
    if all(m.values()):
        best = min(m, key=lambda k: m[k]["samples"]["fid"])
        out.append(f"- Lowest FID (evaluator features) here: **{best}**.")
    return out


def write_reports(folder: Path, s: Any, results: dict[str, Any], figures: dict[str, dict[str, str]],
                  env: dict[str, Any]) -> Path:
    """Write report.md and report.html into ``folder``; returns the report.md path."""
    import markdown

    from capsgen.reproduce.capsulegan.spec import BATTLES, MODELS, PAPER_GAM, PAPER_SEMISUP

    st = results["stages"]
    timing = results.get("timing", {})
    pds = _paper_dataset(s.data)
    ev = st.get("evaluator", {})
    L = [f"# CapsuleGAN reproduction on {s.data}", "",
         f"Generated {time.strftime('%Y-%m-%d %H:%M')} by capsgen. Each model trained for the same wall-clock "
         f"budget of **{s.budget:g} minutes** ({s.scale} scale, batch {s.batch_size}, seed {s.seed}) on this "
         f"machine ({env['processor']}, {env['threads']} torch threads, torch {env['torch']}). "
         f"The papers used {pds} (and CIFAR-10); this run uses **{s.data}**, so numbers are compared in "
         "direction, not in value.", "",
         "Reproduce with:", "", "```", s.command, "```", ""]

    L += ["## Models and training", ""]
    rows = []
    for spec in MODELS:
        t = st.get(f"train/{spec.name}")
        if not t:
            continue
        mc = t["model"]
        lr_d = mc["lr"] if mc.get("lr_d") is None else mc["lr_d"]
        rows.append([spec.name, spec.label, f"{mc['generator']}", f"{mc['discriminator']}", mc["objective"],
                     f"{mc['lr']:g} / {lr_d:g}", f"{t['params']['generator']:,} / {t['params']['discriminator']:,}",
                     str(t["steps"]), f"{t['real_images_seen']:,}", f"{t['seconds'] / 60:.1f}",
                     _f(t["final"].get("d_acc"), ".3f")])
    L += _table(["run", "model", "G", "D", "objective", "lr G / D", "params G / D", "steps", "real images seen",
                 "minutes", "final D acc"], rows)
    L += ["Equal wall-clock budgets give the cheaper convolutional discriminator more steps: that is the "
          "comparison the budget asks for. The step counts above are the price of capsules on a CPU.", ""]

    L += ["## Samples", ""]
    for spec in MODELS:
        f = figures.get(spec.name, {})
        if f:
            L += [f"### {spec.name}", "", " ".join(f"![{spec.name} {k}]({p})" for k, p in f.items()
                                                    if k in ("samples", "gan_curves")), ""]
    if "real" in figures:
        L += ["Real test images for comparison:", "", f"![real]({figures['real']['samples']})", ""]

    L += ["## Sample metrics (capsgen evaluator features, not Inception)", ""]
    m0 = next((st.get(f"metrics/{spec.name}") for spec in MODELS if st.get(f"metrics/{spec.name}")), None)
    if m0:
        c = m0["counts"]
        L += [f"{c['samples']} samples per model vs {c['real_test']} real test images; the floor row is "
              f"{c['real_train']} real training images vs the same test images. Evaluator: capsgen classifier, "
              f"test accuracy **{100 * ev.get('accuracy', float('nan')):.2f}%** on {s.data} "
              f"({m0['evaluator']['feature_dim']}-D features). Neither paper reports these metrics.", ""]
        rows = []
        for name, r in [(spec.name, (st.get(f"metrics/{spec.name}") or {}).get("samples")) for spec in MODELS] + \
                [("real-vs-real floor", m0["real_vs_real"])]:
            if r:
                cc = r["class_coverage"]
                rows.append([name, _f(r["fid"], ".3f"), f"{_f(r['kid'], '.5f')} ± {_f(r['kid_std'], '.5f')}",
                             f"{_f(r['is'], '.3f')}", _f(r["precision"]), _f(r["recall"]), _f(r["density"]),
                             _f(r["coverage"]), f"{cc['classes_hit']}/{cc['num_classes']}",
                             _f(cc["normalized_entropy"], ".3f")])
        L += _table(["samples", "FID ↓", "KID ↓", "IS ↑", "precision", "recall", "density", "coverage",
                     "classes hit", "class entropy / log K"], rows)

    L += ["## Generative Adversarial Metric (Jaiswal et al. 2018, §5.3)", ""]
    rows = []
    for a, b in BATTLES:
        r = st.get(f"battle/{a}-vs-{b}")
        if r:
            p = r["pairings"]
            rows.append([f"{a} (A) vs {b} (B)", _f(p["A(D_B(G_A(z)))"]), _f(p["A(D_A(G_B(z)))"]),
                         _f(p["A(D_B(x_test))"]), _f(p["A(D_A(x_test))"]), _f(r["r_samples"], ".3f"),
                         _f(r["r_test"], ".3f"), f"±{r['tolerance']:g}", r["verdict"]])
    for name, pg in PAPER_GAM.items():
        rows.append([f"Jaiswal et al. 2018, {name}", "–", "–", "–", "–", _f(pg["r_samples"], ".2f"), _f(pg["r_test"], ".2f"),
                     "–", pg["verdict"]])
    L += _table(["battle", "A(D_B(G_A(z)))", "A(D_A(G_B(z)))", "A(D_B(x_test))", "A(D_A(x_test))", "r_samples",
                 "r_test", "tolerance", "verdict"], rows)
    b0 = next((st.get(f"battle/{a}-vs-{b}") for a, b in BATTLES if st.get(f"battle/{a}-vs-{b}")), None)
    if b0:
        L += [f"{b0['n']} samples per generator and {b0['n']} real test images. Batch norm: "
              f"{b0['batch_norm']['mode']}. A wins if r_samples < 1 − tol and |r_test − 1| ≤ tol; "
              "a zero accuracy in a denominator gives an infinite ratio, reported as such.", ""]

    L += ["## Semi-supervised classification (Jaiswal et al. 2018, §5.4)", ""]
    sem = {k.split("/", 1)[1]: v for k, v in st.items() if k.startswith("semisup/")}
    if sem:
        paper_ns = {n for table in PAPER_SEMISUP.values() for errs in table.values() for n in errs}
        ns = sorted({r["labelled"] for v in sem.values() for r in v["rows"]} | paper_ns)
        one = next(iter(sem.values()))
        L += [f"Label Spreading error on {one['test_images']} real {s.data} test images; {s.generated} "
              f"generated images as unlabelled data; {one['method']}.", ""]
        rows = []
        order = ["labelled-only"] + [spec.name for spec in MODELS] + ["real-unlabelled"]
        n_real = sem.get("real-unlabelled", {}).get("generated", s.generated)
        desc = {"labelled-only": "no unlabelled images", "real-unlabelled": f"{n_real} real images (ceiling)"}
        for name in order:
            if name in sem:
                errs = {r["labelled"]: r["error"] for r in sem[name]["rows"]}
                rows.append([f"{name} ({desc[name]})" if name in desc else name, *[_f(errs.get(n)) for n in ns]])
        for ds, table in PAPER_SEMISUP.items():
            for model, errs in table.items():
                rows.append([f"Jaiswal et al. 2018, {ds}: {model}", *[_f(errs.get(n)) for n in ns]])
        L += _table(["unlabelled data", *[f"n = {n:,}" for n in ns]], rows)

    L += ["## Did the papers' claims hold at this scale?", "", *claims(st, MODELS, BATTLES), ""]
    L += ["## Scale and timing", "",
          f"- training budget per model: {s.budget:g} minutes; batch {s.batch_size}",
          f"- samples for metrics: {s.n_metrics} per model; battle: {s.n_battle}; semi-supervised: "
          f"{s.generated} generated, labelled {', '.join(map(str, s.labelled))}",
          "- stage times (s): " + ", ".join(f"{k} {v:g}" for k, v in timing.items()), "",
          "Each piece on its own (what the reproduction ran):", "", "```"]
    from capsgen.reproduce.capsulegan.spec import train_command

    for spec in MODELS:
        L.append(train_command(spec, s, folder))
    for spec in MODELS:
        t = st.get(f"train/{spec.name}")
        if t:
            L.append(f"capsgen eval {t['run']} --n {s.n_metrics} --seed {s.seed}")
    if BATTLES:
        a, b = BATTLES[0]
        L.append(f"capsgen battle {folder / 'runs' / a} {folder / 'runs' / b} --n {s.n_battle} --tol {s.tol:g}")
    L.append(f"capsgen semisup {folder / 'runs' / MODELS[-1].name} --labelled "
             f"{','.join(map(str, s.labelled))} --generated {s.generated}")
    L += ["```", ""]
    md = "\n".join(L)
    path = folder / "report.md"
    atomic_write_text(path, md)
    body = markdown.markdown(md, extensions=["tables", "fenced_code"])
    html = (f"<!doctype html><html><head><meta charset='utf-8'><title>CapsuleGAN reproduction – {s.data}</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>")
    atomic_write_text(folder / "report.html", html)
    return path
