"""What ``capsgen reproduce capsulegan`` compares, its settings, and the papers' own settings and numbers.

Two pairs, each compared the way its paper compares them:

- Karmakar: ``karmakar-dcgan`` vs ``karmakar-capsulegan``, both with the ``karmakar`` preset
  (Karmakar's generator, PReLU, 7x7 primary capsules, 16 + 16 alternating batches, no batch
  norm, Adam 2e-4, 10,000 iterations); the claim is about sample quality along training.
- Jaiswal et al. 2018: ``jaiswal-dcgan`` vs ``jaiswal-capsulegan`` (the ``jaiswal`` presets:
  the same DCGAN generator, a convolutional BCE discriminator vs a one-capsule margin-loss
  one); the claims are the GAM battle and semi-supervised Label Spreading.

Every model starts from its paper preset. ``--scale cpu`` then shrinks the capsule
discriminators (the only parts too slow for one CPU core at paper size); the deviations from the
paper are computed from the configs by :func:`deviations`, not written by hand.

Kept apart from the stages (run.py) and the report (report.py) so both can import it; torch-free.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    preset: str                 # the paper preset every scale starts from
    paper: str                  # "Karmakar" | "Jaiswal et al. 2018"
    label: str
    cpu: tuple[str, ...] = ()   # --set pairs applied after the preset at --scale cpu
    capsule: bool = False       # a capsule discriminator (what --lr asymmetric slows down)


# The CPU scale keeps every paper setting but the capsule discriminators' widths: 256-channel
# convolutions and 32 primary-capsule types make a step ~10x slower on one core (the primary
# convolution alone is 256 -> 256 channels, 7x7 or 9x9). 64 channels and 8 types keep the shape
# of the network (kernels, strides, capsule dimensions, routing, head) at about 1/16 of the cost.
CPU_CAPSULE_D = ("model.d_conv_channels=64", "model.d_primary_caps=8")
# --lr asymmetric: the capsule discriminators at the CPU default's 2e-5 (10x below their
# generator's rate; CapsuleGANConfig's docstring says why it was chosen). Named as a confound in
# the report whenever it is used.
ASYMMETRIC_LR = ("model.lr_d=2e-5",)

KARMAKAR, JAISWAL = "Karmakar", "Jaiswal et al. 2018"
MODELS = (
    ModelSpec("karmakar-dcgan", "dcgan", "karmakar", KARMAKAR,
              "DCGAN of Karmakar: Karmakar's generator vs a 5-conv LeakyReLU discriminator, BCE"),
    ModelSpec("karmakar-capsulegan", "capsulegan", "karmakar", KARMAKAR,
              "CapsuleGAN of Karmakar: the same generator vs a CapsNet discriminator with a dense head, BCE",
              CPU_CAPSULE_D, capsule=True),
    ModelSpec("jaiswal-dcgan", "dcgan", "jaiswal", JAISWAL,
              "convolutional GAN of Jaiswal et al. 2018: DCGAN generator and discriminator, BCE"),
    ModelSpec("jaiswal-capsulegan", "capsulegan", "jaiswal", JAISWAL,
              "CapsuleGAN of Jaiswal et al. 2018: the same generator vs a one-capsule discriminator, margin loss",
              CPU_CAPSULE_D, capsule=True),
)
MODEL_NAMES = tuple(m.name for m in MODELS)
# (capsule model, its convolutional baseline, the paper whose comparison it is)
PAIRS = (("karmakar-capsulegan", "karmakar-dcgan", KARMAKAR),
         ("jaiswal-capsulegan", "jaiswal-dcgan", JAISWAL))
SCALES = ("cpu", "paper")
LR_TREATMENTS = ("equal", "asymmetric")
ARMS = ("time", "steps")          # equal wall clock, equal iterations


def spec_of(name: str) -> ModelSpec:
    return next(m for m in MODELS if m.name == name)


# What each paper states about its setting beyond the preset's network and optimiser values.
PAPER_DATA = {KARMAKAR: ("mnist",), JAISWAL: ("mnist", "cifar10")}
PAPER_DATA_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
PAPER_STEPS = {KARMAKAR: 10_000, JAISWAL: None}       # Jaiswal et al. give no iteration count
PAPER_BATCH = {KARMAKAR: 16, JAISWAL: None}           # real images per D batch; Jaiswal et al. give none

# The papers' own numbers (Jaiswal et al. 2018, section 5.3 and tables 1-2; MNIST and CIFAR-10).
PAPER_GAM = {"MNIST": {"r_samples": 0.79, "r_test": 1.0, "verdict": "CapsuleGAN wins"},
             "CIFAR-10": {"r_samples": 1.0, "r_test": 0.72, "verdict": "tie"}}
PAPER_SEMISUP = {
    "MNIST": {"convolutional GAN": {100: 0.2900, 1000: 0.1539, 10000: 0.0702},
              "CapsuleGAN": {100: 0.2724, 1000: 0.1142, 10000: 0.0531}},
    "CIFAR-10": {"convolutional GAN": {100: 0.8305, 1000: 0.7587, 10000: 0.7209},
                 "CapsuleGAN": {100: 0.7983, 1000: 0.7496, 10000: 0.7102}},
}
# Karmakar section 5.2: CapsuleGAN's samples after 10,000 iterations look like DCGAN's after ~30,000.
PAPER_KARMAKAR_STEPS = {"CapsuleGAN": 10_000, "DCGAN": 30_000}


@dataclass
class Settings:
    data: str
    out: str
    budget: float | None = None        # equal wall clock: training minutes per model
    steps: int | None = None           # equal iterations: training steps per model
    data_dir: str | None = None
    scale: str = "cpu"
    models: tuple[str, ...] = MODEL_NAMES
    lr: str = "equal"                  # equal | asymmetric
    batch_size: int | None = None      # None: each paper's (Karmakar 16 + 16, Jaiswal 64)
    seeds: tuple[int, ...] = (0, 1, 2)
    curve_points: int = 5              # FID measurements along each run (0 = none)
    curve_n: int = 2000                # samples per curve FID
    n_metrics: int = 10_000            # samples per model for FID & co.
    n_battle: int = 1000
    tol: float = 0.05
    labelled: tuple[int, ...] = (100, 1000, 10000)
    labelled_draw: str = "random"      # random (Jaiswal et al.) | balanced
    generated: int = 50_000
    semisup_test_n: int | None = None
    extra: tuple[str, ...] = ()        # --set pairs applied to every model after its own
    command: str = ""

    def identity(self) -> dict[str, Any]:
        """The settings that decide the results (a folder is only continued with the same ones).

        Seeds and models are not among them: every stage is kept per model and seed, so running
        again with more seeds (or models) adds their stages to a finished folder.
        """
        return {k: getattr(self, k) for k in ("data", "budget", "steps", "scale", "lr", "batch_size",
                                             "curve_points", "curve_n", "n_metrics", "n_battle", "tol",
                                             "labelled_draw", "generated", "semisup_test_n")} | {
            "labelled": list(self.labelled), "extra": list(self.extra)}

    def arms(self) -> list[str]:
        return [a for a, v in (("time", self.budget), ("steps", self.steps)) if v is not None]

    def specs(self) -> list[ModelSpec]:
        return [m for m in MODELS if m.name in self.models]

    def pairs(self) -> list[tuple[str, str, str]]:
        return [p for p in PAIRS if p[0] in self.models and p[1] in self.models]


# --------------------------------------------------------------------------- configurations
def batch_size(spec: ModelSpec, s: Settings) -> int:
    """--batch-size, else the paper's: Karmakar's preset carries 16 (real, + 16 fake); Jaiswal 64."""
    if s.batch_size is not None:
        return s.batch_size
    return 16 if spec.preset == "karmakar" else 64


def model_pairs(spec: ModelSpec, s: Settings) -> list[str]:
    """The --set pairs applied after ``spec``'s preset: scale, learning-rate treatment, user's."""
    pairs = list(spec.cpu) if s.scale == "cpu" else []
    if s.lr == "asymmetric" and spec.capsule:
        pairs += ASYMMETRIC_LR
    return pairs + list(s.extra)


def train_fields(spec: ModelSpec, s: Settings, arm: str, seed: int) -> dict[str, Any]:
    """make_configs' train fields for one arm: the whole budget of that arm and nothing else."""
    fields = {"data": s.data, "data_dir": s.data_dir, "seed": seed, "batch_size": batch_size(spec, s)}
    return fields | ({"minutes": s.budget} if arm == "time" else {"steps": s.steps})


def arm_pairs(arm: str) -> list[str]:
    # The time arm is bounded by minutes only: drop a preset's step count (Karmakar's 10,000).
    return ["train.steps=none"] if arm == "time" else []


def train_command(spec: ModelSpec, s: Settings, arm: str, seed: int, folder: Path) -> str:
    """The ``capsgen train`` command equivalent to how the reproduction trains ``spec`` (one seed).

    The reproduction trains in segments (``capsgen train --resume RUN --steps k``) to measure FID
    between them; a resumed run is bit-identical to an uninterrupted one, so this is the same run.
    """
    budget = ["--minutes", f"{s.budget:g}"] if arm == "time" else ["--steps", str(s.steps)]
    args = ["train", spec.family, "--preset", spec.preset, "--data", s.data, *budget, "--batch-size",
            str(batch_size(spec, s)), "--seed", str(seed), "--out", str(run_dir(folder, arm, spec.name, seed))]
    if s.data_dir:
        args += ["--data-dir", s.data_dir]
    for pair in arm_pairs(arm) + model_pairs(spec, s):
        args += ["--set", pair]
    return "capsgen " + " ".join(shlex.quote(a) for a in args)


def run_dir(folder: Path, arm: str, model: str, seed: int) -> Path:
    return Path(folder) / "runs" / arm / model / f"seed{seed}"


def segment_targets(total: float, points: int, integer: bool) -> list[float]:
    """Budgets at which to stop and measure: ``points`` even fractions of ``total`` (at least the end)."""
    k = max(points, 1)
    if integer:
        return sorted({max(1, round(total * i / k)) for i in range(1, k + 1)})
    return [total * i / k for i in range(1, k + 1)]


# ------------------------------------------------------------------ what "scale" means, in words
# Fields that say nothing about the model (pictures, evaluation size, a safety stop, the label).
INFORMATIONAL = {"preset", "sample_every", "n_fixed", "fixed_seed", "eval_n", "explode_limit"}
# What a pair's comparison is about: the discriminator and its objective. Any other difference
# between the two models of a pair is a confound.
TREATMENT = {"discriminator", "objective", "m_pos", "m_neg", "lam", "d_width", "d_norm", "d_extra_layers",
             "d_conv_channels", "d_conv_kernel", "d_conv_stride", "d_conv_act", "d_primary_caps",
             "d_primary_dim", "d_primary_kernel", "d_primary_stride", "d_caps", "d_caps_dim", "d_routing",
             "d_grad_through_routing", "d_caps_init_std", "d_dense"}
CONV_ONLY = {"d_width", "d_norm", "d_extra_layers"}
CAPS_ONLY = TREATMENT - CONV_ONLY - {"discriminator", "objective", "m_pos", "m_neg", "lam"}
MARGIN_ONLY = {"m_pos", "m_neg", "lam"}


def effective(model: dict[str, Any]) -> dict[str, Any]:
    """A model config with the values that take effect (lr_d None -> lr; unused fields dropped).

    Tuples become lists: a preset built in memory holds tuples, a run's config.json lists, and
    the two must compare equal (``g_channels`` was once listed as a deviation from itself).
    """
    m = {k: list(v) if isinstance(v, tuple) else v for k, v in model.items()}
    if m.get("lr_d") is None:
        m["lr_d"] = m["lr"]
    unused = set(INFORMATIONAL)
    unused |= CAPS_ONLY if m["discriminator"] == "conv" else CONV_ONLY
    if m["objective"] != "margin":
        unused |= MARGIN_ONLY
    if m["generator"] == "dcgan":
        unused.add("g_channels")
    else:
        unused |= {"g_width", "g_norm"}
    if m["discriminator"] == "caps1":
        unused |= {"d_routing", "d_grad_through_routing", "d_caps", "d_dense"}
    elif m["discriminator"] == "caps2":
        unused |= {"d_caps", "d_dense"}
    return {k: v for k, v in m.items() if k not in unused}


def _fmt(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def deviations(model: dict[str, Any], train: dict[str, Any], paper_model: dict[str, Any],
               spec: ModelSpec, data: str) -> list[str]:
    """Every way a run's settings differ from its paper's, computed from the two configs.

    ``paper_model`` is the config of the bare paper preset; a field counts when it takes effect
    in the run. Also the data set, batch size and training length against what the paper states
    (:data:`PAPER_DATA`, :data:`PAPER_BATCH`, :data:`PAPER_STEPS`).
    """
    out = []
    if data not in PAPER_DATA[spec.paper]:
        names = " and ".join(PAPER_DATA_NAMES[d] for d in PAPER_DATA[spec.paper])
        out.append(f"data: {data} (paper: {names})")
    a, b = effective(model), effective(paper_model)
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k) and k in a:
            out.append(f"model.{k}: {_fmt(a.get(k))} (paper: {_fmt(b.get(k)) if k in b else 'not used'})")
    paper_batch = PAPER_BATCH[spec.paper]
    if paper_batch is not None and train.get("batch_size") != paper_batch:
        out.append(f"batch size: {train.get('batch_size')} (paper: {paper_batch})")
    paper_steps = PAPER_STEPS[spec.paper]
    if paper_steps is not None and train.get("steps") != paper_steps:
        mine = f"{train['steps']} steps" if train.get("steps") else f"{_fmt(train.get('minutes'))} minutes of wall clock"
        out.append(f"training length: {mine} (paper: {paper_steps:,} iterations)")
    return out


def confounds(a: dict[str, Any], b: dict[str, Any], train_a: dict[str, Any], train_b: dict[str, Any],
              names: tuple[str, str]) -> list[str]:
    """Differences between the two models of a pair other than the discriminator and its objective."""
    ea, eb = effective(a), effective(b)
    out = []
    for k in sorted((set(ea) | set(eb)) - TREATMENT):
        if ea.get(k) != eb.get(k):
            what = {"lr_d": "discriminator learning rate", "lr": "generator learning rate"}.get(k, f"model.{k}")
            out.append(f"{what}: {_fmt(ea.get(k, '–'))} ({names[0]}) vs {_fmt(eb.get(k, '–'))} ({names[1]})")
    for k in ("batch_size", "steps", "minutes"):
        if train_a.get(k) != train_b.get(k):
            out.append(f"train.{k}: {_fmt(train_a.get(k))} ({names[0]}) vs {_fmt(train_b.get(k))} ({names[1]})")
    return out


def describe(model: dict[str, Any], batch: int, params: dict[str, int]) -> dict[str, str]:
    """One model's architecture and training recipe in words, from its config (what "scale" means)."""
    m = model
    if m["generator"] == "dcgan":
        g = f"DCGAN: linear -> transposed 4x4 convs, last hidden width {m['g_width']}, ReLU, {m['g_norm']} norm"
    else:
        g = (f"Karmakar: linear -> 3x3 convs {','.join(map(str, m['g_channels']))},C "
             "(nearest x2 upsampling), LeakyReLU 0.2, no norm")
    g += ", tanh"
    sn = ", spectral norm" if m.get("d_spectral_norm") else ""
    if m["discriminator"] == "conv":
        d = (f"conv: strided 4x4 convs from {m['d_width']} channels (doubling) + {m['d_extra_layers']} extra 3x3, "
             "LeakyReLU 0.2 -> 1 logit")
        norm = f"{m['d_norm']}{sn}"
    else:
        k, s = m["d_conv_kernel"], m.get("d_conv_stride", 1)
        out = {"caps-dense": f"{m['d_caps']} x {m['d_caps_dim']}-D capsules, {m['d_routing']} routing iterations "
                             f"-> flatten -> dense {m['d_dense']} -> 1 logit",
               "caps1": f"1 x {m['d_caps_dim']}-D capsule (routing to one parent is a no-op) -> its length = P(real)",
               "caps2": f"2 x {m['d_caps_dim']}-D capsules (real, fake), {m['d_routing']} routing iterations "
                        "-> lengths"}[m["discriminator"]]
        d = (f"CapsNet: conv {m['d_conv_channels']} x {k}x{k}" + (f" stride {s}" if s != 1 else "")
             + f" + {m['d_conv_act']} -> primary capsules {m['d_primary_caps']} types x {m['d_primary_dim']}-D, "
             f"{m['d_primary_kernel']}x{m['d_primary_kernel']} stride {m['d_primary_stride']} -> {out}")
        norm = f"none{sn}"
    lr_d = m["lr"] if m.get("lr_d") is None else m["lr_d"]
    if m["schedule"] == "alternate":
        comp = (f"alternate: {m['n_dis']} D step(s) on {batch} real + {batch} fake, then 1 G step on {batch} fake; "
                "each is one iteration")
    else:
        comp = (f"joint: per iteration {m['n_dis']} D update(s) on {batch // m['n_dis']} real + as many fake, "
                f"then 1 G update on {batch} fake")
    extra = [f"DiffAugment {m['diffaugment']}"] if m.get("diffaugment", "none") != "none" else []
    if m.get("ema"):
        extra.append(f"EMA generator {m['ema']:g}")
    return {"G": g, "D": d, "D norm": norm, "objective": m["objective"] + (f" ({', '.join(extra)})" if extra else ""),
            "lr G / D": f"Adam {m['lr']:g} / {lr_d:g}, betas ({m['beta1']:g}, {m['beta2']:g})",
            "batches": comp, "params G / D": f"{params['generator']:,} / {params['discriminator']:,}"}
