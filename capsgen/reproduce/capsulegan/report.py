"""report.md and report.html of ``capsgen reproduce capsulegan``: measured numbers beside the papers'.

Every verdict rests on the mean ± sd over seeds: a difference counts only when the two
intervals mean ± sd do not overlap; otherwise it is "not resolved" (and with one seed there is no
spread, so nothing is resolved). The architecture table, the deviations from each paper and the
confounds within each pair are computed from the runs' configs (spec.py), not written by hand.

The Markdown is the source; the HTML is the same text rendered by the ``markdown`` package
(tables extension) with a small style sheet, so both always say the same thing.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

from capsgen.reproduce.common import compare, md_table, write_report
from capsgen.reproduce.common import mean_sd_n as mean_sd
from capsgen.reproduce.capsulegan.spec import (JAISWAL, KARMAKAR, PAPER_GAM, PAPER_KARMAKAR_STEPS, PAPER_SEMISUP,
                                               Settings, confounds, describe, deviations, train_command)

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}code,pre{background:#f4f4f4}pre{padding:.6em;overflow-x:auto}
img{max-width:100%;image-rendering:pixelated}.grid{display:flex;gap:1em;flex-wrap:wrap}"""

ARM_TITLE = {"time": "equal wall clock", "steps": "equal iterations"}
RULE = ("A difference counts only when the intervals mean ± sd over seeds do not overlap; otherwise it "
        "is **not resolved** (inside the seed-to-seed spread), which is not the same as \"did not hold\".")


# ------------------------------------------------------------------------------- statistics
def pm(xs: Sequence[float], fmt: str = ".4f") -> str:
    """"mean ± sd" (or the single value, or "–")."""
    m, sd, n = mean_sd(xs)
    if n == 0:
        return "–"
    if not math.isfinite(m):
        return str(m)
    return f"{m:{fmt}}" if n == 1 or math.isnan(sd) else f"{m:{fmt}} ± {sd:{fmt}}"


UNRESOLVED = {"spread": "not resolved (inside the seed spread)", "one seed": "not resolved (one seed: no spread)",
              "not finite": "not resolved (a non-finite value)"}


def claim_word(outcome: str, good: str = "a") -> str:
    if outcome == good:
        return "**held**"
    if outcome in UNRESOLVED:
        return f"**{UNRESOLVED[outcome]}**"
    return "**did not hold**"


def _f(x: Any, fmt: str = ".4f") -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    return f"{x:{fmt}}"


def _paper_dataset(data: str) -> str:
    return "CIFAR-10" if "cifar" in data else "MNIST"


class View:
    """The stages of results.json, by arm, model and seed."""

    def __init__(self, results: dict[str, Any], s: Settings):
        self.st, self.s = results["stages"], s
        self.paper_configs = results.get("paper_configs", {})

    def per_seed(self, kind: str, arm: str | None, name: str) -> list[Any]:
        mid = f"{arm}/{name}" if arm else name
        return [v for seed in self.s.seeds if (v := self.st.get(f"{kind}/{mid}/seed{seed}")) is not None]

    def train(self, arm: str, name: str) -> list[dict[str, Any]]:
        return self.per_seed("train", arm, name)

    def first_train(self, name: str) -> dict[str, Any] | None:
        for arm in self.s.arms():
            t = self.train(arm, name)
            if t:
                return t[0]
        return None


# ------------------------------------------------------------------------------- the sections
def models_section(v: View) -> list[str]:
    s = v.s
    L = [f"## Models: what \"{s.scale} scale\" means", "",
         "Every model starts from its paper's preset (`capsgen train FAMILY --preset NAME`); "
         + ("`--scale cpu` then narrows the capsule discriminators to 64 conv channels and 8 primary-capsule "
            "types (everything else as the preset)." if s.scale == "cpu" else "`--scale paper` keeps the presets' sizes.")
         + " Read from the runs' configs:", ""]
    rows = []
    for spec in s.specs():
        t = v.first_train(spec.name)
        if not t:
            continue
        d = describe(t["model"], t["train"]["batch_size"], t["params"])
        rows.append([spec.name, spec.paper, d["G"], d["D"], d["D norm"], d["objective"], d["lr G / D"], d["batches"],
                     d["params G / D"]])
    L += md_table(["model", "paper", "generator", "discriminator", "D normalisation", "objective", "learning rates",
                 "batches", "params G / D"], rows)
    L += ["## Deviations from the papers", "",
          "Computed from each run's config against its bare paper preset (and the data, batch size and "
          "training length the paper states); settings neither paper gives are capsgen's defaults and are not listed.", ""]
    for spec in s.specs():
        per_arm = {arm: deviations(t[0]["model"], t[0]["train"], v.paper_configs[spec.name], spec, s.data)
                   for arm in s.arms() if (t := v.train(arm, spec.name)) and spec.name in v.paper_configs}
        if not per_arm:
            continue
        common = [d for d in next(iter(per_arm.values())) if all(d in ds for ds in per_arm.values())]
        own = [f"{ARM_TITLE[arm]}: {d}" for arm, ds in per_arm.items() for d in ds if d not in common]
        devs = common + own
        L.append(f"- **{spec.name}** ({spec.paper}): " + ("; ".join(devs) if devs else "none"))
    L += ["", "## Confounds within each compared pair", "",
          "Differences between the two models of a pair other than the discriminator and its objective "
          "(what the papers compare), computed from the configs:", ""]
    for a, b, paper in s.pairs():
        ta, tb = v.first_train(a), v.first_train(b)
        if not (ta and tb):
            continue
        found = confounds(ta["model"], tb["model"], ta["train"], tb["train"], (a, b))
        lr_a = ta["model"]["lr_d"] if ta["model"].get("lr_d") is not None else ta["model"]["lr"]
        lr_b = tb["model"]["lr_d"] if tb["model"].get("lr_d") is not None else tb["model"]["lr"]
        if lr_a != lr_b:
            found.insert(0, f"**the discriminators learn at different rates ({lr_a:g} for {a}, {lr_b:g} for {b})**: "
                            "any difference below may come from the rates, not from capsules")
        L.append(f"- {a} vs {b} ({paper}): " + ("; ".join(dict.fromkeys(found)) if found else
                                                 "none — the pair differs only in its discriminator and objective"))
    if "time" in s.arms():
        L.append("- at equal wall clock the step counts differ (cheaper discriminators take more steps; see below): "
                 "the equal-iteration arm removes that")
    return L + [""]


def training_section(v: View) -> list[str]:
    L = ["## Training", ""]
    for arm in v.s.arms():
        rows = []
        for spec in v.s.specs():
            t = v.train(arm, spec.name)
            if t:
                rows.append([spec.name, str(len(t)), pm([x["steps"] for x in t], ".0f"),
                             pm([x["seconds"] / 60 for x in t], ".2f"), pm([x["real_images_seen"] for x in t], ".0f"),
                             pm([x["final"].get("d_acc", math.nan) for x in t], ".3f")])
        budget = f"{v.s.budget:g} minutes" if arm == "time" else f"{v.s.steps:,} steps"
        L += [f"### {ARM_TITLE[arm]} ({budget} per model and seed)", ""]
        L += md_table(["model", "seeds", "steps", "minutes", "real images seen", "final D accuracy (test)"], rows)
    return L


def samples_section(v: View, figures: dict[str, dict[str, str]]) -> list[str]:
    arm = v.s.arms()[0]
    L = ["## Samples", "", f"Seed {v.s.seeds[0]}, {ARM_TITLE[arm]}, fixed latents; beside each, its training curves.", ""]
    for spec in v.s.specs():
        f = figures.get(spec.name, {})
        if f:
            L += [f"### {spec.name}", "", " ".join(f"![{spec.name} {k}]({p})" for k, p in f.items()
                                                    if k in ("samples", "gan_curves")), ""]
    if "real" in figures:
        L += ["Real test images for comparison:", "", f"![real]({figures['real']['samples']})", ""]
    return L


def curve_points(v: View, arm: str, name: str) -> list[list[dict[str, float]]]:
    """Per seed, the (steps, seconds, fid) points of one model's run."""
    return [t["curve"] for t in v.train(arm, name) if t.get("curve")]


def plot_curves(v: View, path: Path) -> Path | None:
    """FID along training, mean ± sd over seeds: one panel per arm (x = steps, or minutes)."""
    arms = [a for a in v.s.arms() if any(curve_points(v, a, m.name) for m in v.s.specs())]
    if not arms:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(arms), figsize=(5.5 * len(arms), 3.8), squeeze=False)
    for ax, arm in zip(axes[0], arms):
        for spec in v.s.specs():
            runs = curve_points(v, arm, spec.name)
            if not runs:
                continue
            k = min(len(r) for r in runs)
            key = "steps" if arm == "steps" else "seconds"
            xs = [sum(r[i][key] for r in runs) / len(runs) / (1 if arm == "steps" else 60) for i in range(k)]
            stats = [mean_sd([r[i]["fid"] for r in runs]) for i in range(k)]
            m = [st[0] for st in stats]
            sd = [0.0 if math.isnan(st[1]) else st[1] for st in stats]
            style = "-" if "capsule" in spec.name else "--"
            line, = ax.plot(xs, m, style, marker="o", label=spec.name)
            ax.fill_between(xs, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)],
                            color=line.get_color(), alpha=0.2)
        ax.set_xlabel("iterations" if arm == "steps" else "minutes of training")
        ax.set_ylabel("FID (evaluator features) ↓")
        ax.set_title(ARM_TITLE[arm])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def karmakar_claim(v: View, arm: str, caps: str, dc: str) -> tuple[str, list[str]]:
    """Karmakar §5.2 on one arm: the verdict (FID at the last common checkpoint) and what it rests on."""
    rc, rd = curve_points(v, arm, caps), curve_points(v, arm, dc)
    if not (rc and rd):
        return "", []
    k = min(min(len(r) for r in rc), min(len(r) for r in rd))

    def at(runs, i, key):
        return sum(r[i][key] for r in runs) / len(runs)

    fc, fd = [r[k - 1]["fid"] for r in rc], [r[k - 1]["fid"] for r in rd]
    outcome = compare(fc, fd)
    where = (f"{at(rc, k - 1, 'steps'):,.0f} iterations" if arm == "steps"
             else f"{at(rc, k - 1, 'seconds') / 60:.1f} minutes; {at(rc, k - 1, 'steps'):,.0f} vs "
                  f"{at(rd, k - 1, 'steps'):,.0f} iterations")
    notes = [f"FID at the end of training ({where}): {caps} {pm(fc, '.2f')}, {dc} {pm(fd, '.2f')}"]
    # When did the DCGAN's mean curve first reach the CapsuleGAN's final mean FID (Karmakar: ~3x later)?
    target = mean_sd(fc)[0]
    reach = {}
    for name, runs in ((caps, rc), (dc, rd)):
        n = min(len(r) for r in runs)
        for i in range(n):
            if mean_sd([r[i]["fid"] for r in runs])[0] <= target:
                reach[name] = at(runs, i, "steps") if arm == "steps" else at(runs, i, "seconds") / 60
                break
    unit = (lambda x: f"{x:,.0f} iterations") if arm == "steps" else (lambda x: f"{x:.1f} minutes")
    if math.isfinite(target):
        trained = unit(at(rd, min(len(r) for r in rd) - 1, "steps" if arm == "steps" else "seconds")
                       / (1 if arm == "steps" else 60))
        got = unit(reach[dc]) if dc in reach else f"not within the {trained} trained"
        notes.append(f"{dc}'s mean FID first reached {caps}'s final mean FID ({target:.2f}) at: {got} "
                     f"({caps}: {unit(reach[caps]) if caps in reach else '–'}; Karmakar: DCGAN ~"
                     f"{PAPER_KARMAKAR_STEPS['DCGAN']:,} vs CapsuleGAN {PAPER_KARMAKAR_STEPS['CapsuleGAN']:,} iterations)")
    return outcome, notes


def curves_section(v: View, folder: Path) -> list[str]:
    if not v.s.curve_points:
        return []
    L = ["## Sample quality along training (Karmakar §5.2)", "",
         f"FID of {v.s.curve_n} samples of each run's last checkpoint at {v.s.curve_points} evenly spaced points "
         "of its budget, against as many real test images (the seed draws both); mean ± sd over seeds.", ""]
    if plot_curves(v, folder / "figures" / "fid_curves.png"):
        L += ["![FID along training](figures/fid_curves.png)", ""]
    for arm in v.s.arms():
        rows = []
        width = 0
        for spec in v.s.specs():
            runs = curve_points(v, arm, spec.name)
            if not runs:
                continue
            k = min(len(r) for r in runs)
            width = max(width, k)
            cells = []
            for i in range(k):
                x = (f"{sum(r[i]['steps'] for r in runs) / len(runs):,.0f} it" if arm == "steps" else
                     f"{sum(r[i]['seconds'] for r in runs) / len(runs) / 60:.1f} min, "
                     f"{sum(r[i]['steps'] for r in runs) / len(runs):,.0f} it")
                cells.append(f"{x}: {pm([r[i]['fid'] for r in runs], '.2f')}")
            rows.append([spec.name, *cells])
        if rows:
            rows = [r + [""] * (width + 1 - len(r)) for r in rows]
            L += [f"### {ARM_TITLE[arm]}", ""]
            L += md_table(["model", *[f"point {i + 1}" for i in range(width)]], rows)
    return L


METRICS = (("fid", "FID ↓", ".3f"), ("kid", "KID ↓", ".5f"), ("is", "IS ↑", ".3f"), ("precision", "precision", ".4f"),
           ("recall", "recall", ".4f"), ("density", "density", ".4f"), ("coverage", "coverage", ".4f"))


def metrics_section(v: View, ev: dict[str, Any]) -> list[str]:
    L = ["## Sample metrics (capsgen evaluator features, not Inception)", ""]
    first = None
    for arm in v.s.arms():
        rows = []
        for spec in v.s.specs():
            ms = v.per_seed("metrics", arm, spec.name)
            if ms:
                first = first or ms[0]
                rows.append([spec.name, str(len(ms)), *[pm([m["samples"][k] for m in ms], f) for k, _, f in METRICS],
                             pm([m["samples"]["class_coverage"]["classes_hit"] for m in ms], ".1f")])
        if rows and first:
            rows.append(["real-vs-real floor", "–", *[_f(first["real_vs_real"][k], f) for k, _, f in METRICS],
                         str(first["real_vs_real"]["class_coverage"]["classes_hit"])])
            L += [f"### {ARM_TITLE[arm]}", ""]
            L += md_table(["samples", "seeds", *[h for _, h, _ in METRICS], "classes hit"], rows)
    if first:
        c = first["counts"]
        L += [f"{c['samples']} samples per model and seed vs {c['real_test']} real test images; the floor row is "
              f"{c['real_train']} real training images vs the same test images. Evaluator: capsgen classifier, test "
              f"accuracy **{100 * ev.get('accuracy', float('nan')):.2f}%** on {v.s.data} "
              f"({first['evaluator']['feature_dim']}-D features). Neither paper reports these metrics.", ""]
    return L


def gam_section(v: View) -> list[str]:
    jaiswal = [(a, b) for a, b, p in v.s.pairs() if p == JAISWAL]
    if not jaiswal:
        return []
    L = ["## Generative Adversarial Metric (Jaiswal et al. 2018, §5.3)", ""]
    b0 = None
    for arm in v.s.arms():
        rows = []
        for a, b in jaiswal:
            rs = v.per_seed("battle", arm, f"{a}-vs-{b}")
            for seed, r in zip([sd for sd in v.s.seeds if v.st.get(f"battle/{arm}/{a}-vs-{b}/seed{sd}")], rs):
                b0 = b0 or r
                p = r["pairings"]
                rows.append([f"{a} (A) vs {b} (B), seed {seed}", _f(p["A(D_B(G_A(z)))"]), _f(p["A(D_A(G_B(z)))"]),
                             _f(p["A(D_B(x_test))"]), _f(p["A(D_A(x_test))"]), _f(r["r_samples"], ".3f"),
                             _f(r["r_test"], ".3f"), r["verdict"], r["verdict_im2016"]])
            if rs:
                rows.append([f"**mean ± sd over {len(rs)} seeds**", "", "", "", "", pm([r["r_samples"] for r in rs], ".3f"),
                             pm([r["r_test"] for r in rs], ".3f"), gam_verdict(rs, v.s.tol)[1], ""])
        if rows:
            for name, pg in PAPER_GAM.items():
                rows.append([f"Jaiswal et al. 2018, {name}", "–", "–", "–", "–", _f(pg["r_samples"], ".2f"),
                             _f(pg["r_test"], ".2f"), pg["verdict"], pg["verdict"]])
            L += [f"### {ARM_TITLE[arm]}", ""]
            L += md_table(["battle", "A(D_B(G_A(z)))", "A(D_A(G_B(z)))", "A(D_B(x_test))", "A(D_A(x_test))", "r_samples",
                         "r_test", "verdict (capsgen, ±tol on both ratios)", "verdict (Im et al. 2016)"], rows)
    if b0:
        L += [f"{b0['n']} samples per generator and {b0['n']} real test images per seed; tolerance ±{v.s.tol:g}. "
              f"Batch norm: {b0['batch_norm']['mode']}. Per seed, capsgen's verdict needs |r_test − 1| ≤ tol and "
              "r_samples outside 1 ± tol; Im et al.'s needs |r_test − 1| ≤ tol and r_samples < 1 (or > 1). Over seeds: "
              "A wins when mean + sd of r_samples is below 1 and the mean r_test is within tol of 1.", ""]
    return L


def gam_verdict(rs: list[dict[str, Any]], tol: float) -> tuple[str, str]:
    """(claim outcome "a"/"b"/unresolved key/"r_test", words) for A = CapsuleGAN over seeds."""
    rt, _, _ = mean_sd([r["r_test"] for r in rs])
    if not (math.isfinite(rt) and abs(rt - 1) <= tol):
        return "r_test", f"undecided: mean r_test not within {tol:g} of 1"
    ms, sd, n = mean_sd([r["r_samples"] for r in rs])
    if n < 2:
        return "one seed", UNRESOLVED["one seed"]
    if not math.isfinite(ms):
        return "not finite", UNRESOLVED["not finite"]
    if ms + sd < 1:
        return "a", "model A wins"
    if ms - sd > 1:
        return "b", "model B wins"
    return "spread", UNRESOLVED["spread"]


def semisup_rows(v: View, arm: str | None, name: str) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for r in v.per_seed("semisup", arm, name):
        for row in r["rows"]:
            out.setdefault(row["labelled"], []).append(row["error"])
    return out


def semisup_section(v: View) -> list[str]:
    jaiswal = [(a, b) for a, b, p in v.s.pairs() if p == JAISWAL]
    if not jaiswal:
        return []
    names = sorted({m for pair in jaiswal for m in pair}, key=lambda n: [m.name for m in v.s.specs()].index(n))
    L = ["## Semi-supervised classification (Jaiswal et al. 2018, §5.4)", ""]
    ref = v.per_seed("semisup", None, "labelled-only")
    real = v.per_seed("semisup", None, "real-unlabelled")
    paper_ns = {n for table in PAPER_SEMISUP.values() for errs in table.values() for n in errs}
    ns = sorted(set(v.s.labelled) | paper_ns)
    if ref:
        L += [f"Label Spreading error on {ref[0]['test_images']} real {v.s.data} test images; {v.s.generated} generated "
              f"images as unlabelled data; labelled images drawn **{v.s.labelled_draw}**"
              + (" (as Jaiswal et al.)" if v.s.labelled_draw == "random" else " (class-balanced; Jaiswal et al. draw at random)")
              + f" by each seed; {ref[0]['method']}; mean ± sd over seeds.", ""]
    for arm in v.s.arms():
        rows = []
        if ref:
            errs = semisup_rows(v, None, "labelled-only")
            rows.append(["labelled-only (no unlabelled images)", *[pm(errs.get(n, [])) for n in ns]])
        for name in names:
            errs = semisup_rows(v, arm, name)
            if errs:
                rows.append([name, *[pm(errs.get(n, [])) for n in ns]])
        if real:
            errs = semisup_rows(v, None, "real-unlabelled")
            got = min(r["generated"] for r in real)
            rows.append([f"real-unlabelled ({got} real images, ceiling)", *[pm(errs.get(n, [])) for n in ns]])
        for ds, table in PAPER_SEMISUP.items():
            for model, errs in table.items():
                rows.append([f"Jaiswal et al. 2018, {ds}: {model}", *[_f(errs.get(n)) for n in ns]])
        L += [f"### {ARM_TITLE[arm]}", ""]
        L += md_table(["unlabelled data", *[f"n = {n:,}" for n in ns]], rows)
    return L


def claims(v: View) -> list[str]:
    """Each paper claim, per arm, with its verdict on mean ± sd over seeds."""
    out = [RULE, ""]
    for arm in v.s.arms():
        for a, b, paper in v.s.pairs():
            if paper == KARMAKAR:
                outcome, notes = karmakar_claim(v, arm, a, b)
                if outcome:
                    what = ("CapsuleGAN reaches a given sample quality in fewer iterations than DCGAN" if arm == "steps"
                            else "the same, on the wall-clock axis (not the paper's comparison: at equal wall "
                                 "clock the iteration counts differ)")
                    out.append(f"- **Karmakar §5.2: {what}** ({ARM_TITLE[arm]}) — {'; '.join(notes)} → the claim "
                               f"{claim_word(outcome)} here.")
            else:
                rs = v.per_seed("battle", arm, f"{a}-vs-{b}")
                if rs:
                    outcome, words = gam_verdict(rs, v.s.tol)
                    im = sum(r["verdict_im2016"] == "model A wins" for r in rs)
                    out.append(f"- **GAM (Jaiswal et al. 2018, §5.3): CapsuleGAN beats the convolutional GAN** "
                               f"({ARM_TITLE[arm]}) — {a} vs {b}: r_samples = {pm([r['r_samples'] for r in rs], '.3f')}, "
                               f"r_test = {pm([r['r_test'] for r in rs], '.3f')} over {len(rs)} seed(s): *{words}* "
                               f"(Im et al.'s rule: A wins in {im} of {len(rs)} seeds) → the claim "
                               f"{claim_word(outcome) if outcome != 'r_test' else '**not resolved (r_test not ≈ 1)**'} here.")
                ca, cb = semisup_rows(v, arm, a), semisup_rows(v, arm, b)
                if ca and cb:
                    per_n = {n: compare(ca[n], cb.get(n, [])) for n in sorted(ca)}
                    if all(o == "a" for o in per_n.values()):
                        outcome = "a"
                    elif any(o == "b" for o in per_n.values()):
                        outcome = "b"
                    else:
                        outcome = next((o for o in per_n.values() if o in UNRESOLVED), "spread")
                    gaps = ", ".join(f"n={n}: {100 * (mean_sd(cb[n])[0] - mean_sd(ca[n])[0]):+.2f} pp "
                                     f"({'CapsuleGAN better' if o == 'a' else 'DCGAN better' if o == 'b' else 'not resolved'})"
                                     for n, o in per_n.items())
                    out.append(f"- **Semi-supervised (Jaiswal et al. 2018, §5.4): CapsuleGAN samples lower the Label "
                               f"Spreading error at every n** ({ARM_TITLE[arm]}) — {a} vs {b} ({gaps}; positive = "
                               f"CapsuleGAN lower) → the claim {claim_word(outcome)} here.")
            fa = [m["samples"]["fid"] for m in v.per_seed("metrics", arm, a)]
            fb = [m["samples"]["fid"] for m in v.per_seed("metrics", arm, b)]
            if fa and fb:
                o = compare(fa, fb)
                word = {"a": f"{a} lower", "b": f"{b} lower"}.get(o, UNRESOLVED.get(o, o))
                out.append(f"- Lower FID ({paper} pair, {ARM_TITLE[arm]}; neither paper reports it): {a} {pm(fa, '.2f')} "
                           f"vs {b} {pm(fb, '.2f')} → **{word}**.")
    return out


def write_reports(folder: Path, s: Settings, results: dict[str, Any], figures: dict[str, dict[str, str]],
                  env: dict[str, Any]) -> Path:
    """Write report.md and report.html into ``folder``; returns the report.md path."""
    v = View(results, s)
    st = v.st
    timing = results.get("timing", {})
    pds = _paper_dataset(s.data)
    arms = " and ".join(f"{ARM_TITLE[a]} ({f'{s.budget:g} minutes' if a == 'time' else f'{s.steps:,} iterations'} "
                        "per model and seed)" for a in s.arms())
    L = [f"# CapsuleGAN reproduction on {s.data}", "",
         f"Generated {time.strftime('%Y-%m-%d %H:%M')} by capsgen. Karmakar's pair and Jaiswal et al. 2018's pair, "
         f"each model trained at {arms}; {s.scale} scale; seeds {', '.join(map(str, s.seeds))}; discriminator "
         f"learning rates: **{s.lr}**" + (" (capsule discriminators at 2e-5, the others at 2e-4: a confound)"
                                          if s.lr == "asymmetric" else " (each equal to its generator's, as in the papers)")
         + f". Machine: {env['processor']}, {env['threads']} torch threads, torch {env['torch']}. The papers used "
         f"{pds} (Jaiswal et al. also CIFAR-10); this run uses **{s.data}**, so numbers are compared in direction, "
         "not in value.", "", "Reproduce with:", "", "```", s.command, "```", ""]
    L += models_section(v)
    L += training_section(v)
    L += samples_section(v, figures)
    L += curves_section(v, folder)
    L += metrics_section(v, st.get("evaluator", {}))
    L += gam_section(v)
    L += semisup_section(v)
    L += ["## Did the papers' claims hold at this scale?", "", *claims(v), ""]
    groups: dict[str, float] = {}
    for k, sec in timing.items():
        if not k.startswith("segment/"):                  # segments are inside their train/ stage
            groups[k.split("/")[0]] = groups.get(k.split("/")[0], 0.0) + sec
    L += ["## Scale and timing", "",
          f"- samples for metrics: {s.n_metrics} per model and seed; along training: {s.curve_n} at "
          f"{s.curve_points} points; battle: {s.n_battle}; semi-supervised: {s.generated} generated, labelled "
          f"{', '.join(map(str, s.labelled))} ({s.labelled_draw})",
          "- seconds spent per kind of stage (all invocations): " + ", ".join(f"{k} {sec:,.0f}" for k, sec in groups.items()),
          "", "Each run on its own (seed " + str(s.seeds[0]) + "; other seeds alike with `--seed`; the reproduction "
          "stops each run at its curve points with `capsgen train --resume RUN --steps K`, which gives the same run):",
          "", "```"]
    for arm in s.arms():
        for spec in s.specs():
            L.append(train_command(spec, s, arm, s.seeds[0], folder))
    for arm in s.arms():
        for spec in s.specs():
            t = st.get(f"train/{arm}/{spec.name}/seed{s.seeds[0]}")
            if t:
                L.append(f"capsgen eval {t['run']} --n {s.n_metrics} --seed {s.seeds[0]}")
    for arm in s.arms():
        for a, b, p in s.pairs():
            if p == JAISWAL:
                ra, rb = (st.get(f"train/{arm}/{x}/seed{s.seeds[0]}") for x in (a, b))
                if ra and rb:
                    L.append(f"capsgen battle {ra['run']} {rb['run']} --n {s.n_battle} --tol {s.tol:g} "
                             f"--seed {s.seeds[0]}")
                    L.append(f"capsgen semisup {ra['run']} --labelled {','.join(map(str, s.labelled))} "
                             f"--generated {s.generated} --labelled-draw {s.labelled_draw} --seed {s.seeds[0]}")
    L += ["```", ""]
    md = "\n".join(L)
    return write_report(folder, f"CapsuleGAN reproduction – {s.data}", md)

