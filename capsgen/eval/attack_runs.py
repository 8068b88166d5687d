"""``capsgen attack RUN``: Chen et al.'s (G-CapsNets) adversarial attacks on any run that classifies.

The maths lives in :mod:`capsgen.eval.attacks` (pure functions on a ``class_scores`` callable);
this module opens a run (it must have the "classify" capability: capsnet, classifier, acgan, …),
takes the first ``n`` images of its test split, runs one attack and writes what it found into a
NEW folder — never into the run folder, which only training writes:

- ``fgsm``: the fast gradient sign method at ε, by default *black-box* as in Chen et al. 4.3 —
  crafted on a LeNet substitute trained on the run's training split, then fed to the run — or
  white-box (``white_box``: the run's own gradients). Also the accuracy-vs-ε curve for
  ε ∈ {2, 4, 8, 16, 32}/255 (and the chosen ε): ``accuracy_vs_epsilon.png``.
- ``pgd``: L∞ projected gradient descent (Madry et al.), white-box, random start.
- ``uap``: Chen et al.'s universal-perturbation generator (supplementary 6.2), white-box; the
  run's accuracy as the generator trains: ``accuracy_vs_iteration.png``.

Every folder gets ``examples.png`` (rows: clean images, perturbations shown as 0.5 + δ / 2ε so
grey is 0, attacked images) and ``adversarial.npz``: float32 ``clean`` and ``adversarial``
[N, C, H, W] in [0, 1] (float, not uint8, so ‖adversarial − clean‖∞ ≤ ε holds exactly in the
file), int64 ``labels``, ``pred_clean``, ``pred_adversarial`` [N] and ``epsilon``.

Everything the user typed is checked, the run opened and the data read before the folder is
made; a mistake is one line and leaves nothing behind. ε is in pixel units of the [0, 1] scale
(Chen et al.'s L∞ ≤ 8 on 0-255 is 8/255, the default); "8/255" is accepted as written.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from capsgen.errors import CapsgenError
from capsgen.eval.attacks import (CURVE_EPSILONS, PAPER_EPSILON, UAP_OBJECTIVES, accuracy, apply_perturbation,
                                  check_epsilon, fgsm, pgd, train_substitute, train_universal_perturbation)
from capsgen.report.figures import image_grid
from capsgen.sampling import open_for

METHODS = ("fgsm", "pgd", "uap")
DEFAULT_N = 1000                 # Chen et al.'s UAP used 1,000 MNIST test images
DEFAULT_PGD_STEPS = 10
DEFAULT_UAP_ITERATIONS = 300     # Chen et al.'s figure: accuracy falls within the first 100 iterations
# A LeNet on 28x28 MNIST reaches ~98 % test accuracy in 2,000 Adam steps of 64 (about a minute on
# one CPU thread); on the 8x8 digits 300 steps give 91-95 %.
DEFAULT_SUBSTITUTE_STEPS = 2000
# The perturbation generator's Adam rate: on the 8x8 digits (ε = 0.2, 300 iterations) 1e-2 trained
# it to a strong attack where the library default 1e-3 had barely moved it (capsgen.eval.attacks).
UAP_LR = 1e-2
EXAMPLES = 10                    # columns of examples.png
BATCH = 500                      # images per forward pass


# ------------------------------------------------------------------------------ checking input
def parse_epsilon(value: str | float, name: str = "--eps") -> float:
    """"8/255", "0.03" or a number -> ε in [0, 1]; anything else is a one-line CapsgenError."""
    text = str(value).strip()
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            eps = float(num) / float(den)
        else:
            eps = float(text)
    except (ValueError, ZeroDivisionError):
        raise CapsgenError(f"{name} must be a number in [0, 1] or a fraction such as 8/255, got {text!r}") from None
    return check_epsilon(eps, name)


def _positive(value: int | None, name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise CapsgenError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_options(method: str, white_box: bool, steps: int | None, iters: int | None,
                  substitute_steps: int | None, objective: str | None) -> None:
    """Refuse an unknown method and options that have no effect with it (one line)."""
    if method not in METHODS:
        raise CapsgenError(f"unknown attack method {method!r}; choose one of: {', '.join(METHODS)}")
    only = {"--steps": (steps is not None, method == "pgd", "pgd"),
            "--iters": (iters is not None, method == "uap", "uap"),
            "--objective": (objective is not None, method == "uap", "uap"),
            "--white-box": (white_box, method == "fgsm", "fgsm (pgd and uap are always white-box)"),
            "--substitute-steps": (substitute_steps is not None, method == "fgsm" and not white_box,
                                   "black-box fgsm (without --white-box)")}
    for flag, (given, applies, where) in only.items():
        if given and not applies:
            raise CapsgenError(f"{flag} applies to {where} only, not to this {method} attack")
    if objective is not None and objective not in UAP_OBJECTIVES:
        raise CapsgenError(f"unknown --objective {objective!r}; choose one of: {', '.join(UAP_OBJECTIVES)}")


def default_out(run: str | Path, method: str) -> Path:
    """attacks-<run folder name>-<method> in the current folder."""
    return Path(f"attacks-{Path(run).resolve().name}-{method}")


def check_out(out: Path, run: str | Path) -> None:
    """``out`` must be new or an empty folder, with an existing writable parent, outside the run."""
    run_path, target = Path(run).resolve(), out.resolve()
    if target == run_path or run_path in target.parents:
        raise CapsgenError(f"--out {out} is inside the run folder {run_path}, which only training writes; "
                           "choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise CapsgenError(f"{out} exists and is not a folder; give a new or empty folder with --out")
    try:
        filled = out.is_dir() and any(out.iterdir())
    except OSError as exc:
        raise CapsgenError(f"{out}: cannot read ({exc.strerror or exc})") from None
    if filled:
        raise CapsgenError(f"{out} is not empty; give a new or empty folder with --out")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise CapsgenError(f"{out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (out.is_dir() and not os.access(out, os.W_OK)):
        raise CapsgenError(f"{out}: not writable")


def _labelled(split: Any, what: str, run: str) -> tuple[torch.Tensor, torch.Tensor]:
    if split.labels is None:
        raise CapsgenError(f"{run}: the {split.name} {split.split} split has no class labels, so {what}; "
                           "use a labelled copy of the data (--data-dir)")
    return split.to_tensors()


def _check_shape(images: torch.Tensor, shape: tuple[int, ...], run: str, what: str) -> None:
    if tuple(images.shape[1:]) != tuple(shape):
        raise CapsgenError(f"{run} was trained on {'x'.join(map(str, shape[1:]))}x{shape[0]} images, but the "
                           f"{what} images are {'x'.join(map(str, images.shape[2:]))}x{images.shape[1]}; "
                           "use the run's data (--data-dir)")


@contextlib.contextmanager
def frozen_task(task: Any) -> Iterator[None]:
    """Eval mode and no parameter gradients for every module of ``task`` (restored afterwards):
    attacks need d scores / d images only, and the target must not move while attacked."""
    flags = [(p, p.requires_grad) for m in task.modules.values() for p in m.parameters()]
    modes = [(m, m.training) for top in task.modules.values() for m in top.modules()]
    task.train_mode(False)
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


# ------------------------------------------------------------------------------ pictures
def examples_picture(clean: torch.Tensor, adv: torch.Tensor, eps: float, k: int = EXAMPLES) -> bytes:
    """PNG bytes: rows clean [k], perturbation (0.5 + δ / 2ε, grey = 0) and attacked images."""
    clean, adv = clean[:k], adv[:k]
    delta = (adv - clean) / (2 * eps) + 0.5 if eps > 0 else torch.full_like(clean, 0.5)
    buf = io.BytesIO()
    image_grid(torch.cat([clean, delta.clamp(0, 1), adv]), len(clean), scale=4).save(buf, format="PNG")
    return buf.getvalue()


def curve_picture(xs: list[float], ys: list[float], xlabel: str, title: str, clean: float,
                  marker: float | None = None) -> bytes:
    """PNG bytes of accuracy against xs, the clean accuracy dashed, the chosen ε marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(xs, ys, marker="o")
    ax.axhline(clean, ls="--", color="grey", label=f"clean {100 * clean:.1f}%")
    if marker is not None:
        ax.axvline(marker, ls=":", color="red", label=f"chosen ({marker:g})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def npz_bytes(clean: torch.Tensor, adv: torch.Tensor, labels: torch.Tensor, pred_clean: torch.Tensor,
              pred_adv: torch.Tensor, eps: float) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, clean=clean.float().numpy(), adversarial=adv.float().numpy(),
                        labels=labels.numpy(), pred_clean=pred_clean.numpy(), pred_adversarial=pred_adv.numpy(),
                        epsilon=np.float64(eps))
    return buf.getvalue()


def write_folder(out: Path, files: dict[str, bytes]) -> dict[str, str]:
    """Create ``out`` (new or empty, checked before) and write ``files``; on failure remove what
    was written, so a failed attack leaves no folder."""
    made = not out.exists()
    try:
        out.mkdir(exist_ok=True)
        if any(out.iterdir()):   # filled since it was checked
            raise CapsgenError(f"{out} is not empty; give a new or empty folder with --out")
        paths = {}
        for name, payload in files.items():
            (out / name).write_bytes(payload)
            paths[name] = str(out / name)
        return paths
    except OSError as exc:
        if made:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for name in files:
                with contextlib.suppress(OSError):
                    (out / name).unlink()
        raise CapsgenError(f"{out}: cannot write ({exc.strerror or exc})") from None


# ------------------------------------------------------------------------------ the command
@torch.no_grad()
def _predict(score, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([score(images[k:k + BATCH]).argmax(1) for k in range(0, len(images), BATCH)])


def attack_run(run: str | Path, method: str, eps: str | float | None = None, n: int | None = None,
               steps: int | None = None, iters: int | None = None, substitute_steps: int | None = None,
               white_box: bool = False, objective: str | None = None, out: str | Path | None = None,
               seed: int = 0, which: str = "best", device: str | None = "cpu",
               data_dir: str | None = None) -> dict[str, Any]:
    """Attack the first ``n`` test images of a classifying run; write pictures and examples to ``out``.

    Returns a JSON-able dict: clean and attacked accuracy, ε, the curve (fgsm: accuracy per ε;
    uap: per iteration), the substitute's steps and accuracy (black-box fgsm), the files written.
    The same run, arguments and seed give the same numbers on the same device.
    """
    check_options(method, white_box, steps, iters, substitute_steps, objective)
    eps = PAPER_EPSILON if eps is None else parse_epsilon(eps)
    n = _positive(n, "--n", DEFAULT_N)
    steps = _positive(steps, "--steps", DEFAULT_PGD_STEPS)
    iters = _positive(iters, "--iters", DEFAULT_UAP_ITERATIONS)
    substitute_steps = _positive(substitute_steps, "--substitute-steps", DEFAULT_SUBSTITUTE_STEPS)
    objective = objective or UAP_OBJECTIVES[0]
    out = default_out(run, method) if out is None else Path(out)
    check_out(out, run)

    opened = open_for(run, "classify", which, device)
    task, name = opened.task, str(opened.run.path)
    dev = task.device
    black_box = method == "fgsm" and not white_box
    if black_box:   # read first: without labels there is no substitute to train
        x_train, y_train = _labelled(opened.split("train", data_dir), "a LeNet substitute cannot be trained on it",
                                     name)
        _check_shape(x_train, opened.info.shape, name, "training")
    x, y = _labelled(opened.split("test", data_dir), "there is no accuracy to attack", name)
    _check_shape(x, opened.info.shape, name, "test")
    x, y = x[:n].to(dev), y[:n].to(dev)
    n = len(x)
    k = opened.info.num_classes or int(y.max()) + 1
    g = torch.Generator().manual_seed(seed)

    result: dict[str, Any] = {"run": name, "family": opened.train_config.family, "data": opened.train_config.data,
                              "checkpoint": opened.checkpoint.stem, "method": method,
                              "mode": "black-box (LeNet substitute)" if black_box else "white-box",
                              "epsilon": eps, "n": n, "seed": seed}
    files: dict[str, bytes] = {}
    target = task.class_scores
    with frozen_task(task):
        clean_acc = accuracy(target, x, y, BATCH)
        if method == "fgsm":
            source = target
            if black_box:
                sub = train_substitute(x_train.to(dev), y_train.to(dev), substitute_steps, g, num_classes=k)
                source = sub
                result["substitute"] = {"steps": substitute_steps, "clean_accuracy": accuracy(sub, x, y, BATCH)}
            epsilons = sorted(set(CURVE_EPSILONS) | {eps})
            curve = {}
            for e in epsilons:
                adv_e = fgsm(source, x, y, e, batch_size=BATCH)
                curve[e] = accuracy(target, adv_e, y, BATCH)
                if e == eps:
                    adv = adv_e
            result["curve"] = {"epsilon": epsilons, "accuracy": [curve[e] for e in epsilons]}
            files["accuracy_vs_epsilon.png"] = curve_picture(
                [255 * e for e in epsilons], result["curve"]["accuracy"], "ε (pixel units of 1/255)",
                f"FGSM, {result['mode']}: {result['family']} on {n} {result['data']} test images",
                clean_acc, 255 * eps)
        elif method == "pgd":
            # 2.5 ε / steps (the rule of Madry et al.'s robustness library): room to cross the
            # ball and come back; one step is FGSM from a random start
            step_size = min(eps, 2.5 * eps / steps)
            adv = pgd(target, x, y, eps, step_size, steps, generator=g, batch_size=BATCH)
            result["pgd"] = {"steps": steps, "step_size": step_size, "random_start": True}
        else:
            res = train_universal_perturbation(target, x, y, eps, iters, g, num_classes=k, lr=UAP_LR,
                                               record_every=max(1, iters // 30), objective=objective,
                                               eval_batch_size=BATCH)
            adv = apply_perturbation(x, res.perturbation, eps)
            its, accs = zip(*res.history)
            result["curve"] = {"iteration": list(its), "accuracy": list(accs)}
            result["uap"] = {"iterations": iters, "objective": objective, "lr": UAP_LR}
            files["accuracy_vs_iteration.png"] = curve_picture(
                list(its), list(accs), "attack iteration",
                f"universal perturbation ({objective}), ε = {eps:.4g}: {result['family']} on {n} images", clean_acc)
        pred_clean, pred_adv = _predict(target, x), _predict(target, adv)
    attacked = (pred_adv == y).float().mean().item()
    result.update({"clean_accuracy": clean_acc, "attacked_accuracy": attacked,
                   "max_abs_perturbation": (adv - x).abs().max().item() if n else 0.0})
    x, adv, y = x.cpu(), adv.cpu(), y.cpu()
    files["examples.png"] = examples_picture(x, adv, eps)
    files["adversarial.npz"] = npz_bytes(x, adv, y, pred_clean.cpu(), pred_adv.cpu(), eps)
    result["out"] = str(out)
    result["files"] = write_folder(out, dict(sorted(files.items())))
    return result


def format_attack(res: dict[str, Any]) -> str:
    """The table ``capsgen attack`` prints under its JSON line."""
    eps = res["epsilon"]
    lines = [f"{res['run']}: {res['family']} on {res['data']} ({res['checkpoint']} checkpoint)",
             f"attack:            {res['method']}, {res['mode']}, ε = {eps:.4g} ({255 * eps:.3g}/255)"
             + (f", LeNet substitute {res['substitute']['steps']} steps "
                f"({100 * res['substitute']['clean_accuracy']:.2f}% clean)" if "substitute" in res else "")
             + (f", {res['pgd']['steps']} steps of {res['pgd']['step_size']:.4g}" if "pgd" in res else "")
             + (f", {res['uap']['iterations']} iterations ({res['uap']['objective']})" if "uap" in res else ""),
             f"images:            first {res['n']} of the test split",
             f"clean accuracy:    {100 * res['clean_accuracy']:6.2f}%",
             f"attacked accuracy: {100 * res['attacked_accuracy']:6.2f}%   (max |δ| = {res['max_abs_perturbation']:.4g})"]
    curve = res.get("curve")
    if curve and "epsilon" in curve:
        lines.append("accuracy vs ε:     " + "  ".join(f"{255 * e:g}/255 {100 * a:.1f}%"
                                                       for e, a in zip(curve["epsilon"], curve["accuracy"])))
    elif curve:
        pts = list(zip(curve["iteration"], curve["accuracy"]))
        pick = pts if len(pts) <= 6 else [pts[round(i * (len(pts) - 1) / 5)] for i in range(6)]
        lines.append("accuracy vs iter:  " + "  ".join(f"{i}: {100 * a:.1f}%" for i, a in pick))
    lines.append(f"written to:        {res['out']}/ ({', '.join(Path(p).name for p in res['files'].values())})")
    return "\n".join(lines)
