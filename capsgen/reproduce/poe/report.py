"""report.md and report.html of ``capsgen reproduce poe``: measurements beside Hauser's claims.

The Markdown is the source; the HTML is the same text rendered by the ``markdown`` package.
"""
from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

from capsgen.reproduce.common import md_table, write_report
from capsgen.reproduce.poe.spec import (ARM_LABEL, CLAIMS, DIVERSE_RATIO, PURE_CAPSULE, PURITY_MARGIN,
                                        REALISTIC_PRECISION, STAGE_SHARES, Settings)

def _f(v: Any, fmt: str = ".4f") -> str:
    return "–" if v is None else f"{v:{fmt}}"


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def _measured(st: dict[str, Any], arm: str) -> dict[str, Any] | None:
    m = st.get(f"measure/{arm}")
    return m if m and "no_decoder" not in m else None


def settings_rows(s: Settings, st: dict[str, Any]) -> list[str]:
    rows = []
    for arm in s.arms:
        t, cal = st.get(f"train/{arm}"), st.get(f"calibrate/{arm}")
        if not t:
            continue
        m = t["model"]
        sps = cal["seconds_per_step"] if cal else {}
        caps = not m.get("twin")
        rows.append([arm, ARM_LABEL[arm], ("yes" if m["centre_capsules"] else "no") if caps else "–",
                     m["decoder_rule"] if caps else "–",
                     f"{m['ae_steps']} / {m['stat_steps']} / {m['w_steps']} / {m['u_steps']}",
                     " / ".join(f"{sps[k]:.3g}" for k in ("ae", "stats", "w", "u") if k in sps) or "–",
                     f"{t['steps']}", f"{t['seconds']:.0f}", t["diverged"] or "no"])
    return md_table(["arm", "setting", "centred", "decoder rule", "steps ae / stats / W / U",
                   "s per step ae / stats / W / U", "steps done", "seconds", "diverged"], rows)


def error_rows(s: Settings, st: dict[str, Any]) -> list[str]:
    rows = []
    for arm in s.arms:
        m = st.get(f"measure/{arm}")
        if not m:
            continue
        if "no_decoder" in m:
            rows.append([arm, *["–"] * 8, m["no_decoder"]])
            continue
        e, t = m["errors"], st.get(f"train/{arm}", {})
        note = (f"{t['diverged']}; measured at its last good checkpoint (step {t['steps']})"
                if t.get("diverged") else "")
        rows.append([arm, str(e["n"]), _f(e["ae_mse"]), _f(e.get("mean_capsule_error")), _f(e.get("w_recon")),
                     _f(e.get("w_pixel_mse")), _f(e.get("code_resultant"), ".3f"), _f(e.get("u_recon")),
                     _f(e.get("pixel_mse")), note])
    return md_table(["arm", "test images", "AE pixel MSE", "capsule error of the training mean (baseline)",
                   "W capsule error (reverse route)", "W route, pixel MSE", "code resultant (1 = collapsed)",
                   "U capsule error", "whole model, pixel MSE", "note"], rows)


def negative_rows(s: Settings, st: dict[str, Any]) -> list[str]:
    rows = []
    for arm in s.arms:
        m = _measured(st, arm)
        if m:
            n = m["negatives"]
            rows.append([arm, str(n["n"]), _pct(n["full"]), _pct(n["restricted"]), _pct(n["negated"]),
                         _pct(n["negation_fixes"]), _pct(n["negation_breaks"])])
    b = st.get("measure/baseline")
    if b:
        rows.append([f"{s.baseline} (baseline)", "", _pct(b["negatives"]), "", "", "", ""])
    return md_table(["arm", "samples per domain", "negatives, full sphere", "restricted half", "full sphere, -g",
                   "negatives that -g turns positive", "positives that -g turns negative"], rows)


def purity_rows(s: Settings, st: dict[str, Any]) -> tuple[list[str], list[str]]:
    summary, per = [], {}
    for arm in s.arms:
        m = _measured(st, arm)
        if not m:
            continue
        for domain in ("full", "restricted"):
            p = m[domain]["purity"]
            summary.append([arm, domain, _pct(p["mean"]), _pct(p["pooled"]), str(p["classes"]),
                            _f(p["mean_spread_ratio"], ".2f")])
            per[(arm, domain)] = p["per_capsule"]
    b = st.get("measure/baseline")
    if b:
        summary.append([f"{s.baseline} (baseline)", "", "", _pct(b["pooled"]), "", ""])
    head = ["arm", "domain", "mean purity of a capsule", "pooled: largest class share of all samples",
            "distinct dominant classes", "within-capsule spread / real within-class spread"]
    detail = []
    if per:
        J = max(len(v) for v in per.values())
        rows = [[str(j), *[f"{v[j]['class']} ({100 * v[j]['purity']:.0f} %)" if j < len(v) else "–"
                           for v in per.values()]] for j in range(J)]
        detail = md_table(["capsule", *[f"{a}, {d}" for a, d in per]], rows)
    return md_table(head, summary), detail


def metric_rows(s: Settings, st: dict[str, Any]) -> list[str]:
    rows, floor = [], None
    for arm in s.arms:
        m = _measured(st, arm)
        if not m:
            continue
        for domain in ("full", "restricted"):
            r = m[domain]["metrics"]
            floor = floor or r["real_vs_real"]
            rows.append([f"poe {arm}, {domain}", *_metric_cells(r["samples"]), str(r["counts"]["samples"])])
    b = st.get("measure/baseline")
    if b:
        floor = floor or b["metrics"]["real_vs_real"]
        t = st.get("train/baseline", {})
        rows.append([f"{s.baseline} ({t.get('steps', '?')} steps in {t.get('seconds', 0):.0f} s)",
                     *_metric_cells(b["metrics"]["samples"]), str(b["metrics"]["counts"]["samples"])])
    if floor:
        rows.append(["real training images (floor)", *_metric_cells(floor), ""])
    return md_table(["samples", "FID ↓", "KID ↓", "precision ↑", "recall ↑", "density", "coverage", "n"], rows)


def _metric_cells(r: dict[str, Any]) -> list[str]:
    return [f"{r['fid']:.2f}", f"{r['kid']:.4f}", f"{r['precision']:.3f}", f"{r['recall']:.3f}",
            f"{r['density']:.3f}", f"{r['coverage']:.3f}"]


def claims(s: Settings, st: dict[str, Any], env: dict[str, Any]) -> list[str]:
    """One paragraph per claim of Hauser's, with the measurement and a verdict per arm."""
    out = []
    base = st.get("measure/baseline")
    for key, text in CLAIMS:
        lines = []
        for arm in s.arms:
            m = _measured(st, arm)
            if key == "time":
                t = st.get(f"train/{arm}")
                if t:
                    lines.append(f"{arm}: {t['seconds']:.0f} s ({t['seconds'] / 60:.1f} minutes) for {t['steps']} steps on "
                                 f"{env['threads']} CPU thread(s) — a scale statement, not a verdict.")
                continue
            if not m:
                lines.append(f"{arm}: not measured (no trained decoder).")
                continue
            lines.append(f"{arm}: " + _verdict(key, m, base, s))
        out += [f"- **{text}**", *[f"  - {line}" for line in lines]]
    return out


def _verdict(key: str, m: dict[str, Any], base: dict[str, Any] | None, s: Settings) -> str:
    if key == "realistic":
        parts = []
        for domain in ("full", "restricted"):
            r = m[domain]["metrics"]["samples"]
            parts.append(f"{domain}: precision {r['precision']:.3f}, FID {r['fid']:.1f}")
        best = max(m[d]["metrics"]["samples"]["precision"] for d in ("full", "restricted"))
        vs = ""
        if base:
            b = base["metrics"]["samples"]
            vs = f"; {s.baseline} at the same wall clock: precision {b['precision']:.3f}, FID {b['fid']:.1f}"
        held = best >= REALISTIC_PRECISION
        return (f"{'; '.join(parts)}{vs} → **{'held' if held else 'did not hold'}** (held = at least "
                f"{100 * REALISTIC_PRECISION:.0f} % of the samples inside the real images' k-NN manifold).")
    if key == "objects":
        p = m["restricted"]["purity"]
        held = p["mean"] >= PURE_CAPSULE and p["mean"] - p["pooled"] >= PURITY_MARGIN
        return (f"restricted domain: a capsule's samples share one class {100 * p['mean']:.1f} % of the time on "
                f"average (pooled over capsules: {100 * p['pooled']:.1f} %), {p['classes']} distinct dominant "
                f"classes over the capsules → **{'held' if held else 'did not hold'}** (held = mean purity ≥ "
                f"{100 * PURE_CAPSULE:.0f} % and ≥ {100 * PURITY_MARGIN:.0f} points above the pooled share).")
    if key == "instantiation":
        p = m["restricted"]["purity"]
        ratio = p["mean_spread_ratio"]
        objects = p["mean"] >= PURE_CAPSULE and p["mean"] - p["pooled"] >= PURITY_MARGIN
        varied = ratio is not None and ratio >= DIVERSE_RATIO
        verdict = "held" if varied and objects else "did not hold"
        why = "" if objects else " (the capsules do not hold specific objects, so their variation is not of similar objects)"
        return (f"a capsule's samples differ from each other by {_f(ratio, '.2f')} of the spread of real test "
                f"images of its dominant class → **{verdict}**{why} (held = ratio ≥ {DIVERSE_RATIO:g} and the "
                "objects claim held).")
    if key == "negatives":
        n = m["negatives"]
        if not n["full"]:
            return (f"no sample of the full sphere is a negative ({n['n']} samples) → **did not appear** "
                    "here; the -g test has nothing to turn positive"
                    + (f" (-g gives {_pct(n['negated'])} negatives)." if n["negated"] else "."))
        held = (n["negation_fixes"] or 0) >= 0.5 and (n["negation_breaks"] or 0) > 0
        return (f"{_pct(n['full'])} of full-sphere samples are negatives; -g turns {_pct(n['negation_fixes'])} of "
                f"them positive and {_pct(n['negation_breaks'])} of the positives negative → "
                f"**{'held' if held else 'did not hold'}** (held = -g fixes at least half and breaks some).")
    if key == "restricted":
        n = m["negatives"]
        if not n["full"]:
            return "no negatives on the full sphere → **nothing to alleviate** here."
        held = n["restricted"] < n["full"]
        return (f"negatives: full sphere {_pct(n['full'])}, restricted half {_pct(n['restricted'])} → "
                f"**{'held' if held else 'did not hold'}**.")
    raise ValueError(key)


def write_reports(folder: Path, s: Settings, results: dict[str, Any], env: dict[str, Any]) -> Path:
    """Write report.md and report.html into ``folder``; returns the report.md path."""
    st = results["stages"]
    shape = "x".join(map(str, env["shape"][1:])) + f"x{env['shape'][0]}"
    first = next((st[f"train/{a}"] for a in s.arms if st.get(f"train/{a}")), None)
    arch = ""
    if first:
        m = first["model"]
        arch = (f"autoencoder {m['ae_kernel']}x{m['ae_kernel']} convolutions of {m['ae_channels']} maps (stride "
                f"{m['ae_stride']}), capsules of {m['primary_dim']}-D → {m['code_capsules']} code capsules of "
                f"{m['code_dim']}-D, {m['routing_iterations']} routing iterations; W lr {m['w_lr']:g}, U lr "
                f"{m['u_lr']:g}, autoencoder Adam {m['ae_lr']:g}")
    bl = st.get("train/baseline")
    L = [f"# Products of expert capsules (Hauser) on {s.data}", "",
         f"Generated {time.strftime('%Y-%m-%d %H:%M')} by capsgen.", "",
         "## Scale", "",
         f"- **data**: {s.data} ({env['train_size']:,} training and {env['test_size']:,} test images, {shape}); "
         "Hauser trained on MNIST and Fashion-MNIST (60,000 images each) \"on a single gpu\" for \"about "
         "fifteen minutes\" with TensorFlow; step counts, learning rates, L2 weight and dropout rate are not "
         "given, so the values here are capsgen's (PoEConfig notes their measurements).",
         f"- **each poe run**: {s.budget:g} minutes planned, batch {s.batch_size}, seed {s.seed}; the stages get "
         + ", ".join(f"{k} {100 * v:.0f} %" for k, v in STAGE_SHARES.items())
         + " of the time after the capsule statistics, from the seconds per step measured first (table below)."
         + (f" Architecture: {arch}." if arch else ""),
         (f"- **baseline**: {s.baseline} (capsgen defaults) for {bl['seconds'] / 60:.1f} minutes — the mean "
          f"wall clock of the poe runs — {bl['steps']} steps." if bl else "- **baseline**: none."),
         f"- **samples**: {s.per_capsule} per capsule and domain (the same Gaussian poses on the full sphere, the "
         "restricted half and negated), classified by capsgen's classifier of the dataset (test accuracy "
         f"{100 * env['evaluator_accuracy']:.1f} %), which also embeds them for FID/KID/precision/recall.",
         f"- **machine**: {env['processor']}, {env['threads']} torch threads, torch {env['torch']}.", "",
         "Reproduce with:", "", "```", s.command, "```", "",
         "## The two settings", "", *settings_rows(s, st),
         "`hauser` is the paper as printed; `centred` subtracts the primary capsules' training mean before W "
         "and adds it back after U (not in the paper) and trains U by the Gaussian (delta) rule, because "
         "section 4.1's rule has no fixed point once the decoded capsules pass length 1 "
         "(capsgen.nn.contrastive.decoder_cd_delta).", "",
         "## Errors per stage (test split)", "", *error_rows(s, st),
         "The capsule errors are mean_b Σ_i ||x_i − x̂_i||² / I in the visible capsules; predicting every capsule "
         "by its training mean scores the baseline column. The code resultant is, per capsule, the length of "
         "the mean unit code direction over the test images (1: every image gives the same direction).", ""]
    J = first["model"]["code_capsules"] if first else 20
    L += [f"## Figure 2: {J} capsules × 4 samples", "",
          f"Column j: capsule j alone on (the others zero), row r: the r-th Gaussian pose; all {4 * J} drawn together. "
          "Full sphere (Hauser's 2a/2c), restricted half (2b/2d), and the same poses negated (-g, full sphere). "
          "Reconstructions: test images; the autoencoder's; W's reverse route; the whole model (W then U).", ""]
    for arm in s.arms:
        m = _measured(st, arm)
        if not m:
            continue
        g = m["grids"]
        L += [f"### {arm}", "", f"full sphere: ![{arm} full]({g['full']})", "",
              f"restricted half: ![{arm} restricted]({g['restricted']})", "",
              f"negated poses: ![{arm} negated]({g['negated']})", "",
              f"reconstructions: ![{arm} reconstructions]({g['reconstructions']})", ""]
    b = st.get("measure/baseline")
    if b:
        L += [f"### {s.baseline} at the same wall clock", "", f"![{s.baseline} samples]({b['grid']})", ""]
    summary, detail = purity_rows(s, st)
    L += ["## Negatives: full sphere against the restricted half", "", *negative_rows(s, st),
          "A negative: the image's border (2 pixels) is nearer its brightest pixels than its darkest "
          "(capsgen.models.poe.nets.negative_mask).", "",
          "## Do capsules learn specific objects?", "",
          "The evaluator's class of each sample; a capsule's purity is the share of its samples in its most "
          "frequent class. The spread is the mean pixel distance between two samples of a capsule over that "
          "between two real test images of the capsule's dominant class.", "", *summary,
          "Per capsule, dominant class (purity):", "", *detail,
          "## Sample quality against the baseline at the same wall clock", "", *metric_rows(s, st),
          "Features from capsgen's classifier, not Inception: compare only within this table.", "",
          "## Hauser's claims, one by one", "", *claims(s, st, env), "",
          "## Deviations from the paper", "",
          "- `centred` only: the primary capsules' training mean is subtracted before W (not in the paper). "
          "Without it Algorithm 1 collapsed every code capsule onto one direction for all images in capsgen's "
          "mnist-5k measurements (the code-resultant column shows it per run).",
          "- `centred` only: U is trained by the Gaussian (delta) rule; section 4.1's rule is `hauser`'s.",
          "- The restricted domain is the half-sphere around each capsule's mean training code direction; the "
          "paper says \"the half of S^15 that is visited during training\" without saying how it was found.",
          "- Step counts, learning rates, momentum, L2, learning-rate decay and dropout are capsgen's (the paper "
          "gives none); a CPU thread, not a GPU; mnist-5k-sized data when so chosen.", "",
          "## Timing", "", f"- this invocation: {env['this_invocation_seconds']:g} s",
          "- stage times (s): " + ", ".join(f"{k} {v:g}" for k, v in results.get("timing", {}).items()), "",
          "## One piece at a time", "", "```"]
    for arm in s.arms:
        t = st.get(f"train/{arm}")
        if t:
            path = shlex.quote(str(folder / t["run"]))
            L += [f"capsgen sample {path} --n 80 --capsule 3 --domain restricted --out {arm}-capsule3.npz "
                  f"--grid {arm}-capsule3.png", f"capsgen eval {path}"]
    L += ["capsgen models    # the poe preset hauser", "```", ""]
    md = "\n".join(L)
    return write_report(folder, f"Products of expert capsules – {s.data}", md)
