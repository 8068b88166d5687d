"""report.md and report.html of ``capsgen reproduce gcapsnet``: measured numbers beside Chen et al.'s.

The Markdown is the source; the HTML is the same text rendered by the ``markdown`` package.
"""
from __future__ import annotations

import shlex
import statistics
import time
from pathlib import Path
from typing import Any

from capsgen.reproduce.common import compare, md_table, write_report
from capsgen.reproduce.gcapsnet.spec import (ATTACK_MODELS, PAPER_FGSM_ACCURACY, PAPER_TABLE2, PAPER_TABLE3,
                                             TABLE3_MODELS, Settings)

def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def pct(values: list[float], digits: int = 2) -> str:
    """'m ± sd' in percent of fractions ``values`` ('m' alone for one value)."""
    m, sd = mean_sd(values)
    return f"{100 * m:.{digits}f}" + (f" ± {100 * sd:.{digits}f}" if sd is not None else "")


def _paper_error(row: str, color: bool) -> str:
    entry = PAPER_TABLE2.get(row, {}).get("cifar" if color else "mnist") if row else None
    return f"{entry[0]:.2f} ± {entry[1]:.2f}" if entry else "–"


def _paper_params(row: str, color: bool) -> str:
    return (PAPER_TABLE2[row]["params"][1 if color else 0] or "–") if row else "–"


def _n(x: int) -> str:
    return f"{x:,}"


def _training(s: Settings, st: dict[str, Any]) -> str:
    """Optimiser and augmentation as the first trained model's config.json recorded them."""
    first = next((st[k] for k in sorted(st) if k.startswith("train/")), None)
    if not first:
        return "Adam"
    m = first["model"]
    decay = f" x {m['lr_decay']:g} per epoch" if m.get("lr_decay", 1) != 1 else ""
    return f"Adam at {m['lr']:g}{decay}, random shifts of up to {m['shift_pixels']} pixels"


def table2(s: Settings, st: dict[str, Any]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The table-2 rows and, per model, the numbers the claims need."""
    color = s.channels == 3
    rows, summary = [], {}
    for spec in s.model_specs():
        done = [st.get(f"train/{spec.name}/seed{k}") for k in s.seeds]
        done = [d for d in done if d]
        if not done:
            continue
        errors = [d["test_error"] for d in done]
        row = spec.paper_row_for(s.channels)
        summary[spec.name] = {"errors": errors, "params": done[0]["params"]}
        same = done[0].get("describe", {}).get("matches_paper")
        rows.append([spec.name, spec.label, row or "–", _n(done[0]["params"]) + (" (= paper)" if same else ""),
                     _paper_params(row, color),
                     pct(errors), " / ".join(f"{100 * e:.2f}" for e in errors),
                     _n(round(statistics.fmean(d["steps"] for d in done))),
                     f"{statistics.fmean(d['epochs'] for d in done):.2f}", _paper_error(row, color)])
    head = ["model", "what", "Chen et al.'s row", "params here", "params (Chen et al.)",
            f"test error % here (mean ± sd, {len(s.seeds)} seed{'s' if len(s.seeds) > 1 else ''})", "per seed", "steps", "epochs",
            f"Chen et al. error % ({'CIFAR-10' if color else 'MNIST'})"]
    return md_table(head, rows), summary


def count_rows() -> list[str]:
    """capsgen's paper-size networks beside every count Chen et al. print."""
    from capsgen.models.gcapsnet.nets import paper_parameter_counts

    rows = [[r.preset, r.part, r.paper, _n(r.ours), "yes" if r.matches else f"no — {r.note}"]
            for r in paper_parameter_counts()]
    return md_table(["preset", "part", "Chen et al.", "capsgen", "same at the printed precision"], rows)


def table3(s: Settings, st: dict[str, Any]) -> tuple[list[str], dict[int, dict[str, list[float]]]]:
    rows, found = [], {}
    names = [n for n in TABLE3_MODELS if any(st.get(f"train/{n}/seed{k}") for k in s.seeds)]
    for epoch in range(1, s.gan_epochs + 1):
        r = st.get(f"table3/epoch{epoch}")
        if not r:
            continue
        found[epoch] = r["errors"]
        paper = PAPER_TABLE3.get(epoch, {})
        rows.append([str(epoch), f"{_n(r['steps'])} ({r['epochs_done']:g})",
                     *[pct(r["errors"][n], 3) if n in r["errors"] else "–" for n in names],
                     *[f"{paper[n]:.3f}" if n in paper else "–" for n in names]])
    head = ["GAN epoch", "GAN steps (epochs done)", *[f"{n} here" for n in names],
            *[f"{n}, Chen et al." for n in names]]
    return (md_table(head, rows) if rows else []), found


def lower(errors: list[float], ref: list[float]) -> str:
    """"lower" / "higher" when the mean ± sd intervals of the two error lists do not overlap,
    else "not resolved" (also with one seed on either side: no spread to judge by) — the rule of
    :func:`capsgen.reproduce.common.compare`."""
    return {"a": "lower", "b": "higher"}.get(compare(errors, ref), "not resolved")


def verdict(outcomes: list[str]) -> str:
    """"held" if every comparison came out lower, "did not hold" if any came out higher, else
    "not resolved" — a difference inside the seed spread is not evidence either way."""
    if outcomes and all(o == "lower" for o in outcomes):
        return "held"
    return "did not hold" if "higher" in outcomes else "not resolved"


def _tally(outcomes: list[str]) -> str:
    return ", ".join(f"{outcomes.count(o)} {o}" for o in ("lower", "higher", "not resolved") if outcomes.count(o))


# Below this accuracy of the baseline on AC-GAN images, the images are not yet of their classes,
# and table 3 measures noise, not generalisation.
RECOGNISABLE_ERROR = 0.5


def claims(s: Settings, t2: dict[str, dict[str, Any]], t3: dict[int, dict[str, list[float]]],
           st: dict[str, Any]) -> list[str]:
    out = [f"A difference counts only when the mean ± sd intervals over the {len(s.seeds)} seeds do not overlap; "
           "otherwise it is **not resolved**, which is not the same as \"did not hold\".", ""]
    g_models = [m for m in ("fc-recon", "fc", "conv-recon", "conv", "multilayer") if m in t2]
    for ref, who in (("baseline", "the CNN baseline"), ("capsnet", "CapsNet (dynamic routing)")):
        if ref not in t2 or not g_models:
            continue
        ref_m = mean_sd(t2[ref]["errors"])[0]
        outcomes = [lower(t2[m]["errors"], t2[ref]["errors"]) for m in g_models]
        gaps = ", ".join(f"{m} {100 * (mean_sd(t2[m]['errors'])[0] - ref_m):+.2f} pp ({o})"
                         for m, o in zip(g_models, outcomes))
        out.append(f"- **Table 2: every G-CapsNet has a lower test error than {who}** — mean error difference "
                   f"to {ref} ({gaps}; negative = G-CapsNet better) → **{verdict(outcomes)}** here "
                   f"({_tally(outcomes)}).")
    if "baseline" in t2 and g_models:
        fewer = [m for m in g_models if t2[m]["params"] < t2["baseline"]["params"]]
        held = "held" if len(fewer) == len(g_models) else "did not hold"
        out.append(f"- **G-CapsNets use fewer parameters than the baseline** — {len(fewer)} of {len(g_models)} here "
                   f"(baseline {_n(t2['baseline']['params'])}) → **{held}** (a count, no seed spread).")
    if t3 and all(k in next(iter(t3.values())) for k in ("baseline", "fc", "conv")):
        last = mean_sd(t3[max(t3)]["baseline"])[0]
        for m in ("fc", "conv"):
            claim = f"- **Table 3: the {m.upper()} G-CapsNet errs less than the baseline on AC-GAN images** — "
            if last > RECOGNISABLE_ERROR:
                out.append(claim + f"**not resolved** (not tested at this scale): after the last GAN epoch the baseline still errs on "
                           f"{100 * last:.1f} % of the images, so they are not yet images of their classes.")
                continue
            outcomes = [lower(errs[m], errs["baseline"]) for errs in t3.values()]
            out.append(claim + f"per epoch {', '.join(outcomes)} → **{verdict(outcomes)}** here.")
    fg = {m: st.get(f"attack/{m}/fgsm") for m in ATTACK_MODELS if m in PAPER_FGSM_ACCURACY}
    if all(fg.values()):
        accs = ", ".join(f"{m} {100 * r['attacked_accuracy']:.2f} %" for m, r in fg.items())
        out.append(f"- **4.3: under black-box FGSM (ε = 8/255) the G-CapsNets are about as robust as the "
                   f"baseline** (Chen et al.: 11.35 / 8.92 / 11.35 %) — attacked accuracy here: {accs} → "
                   f"**not resolved**: {DEGENERATE_FGSM}")
    ua = {m: st.get(f"attack/{m}/uap") for m in ATTACK_MODELS if m != "capsnet"}
    if all(ua.values()):
        accs = ", ".join(f"{m} {100 * r['clean_accuracy']:.1f} → {100 * r['attacked_accuracy']:.1f} %"
                         for m, r in ua.items())
        out.append(f"- **Supplementary 6.2: G-CapsNets are as vulnerable as CNNs to a white-box universal "
                   f"perturbation** — clean → attacked accuracy here: {accs} → {attack_verdict(ua)}")
    pg = {m: st.get(f"attack/{m}/pgd") for m in ATTACK_MODELS}
    if all(pg.values()):
        accs = ", ".join(f"{m} {100 * r['clean_accuracy']:.1f} → {100 * r['attacked_accuracy']:.1f} %"
                         for m, r in pg.items())
        out.append(f"- White-box PGD (no claim of the paper; does trainable routing change robustness?) — "
                   f"clean → attacked accuracy here: {accs}; {attack_verdict(pg, claim=False)}")
    return out


# Chen et al.'s black-box FGSM accuracies are 1135 and 892 out of 10,000: exactly the shares of the
# digits 1 and 5 in the MNIST test set, i.e. what a classifier that answers one class for every
# image scores. A perturbation that large is not 8/255 on [0, 1] inputs; "L-inf <= 8" on [0, 1]
# inputs (eps = 8, every pixel free) would do it.
DEGENERATE_FGSM = ("Chen et al.'s figures are 1135/10000 and 892/10000, the shares of the digits 1 and 5 in the MNIST "
                   "test set: what a classifier that answers one class for every image scores, so their attack "
                   "destroyed the images (as ε = 8 on [0, 1] inputs would) rather than perturbing them by 8/255; "
                   "the two are not comparable.")
# An attack whose accuracy drop is below this (in accuracy, on the attacked images) did not work.
ATTACK_WORKED = 0.05


def attack_verdict(results: dict[str, dict[str, Any]], claim: bool = True) -> str:
    """A white-box attack's verdict: it must have worked on every model before robustness compares
    (``claim=False``: the same facts without a verdict word, for a measurement the paper makes no claim on)."""
    failed = [m for m, r in results.items() if r["clean_accuracy"] - r["attacked_accuracy"] < ATTACK_WORKED]
    if failed:
        raised = [m for m in failed if results[m]["attacked_accuracy"] > results[m]["clean_accuracy"]]
        how = f"; it *raised* the accuracy of {', '.join(raised)}" if raised else ""
        return ("**not resolved**: " if claim else "") + (
            f"the attack failed (accuracy fell by less than {100 * ATTACK_WORKED:g} points) on "
            f"{', '.join(failed)}{how}, so this run says nothing about their vulnerability.")
    drops = {m: r["clean_accuracy"] - r["attacked_accuracy"] for m, r in results.items()}
    return ("**held**: " if claim else "") + ("the attack worked on every model (accuracy drops "
            + ", ".join(f"{m} {100 * d:.1f} points" for m, d in drops.items()) + "); one seed, one perturbation each.")


def deviations(s: Settings, st: dict[str, Any]) -> list[str]:
    """Every way this reproduction differs from Chen et al.'s protocol, from the recorded configs."""
    trained = [st[k] for k in sorted(st) if k.startswith("train/")]
    steps = [t["steps"] for t in trained]
    out = [f"- **Data and length**: {s.data}, {s.budget:g} minutes of training per model and seed (equal wall "
           "clock, not equal steps or epochs: " + (f"{min(steps):,}–{max(steps):,} steps per model" if steps else "–")
           + "); Chen et al. trained on " + ("CIFAR-10" if s.channels == 3 else "MNIST") + " in Caffe to convergence.",
           f"- **Widths**: `--scale {s.scale}`" + (" (the papers' sizes)." if s.scale == "paper" else
                                                   ": fewer maps than the paper's networks (see Scale)."),
           "- **Optimiser**: " + _training(s, st) + " for every model; Chen et al.'s solver settings are their "
           "Caffe prototxts', not Adam, and they do not say they shifted the inputs.",
           "- **Coupling initialisation** of the trainable routing: " + ", ".join(sorted(
               {str(t['model'].get('coupling_init')) for t in trained if t["model"].get("coupling_init")}) or {"–"})
           + " (1/J, dynamic routing's first iteration); the authors' prototxts fill them with Xavier.",
           "- **Attack budget**: \"L∞ ≤ 8\" read as ε = 8/255 on [0, 1] inputs (the paper does not say the scale)."]
    if s.attacks:
        out.append(f"- **Black-box substitute**: a LeNet trained for {s.substitute_steps} steps on the training split "
                   f"(Chen et al. do not say how theirs was trained); attacks on the first {s.attack_n} test images "
                   f"of the seed-{s.seeds[0]} models only; the universal perturbation with {s.uap_iters} iterations.")
    if s.gan_epochs:
        out.append(f"- **Table 3**: {s.gan_family} for at most {(s.gan_minutes or s.budget):g} minutes per epoch "
                   f"({s.per_class} images per class after each) instead of full MNIST epochs.")
    out.append("- **Test error** on the last weights of each run (no checkpoint selection on the test split).")
    return out


def attacks_section(s: Settings, st: dict[str, Any]) -> list[str]:
    rows, pictures = [], []
    for m in ATTACK_MODELS:
        for method in s.attacks:
            r = st.get(f"attack/{m}/{method}")
            if not r:
                continue
            paper = ((f"{PAPER_FGSM_ACCURACY[m]:.2f}" if m in PAPER_FGSM_ACCURACY else "– (not attacked)")
                     if method == "fgsm" else "figure 1: falls sharply by iteration 100" if method == "uap"
                     else "– (not in the paper)")
            extra = (f"LeNet substitute, {r['substitute']['steps']} steps, {100 * r['substitute']['clean_accuracy']:.1f} % clean"
                     if "substitute" in r else f"{r['uap']['iterations']} iterations" if "uap" in r
                     else f"{r['pgd']['steps']} steps, random start" if "pgd" in r else "")
            rows.append([m, f"{method}, {r['mode']}", f"{255 * r['epsilon']:.3g}/255", str(r["n"]), extra,
                         f"{100 * r['clean_accuracy']:.2f}", f"{100 * r['attacked_accuracy']:.2f}", paper])
            for name, rel in r["files"].items():
                if name.endswith(".png") and name != "examples.png":
                    pictures.append(f"![{m} {method} {Path(name).stem}]({rel})")
    if not rows:
        return []
    return [*md_table(["model", "attack", "ε", "images", "", "clean accuracy %", "attacked accuracy %",
                     "Chen et al. (attacked accuracy %)"], rows), " ".join(pictures), ""]


def write_reports(folder: Path, s: Settings, results: dict[str, Any], env: dict[str, Any]) -> Path:
    """Write report.md and report.html into ``folder``; returns the report.md path."""
    st = results["stages"]
    color = s.channels == 3
    paper_data = "CIFAR-10" if color else "MNIST"
    shape = "x".join(map(str, env["shape"][1:])) + f"x{env['shape'][0]}"
    L = [f"# G-CapsNet reproduction (Chen et al.) on {s.data}", "",
         f"Generated {time.strftime('%Y-%m-%d %H:%M')} by capsgen.", "",
         "## Scale", "",
         f"- **data**: {s.data} ({_n(env['train_size'])} training and {_n(env['test_size'])} test images, {shape}); "
         f"Chen et al. used {paper_data} ({'50,000' if color else '60,000'} / 10,000) and trained to convergence in "
         "Caffe, so numbers here are compared in direction, not in value.",
         f"- **every classifier**: {s.budget:g} minutes of training"
         + (f", at most {s.epochs:g} epochs" if s.epochs else "") + f", batch {s.batch_size}, "
         + _training(s, st) + f", seeds {', '.join(map(str, s.seeds))}; test error on the whole test split "
         "with the last weights.",
         f"- **network sizes**: `--scale {s.scale}` — "
         + ("Chen et al.'s networks as printed (presets of the gcapsnet family; capsnet at Sabour et al.'s size)."
            if s.scale == "paper" else
            "the paper's architectures with fewer maps (first conv 64 maps, 8 primary capsule types; "
            "baseline convs 32-32-16 on 1-channel data, 32-64 on 3-channel data); the multi-layer "
            "G-CapsNet (716K) at its paper size. The table says how many parameters each has.")
         + (f" Extra settings for every model that has them: `{' '.join(s.extra)}`." if s.extra else ""),
         f"- **AC-GAN images (table 3)**: {s.gan_family}, up to {s.gan_epochs} epochs "
         f"({(s.gan_minutes or s.budget):g} minutes per epoch at most), {s.per_class} images per class after each.",
         f"- **attacks**: {', '.join(s.attacks) or 'none'} on the first {s.attack_n} test images, seed-{s.seeds[0]} "
         "models.",
         f"- **machine**: {env['processor']}, {env['threads']} torch threads, torch {env['torch']}.", "",
         "Reproduce with:", "", "```", s.command, "```", ""]

    t2_lines, t2 = table2(s, st)
    L += ["## Test error versus parameters (Chen et al., table 2)", "", *t2_lines]
    if color:
        L += ["Chen et al.'s CIFAR-10 G-CapsNets have 2.67M parameters, which leaves no room for a decoder "
              "(one for 32x32x3 images alone has 3.7M), although the table lists them in its rows without "
              "\"*\"; their figures therefore stand beside the models without reconstruction here. "
              "capsgen's CapsNet always has its decoder.", ""]
    L += ["### capsgen's paper-size networks against every count Chen et al. print", "", *count_rows()]

    t3_lines, t3 = table3(s, st)
    if t3_lines:
        L += ["## Error on AC-GAN images (Chen et al., table 3)", "",
              f"After each epoch of one {s.gan_family} run, {s.per_class} images of every class are drawn "
              f"(files `acgan/epoch-N.npz`) and classified by every seed's baseline, FC and conv G-CapsNet "
              "(mean ± sd over seeds, %). Chen et al. trained the AC-GAN on MNIST with one classifier each.", "",
              *t3_lines]
        for epoch in sorted(t3):
            L += [f"epoch {epoch}: ![AC-GAN epoch {epoch}]({st[f'table3/epoch{epoch}']['grid']})", ""]
    att = attacks_section(s, st)
    if att:
        L += ["## Adversarial attacks (Chen et al., 4.3 and supplementary 6.2)", "", *att]
    L += ["## Did Chen et al.'s claims hold at this scale?", "", *claims(s, t2, t3, st), ""]
    L += ["## Deviations from the paper", "", *deviations(s, st), ""]
    timing = results.get("timing", {})
    L += ["## Timing", "", f"- this invocation: {env['this_invocation_seconds']:g} s",
          "- stage times (s): " + ", ".join(f"{k} {v:g}" for k, v in timing.items()), "",
          "## One piece at a time", "", "```"]
    for spec in s.model_specs()[:1]:
        run = st.get(f"train/{spec.name}/seed{s.seeds[0]}")
        if run:
            path = shlex.quote(str(folder / run["run"]))
            L.append(f"capsgen eval {path}")
            L.append(f"capsgen attack {path} --method fgsm --n {s.attack_n} --out attacks-{spec.name}")
    L += ["capsgen models    # the gcapsnet presets", "```", ""]
    md = "\n".join(L)
    return write_report(folder, f"G-CapsNet reproduction – {s.data}", md)
