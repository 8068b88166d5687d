"""One call that checks every model family on a device: what a lent accelerator runs, once.

    python benchmarks/device_check.py --device cuda            # < 5 minutes on one GPU
    python benchmarks/device_check.py --device cpu --steps 2 --batch-size 4   # a smoke run

For every family in capsgen.models.FAMILIES, at its largest preset (a preset named ``paper`` when
the family has one; else the preset whose step needs the most memory by the estimate of
capsgen.train.memory; the defaults when it has none), on synthetic images of the preset's
dataset shape (MNIST 1x28x28 unless the preset names CIFAR or CelebA): N training steps (the
first one a warm-up, not timed) in fp32 and in bf16 autocast, each in a fresh process, printing

- img/s of the timed steps;
- the peak memory of building the task and training (CUDA: torch.cuda.max_memory_allocated;
  CPU: the process's peak RSS above its level before, see capsgen.train.memory.PeakMemory),
  beside the estimate capsgen uses to refuse runs that would not fit;
- the agreement of one fp32 step between the CPU and the device: the largest absolute difference
  of any weight after one identical step from identical weights and batch ("same device" when
  the device is the CPU: the two runs are one computation);
- on CUDA (or with --channels-last / --compile anywhere), fp32 with channels-last memory format
  and with torch.compile of every module, and which of the fp32 variants was fastest.

It exits 1 when any family fails, naming it; one table is printed at the end. Send back the
whole output (the table and any FAILED lines).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from capsgen import runs
from capsgen.data.batch import Batch
from capsgen.models import FAMILIES
from capsgen.train.device import resolve_device
from capsgen.train.loop import step_generator
from capsgen.train.memory import PeakMemory
from capsgen.train.task import DataInfo, StepContext, Task

# poe's config fixes a 1,520-step schedule of stages (autoencoder, statistics, W, U) and each
# stage needs the one before; the check runs every stage, shortened to about N steps in all.
SHORT_SCHEDULES = {"poe": lambda n: [f"model.ae_steps={max(1, n // 3)}", "model.stat_steps=1",
                                     f"model.w_steps={max(1, n // 3)}", f"model.u_steps={max(1, n // 3)}"]}


def data_for(preset: str | None) -> DataInfo:
    """The data facts of the preset's paper dataset (its shape; the pixels are synthetic)."""
    name = preset or ""
    if "celeba" in name:
        return DataInfo("celeba-shaped", (3, 64, 64), None, None, 50_000, [f"attribute{i}" for i in range(40)])
    if "cifar" in name:
        return DataInfo("cifar10-shaped", (3, 32, 32), 10, [str(i) for i in range(10)], 50_000)
    return DataInfo("mnist-shaped", (1, 28, 28), 10, [str(i) for i in range(10)], 60_000)


def synthetic_batch(info: DataInfo, n: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, info.num_classes, (n,), generator=g) if info.num_classes else None
    attrs = (torch.rand(n, info.num_attributes, generator=g) < 0.5).float() if info.num_attributes else None
    return Batch(torch.rand(n, *info.shape, generator=g), labels, attrs)


def configs(family: str, preset: str | None, pairs: list[str], steps: int, batch_size: int | None):
    extra = SHORT_SCHEDULES.get(family, lambda n: [])(steps)
    return runs.make_configs(family, extra + pairs, preset=preset, batch_size=batch_size, threads=None)


def largest_preset(family: str, pairs: list[str], steps: int) -> str | None:
    """``paper`` if the family has it, else the preset with the largest estimated step memory."""
    presets = FAMILIES[family].presets
    if not presets or "paper" in presets:
        return "paper" if presets else None

    def need(preset: str) -> int:
        tcfg, mcfg = configs(family, preset, pairs, steps, None)
        return runs.build_task(tcfg, mcfg, data_for(preset), "meta").memory_estimate(tcfg.batch_size)

    return max(sorted(presets), key=need)


def step_context(step: int, n: int) -> StepContext:
    return StepContext(step, 0.0, 1000, step_generator(0, step), n)


def train_steps(task: Task, batch: Batch, steps: int, precision: str, channels_last: bool = False) -> float:
    """Train ``steps`` steps (step 0 a warm-up); images per second of the others."""
    if channels_last:
        batch = Batch(batch.images.contiguous(memory_format=torch.channels_last), batch.labels, batch.attributes)
    batch = batch.to(task.device)
    task.train_mode(True)
    sync = torch.cuda.synchronize if task.device.type == "cuda" else (lambda: None)
    start = 0.0
    for step in range(steps):
        if step == 1:
            sync()
            start = time.perf_counter()
        with torch.autocast(task.device.type, torch.bfloat16, enabled=precision == "bf16"):
            figures = task.train_step(batch, step_context(step, len(batch)))
        bad = [k for k, v in figures.items() if not math.isfinite(v)]
        if bad:
            raise RuntimeError(f"{', '.join(bad)} became non-finite at step {step}")
    sync()
    timed = steps - 1
    return timed * len(batch) / (time.perf_counter() - start) if timed else float("nan")


def apply_variant(task: Task, variant: str) -> None:
    """channels-last: every module's 4-D weights in NHWC; compile: torch.compile every module."""
    for module in task.modules.values():
        if variant == "channels-last":
            module.to(memory_format=torch.channels_last)
        elif variant == "compile":
            module.compile()


def step_agreement(tcfg, mcfg, info: DataInfo, batch: Batch, device: torch.device) -> float:
    """Largest |difference| of any weight after one fp32 step on the CPU and on ``device``, from the
    same weights (the CPU task's, copied) and the same batch and step randomness."""
    ref = runs.build_task(tcfg, mcfg, info, "cpu")
    other = runs.build_task(tcfg, mcfg, info, device)
    for name, module in ref.modules.items():
        other.modules[name].load_state_dict(module.state_dict())
    for task in (ref, other):
        task.train_mode(True)
        task.train_step(batch.to(task.device), step_context(0, len(batch)))
    worst = 0.0
    for name, module in ref.modules.items():
        theirs = dict(other.modules[name].named_parameters())
        for pname, p in module.named_parameters():
            worst = max(worst, (p.detach() - theirs[pname].detach().cpu()).abs().max().item())
    return worst


class Setup:
    """A family's configs, data facts and batch for the check, validated as capsgen train does."""

    def __init__(self, family: str, args):
        self.family = family
        pairs = [p.split(":", 1)[1] for p in args.set if p.split(":", 1)[0] == family]
        self.device = resolve_device(args.device)
        self.preset = largest_preset(family, pairs, args.steps)
        self.info = data_for(self.preset)
        self.tcfg, self.mcfg = configs(family, self.preset, pairs, args.steps, args.batch_size)
        self.steps = self.tcfg.steps or args.steps   # a fixed schedule (poe) runs all of it
        self.batch = synthetic_batch(self.info, self.tcfg.batch_size)

    def build(self, device) -> Task:
        return runs.build_task(self.tcfg, self.mcfg, self.info, device)

    def warm_up(self) -> None:
        """One step of 2 examples on a throw-away task: the code and thread pools a first step
        pages in are not then counted in the CPU peaks (CUDA peaks count tensors only)."""
        task = self.build(self.device)
        task.train_mode(True)
        task.train_step(self.batch[:2].to(self.device), step_context(0, 2))


def run_one(setup: Setup, variant: str) -> dict:
    """One variant of one family: a table row (dict)."""
    tcfg, mcfg, info, device, batch = setup.tcfg, setup.mcfg, setup.info, setup.device, setup.batch
    row = {"family": setup.family, "variant": variant, "preset": setup.preset or "defaults",
           "batch": tcfg.batch_size, "estimate": setup.build("meta").memory_estimate(tcfg.batch_size)}
    steps = setup.steps
    with PeakMemory(device) as peak:
        task = setup.build(device)
        if variant in ("channels-last", "compile"):
            apply_variant(task, variant)
        row["img_s"] = train_steps(task, batch, steps, "bf16" if variant == "bf16" else "fp32",
                                   channels_last=variant == "channels-last")
    row["peak"], row["peak_how"] = peak.peak, peak.how
    if variant == "fp32":
        row["agreement"] = ("same device" if device.type == "cpu"
                            else f"{step_agreement(tcfg, mcfg, info, batch, device):.2e}")
    return row


def variants(args) -> list[str]:
    out = ["fp32", "bf16"]
    cuda = resolve_device(args.device).type == "cuda"
    if args.channels_last or cuda:
        out.append("channels-last")
    if args.compile or cuda:
        out.append("compile")
    return out


def _failure(exc: BaseException) -> str:
    traceback.print_exc()
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"


def child(args) -> int:
    """The variant ``args.child`` (FAMILY/VARIANT) in this process: one ROW line of JSON."""
    family, variant = args.child.split("/")
    try:
        setup = Setup(family, args)
        if setup.device.type == "cpu":
            setup.warm_up()
        row = run_one(setup, variant)
    except Exception as exc:   # any failure is a row of the table, named, and a non-zero exit
        row = {"family": family, "variant": variant, "error": _failure(exc)}
    print("ROW " + json.dumps(row), flush=True)
    return 1 if "error" in row else 0


def mib(n) -> str:
    return f"{n / 2**20:.0f}" if isinstance(n, (int, float)) else "-"


def print_table(rows: list[dict]) -> None:
    head = ["family", "preset", "variant", "batch", "img/s", "peak MiB", "estimate MiB", "cpu vs device", "status"]
    lines = [head]
    for r in rows:
        lines.append([r["family"], r.get("preset", "-"), r["variant"], str(r.get("batch", "-")),
                      f"{r['img_s']:.1f}" if "img_s" in r else "-", mib(r.get("peak")), mib(r.get("estimate")),
                      r.get("agreement", ""), "FAILED: " + r["error"] if "error" in r else "ok"])
    widths = [max(len(line[i]) for line in lines[:]) for i in range(len(head) - 1)]
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--steps", type=int, default=20, help="steps per family and variant, the first a warm-up")
    ap.add_argument("--batch-size", type=int, help="instead of each preset's own batch size")
    ap.add_argument("--families", help="comma-separated subset of the families (default all)")
    ap.add_argument("--set", action="append", default=[], metavar="FAMILY:KEY=VALUE",
                    help="a config override for one family, e.g. capsnet:model.routing_iterations=1")
    ap.add_argument("--channels-last", action="store_true", help="also fp32 in channels-last (always on CUDA)")
    ap.add_argument("--compile", action="store_true", help="also fp32 under torch.compile (always on CUDA; "
                    "compiling on a CPU takes minutes)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds allowed to one family and variant")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    if args.child:
        return child(args)
    families = args.families.split(",") if args.families else list(FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        ap.error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    forwarded = list(argv if argv is not None else sys.argv[1:])
    # One fresh process per row: a crash or out-of-memory cannot take the others down, and each
    # peak is measured from a clean start (with all variants in one process per family, dcgan's
    # bf16 steps after its fp32 ones ran for over 10 minutes on this CPU, against 3 s alone; not
    # understood). Blocks above 64 KiB are mapped apart, so freed memory is returned and RSS
    # follows the live tensors (see capsgen.train.memory.PeakMemory).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]),
                                                    env.get("PYTHONPATH")) if p)
    rows = []
    for family in families:
        for variant in variants(args):
            cmd = [sys.executable, __file__, *forwarded, "--child", f"{family}/{variant}"]
            try:
                p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
                found = [line[4:] for line in p.stdout.splitlines() if line.startswith("ROW ")]
                row = json.loads(found[-1]) if found else {   # a crash (e.g. killed for memory) fails too
                    "family": family, "variant": variant,
                    "error": f"exit {p.returncode}: {(p.stderr.strip().splitlines() or ['no output'])[-1]}"}
            except subprocess.TimeoutExpired:
                row = {"family": family, "variant": variant, "error": f"over {args.timeout:g} s"}
            if "error" in row:
                print(f"device_check: {family} {variant} FAILED: {row['error']}", file=sys.stderr, flush=True)
            else:
                print(f"device_check: {family} {variant}: {row['img_s']:.1f} img/s", file=sys.stderr, flush=True)
            rows.append(row)
    print_table(rows)
    hows = sorted({r["peak_how"] for r in rows if "peak_how" in r})
    print(f"peak memory: {', '.join(hows) or '-'}; estimate: capsgen.train.memory (what capsgen train checks)")
    for family in families:
        fp32 = [r for r in rows if r["family"] == family and r["variant"] not in ("bf16",) and "img_s" in r]
        if len(fp32) > 1:
            best = max(fp32, key=lambda r: r["img_s"])
            print(f"fastest fp32 variant for {family}: {best['variant']} ({best['img_s']:.1f} img/s)")
    failed = sorted({r["family"] for r in rows if "error" in r})
    if failed:
        print(f"device_check: FAILED: {', '.join(failed)}")
        return 1
    print(f"device_check: all {len(families)} families passed on {resolve_device(args.device)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
