"""report.md / report.html of ``capsgen reproduce twins``: capsule model vs matched twin, per pair.

Every claim row carries one of three verdicts, by :func:`~capsgen.reproduce.common.compare` over
the seeds: "capsule better" / "twin better" when the mean ± sd intervals do not overlap, "not
resolved" when they do (or "one seed" with fewer than two).
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from capsgen.reproduce.common import compare, md_table, mean_sd_n, write_report
from capsgen.reproduce.twins.spec import METRICS, Settings, split_pair

VERDICT = {"a": "capsule better", "b": "twin better", "spread": "not resolved", "one seed": "one seed",
           "not finite": "not finite"}
ARM_LABEL = {"capsule": "capsule model", "twin-time": "twin, equal wall clock", "twin-steps": "twin, equal steps"}


def _fmt(xs: list[float], digits: int) -> str:
    m, sd, n = mean_sd_n(xs)
    if n == 0:
        return "–"
    return f"{m:.{digits}f}" if n < 2 else f"{m:.{digits}f} ± {sd:.{digits}f}"


def _arm(stages: dict[str, Any], pair: str, seeds: tuple[int, ...], arm: str) -> list[tuple[dict, dict]]:
    out = []
    for seed in seeds:
        t, e = stages.get(f"train/{pair}/s{seed}/{arm}"), stages.get(f"eval/{pair}/s{seed}/{arm}")
        if t is not None and e is not None:
            out.append((t, e))
    return out


def pair_section(pair: str, s: Settings, stages: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """Markdown lines of one pair, and its verdict rows (for the summary)."""
    from capsgen.models import get_family

    family, preset = split_pair(pair)
    arms = {arm: _arm(stages, pair, s.seeds, arm) for arm in ARM_LABEL}
    fixed = not arms["twin-steps"] and bool(arms["twin-time"])
    if fixed:                                 # the config fixes the length: one twin run, equal steps
        arms["twin-steps"] = arms.pop("twin-time")
    present = [name for name, _, _, _, _ in METRICS
               if any(name in e["metrics"] for rows in arms.values() for _, e in rows)]
    meta = {m[0]: m for m in METRICS}
    lines = [f"## {pair}", "",
             f"`{family}`" + (f" preset `{preset}`" if preset else " defaults") + "; the twin: "
             + get_family(family).config_cls.TWIN + ".", ""]
    if fixed:
        lines += [f"{family}'s config fixes the length of a run, so both arms train the same steps; "
                  "there is no separate equal-wall-clock twin.", ""]
    head = ["arm", "seeds", "steps", "ms / step", "parameters", *[meta[m][4] for m in present]]
    rows = []
    for arm, got in arms.items():
        if not got:
            continue
        params = [sum(t["params"].values()) for t, _ in got]
        rows.append([ARM_LABEL[arm], ",".join(str(sd) for sd in s.seeds[:len(got)]),
                     _fmt([t["steps"] for t, _ in got], 0), _fmt([t["ms_per_step"] for t, _ in got], 1),
                     f"{params[0]:,}", *[_fmt([e["metrics"].get(m, float("nan")) for _, e in got], meta[m][3])
                                         for m in present]])
    lines += md_table(head, rows)
    verdicts = []
    caps = arms.get("capsule", [])
    for arm in ("twin-time", "twin-steps"):
        twin = arms.get(arm, [])
        if not caps or not twin:
            continue
        for m in present:
            a = [e["metrics"][m] for _, e in caps if m in e["metrics"]]
            b = [e["metrics"][m] for _, e in twin if m in e["metrics"]]
            v = VERDICT[compare(a, b, lower_is_better=meta[m][2])]
            verdicts.append({"pair": pair, "axis": "equal wall clock" if arm == "twin-time" else "equal steps",
                             "metric": meta[m][4], "capsule": _fmt(a, meta[m][3]), "twin": _fmt(b, meta[m][3]),
                             "verdict": v})
    lines += ["Verdicts (capsule model vs twin; mean ± sd over seeds, the intervals must not overlap): "
              + "; ".join(f"{v['axis']}, {v['metric']}: **{v['verdict']}**" for v in verdicts) + ".", ""]
    per_seed = []
    for arm, got in arms.items():
        for (t, e), seed in zip(got, s.seeds):
            per_seed.append([ARM_LABEL[arm], str(seed), str(t["steps"]),
                             *[f"{e['metrics'][m]:.{meta[m][3]}f}" if m in e["metrics"] else "–" for m in present],
                             f"`{t['run']}`"])
    lines += ["Per seed:", ""] + md_table(["arm", "seed", "steps", *[meta[m][4] for m in present], "run"], per_seed)
    grids = [(ARM_LABEL[arm], got[0][1]["grid"]) for arm, got in arms.items() if got and "grid" in got[0][1]]
    if grids:
        lines += [f"Samples of seed {s.seeds[0]} (last weights, the same seed for every arm):", ""]
        lines += [" ".join(f"![{label}]({path})" for label, path in grids), "",
                  " · ".join(f"{label}: `{path}`" for label, path in grids), ""]
    return lines, verdicts


def write_reports(folder: Path, s: Settings, data: dict[str, Any]) -> Path:
    import torch

    stages = data["stages"]
    sections, verdicts = [], []
    for pair in s.pairs:
        lines, v = pair_section(pair, s, stages)
        sections += lines
        verdicts += v
    length = (f"{s.budget:g} minutes of wall clock per capsule run" if s.steps is None else
              f"{s.steps:,} steps per capsule run (the equal-time twin gets the capsule run's wall clock)")
    wins = [v for v in verdicts if v["verdict"] == "capsule better"]
    losses = [v for v in verdicts if v["verdict"] == "twin better"]
    md = [f"# Capsule models against their matched twins — {s.data}", "",
          "Does the capsule part help? Each capsule model is compared with its *twin*: the same network, loss, "
          "data, budget and tuning with the capsule part replaced (`capsgen train FAMILY --twin`), at equal wall "
          "clock and at equal steps (the twin trained for exactly the steps the capsule model reached).", "",
          f"**Scale**: {length}, seeds {', '.join(map(str, s.seeds))}, "
          f"{s.n} test images and samples per evaluation; {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"on {platform.machine()} (each run's thread count is in its config.json).", "",
          f"**Command**: `{s.command}` (running it again continues an interrupted reproduction).", "",
          "## Summary", ""]
    md += md_table(["pair", "axis", "metric", "capsule", "twin", "verdict"],
                   [[v["pair"], v["axis"], v["metric"], v["capsule"], v["twin"], f"**{v['verdict']}**"]
                    for v in verdicts])
    md += ["(The sections below give the steps, step costs, parameters, per-seed values and samples behind "
           "each row.)", ""]
    md += [f"{len(wins)} of {len(verdicts)} comparisons resolved for the capsule model, {len(losses)} for the twin, "
           f"{len(verdicts) - len(wins) - len(losses)} not resolved.", ""]
    md += sections
    md += ["## Deviations and limits", "",
           "- No paper has these twins: they are capsgen's control for \"the capsules make the difference\"; "
           "each twin's construction is stated in its section (and by `capsgen models`).",
           "- The arms of a seed train one after another in one process, minutes apart; equal wall clock on a "
           "shared machine is noisy, so the step counts are shown beside every row.",
           "- Equal steps: the twin trains exactly the capsule run's steps; its wall clock then differs.",
           "- Metrics come from capsgen's own evaluator network per dataset (not Inception), on the last weights "
           "(no best-checkpoint selection, which would look at the test split).",
           f"- The length ({length}) is far below the papers' (hours on GPUs): a verdict here is about this "
           "scale only.", *[f"- {note}" for note in s.notes], ""]
    return write_report(folder, f"capsule vs twin — {s.data}", "\n".join(md))
