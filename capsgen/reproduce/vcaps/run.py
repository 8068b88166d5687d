"""``capsgen reproduce vcaps``: Huang et al.'s experiments at a chosen scale, every model with the
same training wall clock.

Stages, each kept in ``results.json`` once finished (running the same command again resumes,
also inside an interrupted training run):

1. ``evaluators``: capsgen's class evaluator of the dataset (FID features) and, on data with
   attributes, its attribute evaluator (attribute-conditioned fidelity) — trained once, cached.
2. ``train/<model>/seed<k>``: the VCN, a CapsNet (class data), DCGAN and CapsuleGAN, ``budget``
   minutes each through :mod:`capsgen.runs`.
3. ``analysis/<model>/seed<k>``: with the last weights, on the whole test split: test error
   (VCN in class mode, CapsNet) or per-attribute accuracy (VCN in attribute mode).
4. ``samples/<model>/seed<k>``: ``n_metrics`` samples of every generative model against the real
   test split (FID, KID, precision, recall, ... beside the real-vs-real floor).
5. ``conditional/vcaps/seed<k>``: class fidelity (samples of class k read as k by the class
   evaluator) or attribute-conditioned fidelity (samples for the test split's attribute vectors
   read back by the attribute evaluator).
6. figures (the VCN's reconstructions, interpolation, class / attribute grid, attribute swap;
   the GANs' samples) and report.md / report.html (report.py).
"""
from __future__ import annotations

import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from capsgen.errors import CapsgenError
from capsgen.reproduce.vcaps.spec import MODEL_NAMES, MODELS, SCALES, ModelSpec, Settings
from capsgen.reproduce.common import Results, open_report_folder, say
from capsgen.reproduce.overrides import applicable, check_extra


# ------------------------------------------------------------------------------ configs
def model_configs(spec: ModelSpec, s: Settings, seed: int) -> tuple[Any, Any]:
    from capsgen import runs

    preset = spec.preset_for(s.attributes, s.scale)
    own = list(spec.pairs(s.attributes, s.scale))
    base = [*runs.preset_pairs(spec.family, preset), *own]
    return runs.make_configs(spec.family, [*own, *applicable(spec.family, base, s.extra)], preset=preset,
                             data=s.data, data_dir=s.data_dir, minutes=s.budget, seed=seed)


def run_dir_of(folder: Path, model: str, seed: int) -> Path:
    return folder / "runs" / f"{model}-s{seed}"


# ------------------------------------------------------------------------------ stages
def train_model(spec: ModelSpec, s: Settings, seed: int, folder: Path) -> dict[str, Any]:
    """Train (or continue) one model for the budget; what it reached."""
    from capsgen import runs
    from capsgen.runs import open_run
    from capsgen.train.checkpoint import read_checkpoint
    from capsgen.train.rundir import RunDir

    path = run_dir_of(folder, spec.name, seed)
    if RunDir(path).is_run():
        say(f"{spec.name} seed {seed}: continuing {path}")
        runs.resume(path, minutes=s.budget, progress=False)
    else:
        tcfg, mcfg = model_configs(spec, s, seed)
        say(f"{spec.name} seed {seed}: training for {s.budget:g} minutes into {path}")
        runs.train_new(tcfg, mcfg, path, progress=False)
    _, meta = read_checkpoint(RunDir(path).checkpoint("last"))
    cfg = RunDir(path).read_config()
    modules = open_run(path, "last").task.modules
    return {"run": str(path.relative_to(folder)), "steps": meta["state"]["step"],
            "seconds": round(meta["state"]["elapsed"], 1), "batch_size": cfg["train"]["batch_size"],
            "epochs": round(meta["state"]["step"] * cfg["train"]["batch_size"] / cfg["data"]["train_size"], 3),
            "params": {k: sum(p.numel() for p in m.parameters()) for k, m in modules.items()},
            "preset": cfg["model"].get("preset") or None, "model": cfg["model"]}


def analyse(path: Path, test: Any) -> dict[str, Any]:
    """Test error (classifying runs) or per-attribute accuracy on the whole test split, last weights."""
    from capsgen.models.common import batched
    from capsgen.runs import open_run
    from capsgen.train.capabilities import capabilities_of

    opened = open_run(path, "last")
    task, caps = opened.task, capabilities_of(opened.task)
    out: dict[str, Any] = {"n": len(test)}
    if "classify" in caps:
        scores = batched(task.class_scores, test.images, task.device)
        out["test_error"] = (scores.argmax(1) != test.labels).float().mean().item()
    if "attributes" in caps:
        probs = batched(task.attribute_probs, test.images, task.device)
        acc = ((probs > 0.5).float() == test.attributes).float().mean(0)
        out["per_attribute"] = dict(zip(opened.info.attribute_names, acc.tolist()))
        out["attribute_accuracy"] = acc.mean().item()
    with torch.no_grad():
        figures = task.evaluate(test)
    if "recon_error" in figures:             # the VCN's, on its first eval_n test images
        out["recon_error"] = figures["recon_error"]
    return out


def sample_quality(path: Path, s: Settings, seed: int, ev: Any, name: str) -> dict[str, Any]:
    from capsgen.eval.report_metrics import evaluate_samples
    from capsgen.sampling import generate_images

    _, _, images = generate_images(str(path), s.n_metrics, seed)
    return evaluate_samples(images, s.data, evaluator=ev, data_dir=s.data_dir, seed=seed, source=name)


def conditional(path: Path, s: Settings, seed: int, ev: Any, aev: Any, test: Any) -> dict[str, Any]:
    from capsgen.eval.run_eval import attribute_fidelity, class_fidelity
    from capsgen.runs import open_run
    from capsgen.train.capabilities import capabilities_of

    opened = open_run(path, "last")
    caps = capabilities_of(opened.task)
    with torch.no_grad():
        if "attribute-conditional" in caps:
            return {"attributes": attribute_fidelity(opened.task, aev, test.attributes, s.n_metrics, seed)}
        k = opened.info.num_classes
        return {"classes": class_fidelity(opened.task, ev, k, max(1, s.n_metrics // k), seed)}


FIGURES = {"vcaps": ("reconstructions", "interpolation", "class_grid", "attribute_grid", "attribute_swap",
                     "samples", "vcaps_curves"),
           "dcgan": ("samples",), "capsulegan": ("samples",)}


def copy_figures(folder: Path, s: Settings) -> dict[str, dict[str, str]]:
    """The first seed's pictures into figures/ (paths relative to the report)."""
    from capsgen.train.rundir import RunDir

    out = folder / "figures"
    out.mkdir(exist_ok=True)
    found: dict[str, dict[str, str]] = {}
    for spec in s.specs():
        src = RunDir(run_dir_of(folder, spec.name, s.seeds[0])).figures
        for kind in FIGURES.get(spec.name, ()):
            dst = out / f"{spec.name}_{kind}.png"
            if (src / f"{kind}.png").exists():
                shutil.copyfile(src / f"{kind}.png", dst)
            if dst.exists():       # a committed report keeps its pictures when its runs/ are gone
                found.setdefault(spec.name, {})[kind] = f"figures/{dst.name}"
    return found


# ------------------------------------------------------------------------------ the whole experiment
def check_settings(s: Settings) -> None:
    if not s.budget > 0:
        raise CapsgenError(f"--budget must be a positive number of minutes, got {s.budget:g}")
    if s.scale not in SCALES:
        raise CapsgenError(f"unknown --scale {s.scale!r}; choose one of: {', '.join(SCALES)}")
    if not s.seeds or min(s.seeds) < 0 or len(set(s.seeds)) != len(s.seeds):
        raise CapsgenError(f"--seeds must be distinct non-negative integers, got {','.join(map(str, s.seeds))}")
    bad = [m for m in s.models if m not in MODEL_NAMES]
    if bad or "vcaps" not in s.models:
        raise CapsgenError(f"--models {','.join(s.models)}: choose from {', '.join(MODEL_NAMES)}, vcaps included")
    if s.n_metrics < 10:
        raise CapsgenError(f"--n-metrics must be at least 10 samples, got {s.n_metrics}")


def run(s: Settings) -> Path:
    """Every stage into ``s.out``; returns the path of report.md."""
    from capsgen.data import load_split
    from capsgen.eval.evaluator import get_evaluator
    from capsgen.reproduce.vcaps.report import write_reports

    check_settings(s)
    folder = open_report_folder(s)
    test_data = load_split(s.data, "test", s.data_dir)     # bad data fails before any folder is made
    if test_data.labels is None and test_data.attributes is None:
        raise CapsgenError(f"{s.data} has neither class labels nor attributes; variational capsules need one")
    s.attributes = test_data.attributes is not None
    specs = s.specs()
    # against every family the experiment can use, so one --set list serves any --models choice
    check_extra(s.extra, [m.family for m in MODELS])
    for spec in specs:                                      # every config checked before anything runs
        model_configs(spec, s, s.seeds[0])
    if (folder / "results.json").is_file():
        Results(folder, s)                                  # other settings: refused before any work
    folder.mkdir(parents=True, exist_ok=True)
    res = Results(folder, s)
    t_start = time.perf_counter()
    test = test_data.to_batch()
    ev = get_evaluator(s.data, s.data_dir)
    aev = None
    if s.attributes:
        from capsgen.eval.attribute_evaluator import get_attribute_evaluator

        aev = get_attribute_evaluator(s.data, s.data_dir)
    res.stage("evaluators", lambda: {"class": {"accuracy": ev.accuracy, "n_test": ev.n_test},
                                     "attributes": None if aev is None else {
                                         "accuracy": aev.accuracy, "per_attribute": aev.per_attribute,
                                         "n_test": aev.n_test}})
    for seed in s.seeds:
        for spec in specs:
            res.stage(f"train/{spec.name}/seed{seed}", lambda spec=spec, seed=seed: train_model(spec, s, seed, folder))
    for seed in s.seeds:
        for spec in specs:
            path = run_dir_of(folder, spec.name, seed)
            if spec.name in ("vcaps", "capsnet"):
                res.stage(f"analysis/{spec.name}/seed{seed}", lambda path=path: analyse(path, test))
            if spec.name != "capsnet":
                res.stage(f"samples/{spec.name}/seed{seed}",
                          lambda path=path, seed=seed, spec=spec: sample_quality(path, s, seed, ev, spec.name))
        res.stage(f"conditional/vcaps/seed{seed}",
                  lambda seed=seed: conditional(run_dir_of(folder, "vcaps", seed), s, seed, ev, aev, test))
    figures = copy_figures(folder, s)
    train = load_split(s.data, "train", s.data_dir)
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "threads": torch.get_num_threads(),
           "processor": platform.processor() or platform.machine(),
           "this_invocation_seconds": round(time.perf_counter() - t_start, 1),
           "train_size": len(train), "test_size": len(test), "shape": list(test.images.shape[1:])}
    return write_reports(folder, s, res.data, figures, env)
