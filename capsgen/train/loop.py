"""The one generic training loop.

Determinism: the order of examples in epoch e is a permutation seeded by (seed, e), and each
step gets a generator seeded by (seed, step). Together with the RNG states stored in every
checkpoint, a run stopped at any moment — SIGKILL, Ctrl-C, SIGTERM — and resumed from its last
checkpoint ends with the same weights as an uninterrupted run of the same seed (on CPU).

Interruption: Ctrl-C and SIGTERM only set a flag; the loop looks at it *between* steps, logs the
figures of the steps since the last row, saves a checkpoint of the whole number of steps done and
stops. A second Ctrl-C stops at once, keeping the last checkpoint on disk (it is written
atomically, so it is never half a file). Under torchrun the processes agree on stopping, running
out of time and divergence with one tiny all-reduce per step, so they always stop after the same
step.
"""
from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

from capsgen.config import TrainConfig
from capsgen.data.batch import Batch
from capsgen.errors import CapsgenError
from capsgen.train.checkpoint import finite_weights, load_checkpoint, save_checkpoint
from capsgen.train.rundir import RunDir
from capsgen.train.task import StepContext, Task


class Interrupted(CapsgenError):
    """Training stopped by Ctrl-C / SIGTERM after saving a checkpoint."""


class Diverged(CapsgenError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


def _mix(seed: int, k: int) -> int:
    # Distinct, well-spread seeds for (run seed, counter) pairs.
    return (seed * 1_000_003 + k * 7_919 + 12_345) % (2**63 - 1)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The permutation of the n training examples used in ``epoch``."""
    g = torch.Generator().manual_seed(_mix(seed, epoch))
    return torch.randperm(n, generator=g)


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(_mix(seed + 1, step))


UNBOUNDED = 10**12   # step "budget" of a run bounded only by minutes


@dataclass
class Plan:
    steps_per_epoch: int
    total_steps: int
    eval_every: int


def plan(cfg: TrainConfig, n_train: int) -> Plan:
    """Step counts of a run; refuses budgets and batch sizes that cannot work (one line each)."""
    if cfg.batch_size < 1:
        raise CapsgenError(f"batch size must be >= 1, got {cfg.batch_size}")
    if n_train < cfg.batch_size:
        raise CapsgenError(f"batch size {cfg.batch_size} is larger than the {n_train} training "
                           "images; lower --batch-size")
    if cfg.batch_size % cfg.world_size:
        raise CapsgenError(f"batch size {cfg.batch_size} does not split evenly over {cfg.world_size} "
                           "processes; choose a multiple of --nproc_per_node")
    spe = n_train // cfg.batch_size  # drop the last partial batch: every step has equal shape
    if cfg.minutes is not None and not cfg.minutes > 0:
        raise CapsgenError(f"minutes must be > 0, got {cfg.minutes}")
    if cfg.steps is not None:
        total = cfg.steps
    elif cfg.epochs is None and cfg.minutes is not None:
        total = UNBOUNDED   # the time budget ends the run
    else:
        total = math.ceil((cfg.epochs if cfg.epochs is not None else 1.0) * spe)
    if total < 1:
        raise CapsgenError("nothing to train: --steps/--epochs must give at least one step")
    return Plan(spe, total, cfg.eval_every or spe)


class _StopFlag:
    """Ctrl-C / SIGTERM set a flag the loop reads between steps; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self):
        self._old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self._old:
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print("\ncapsgen: stopping after this step and saving a checkpoint "
              "(Ctrl-C again to stop at once, keeping the last checkpoint)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        return False


def _autocast(task: Task, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=task.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def start_header(run: RunDir, task: Task, cfg: TrainConfig, p: Plan, step: int) -> str:
    """One line before the wait: what trains, how big, where, with what and for how long."""
    import os

    params = sum(t.numel() for m in task.modules.values() for t in m.parameters())
    preset = (run.read_config().get("preset") or None) if run.config_path.is_file() else None
    if cfg.steps is not None or cfg.epochs is not None or cfg.minutes is None:
        budget = f"{p.total_steps:,} steps ({p.total_steps / p.steps_per_epoch:.3g} epochs)"
        budget += f", at most {cfg.minutes:g} min" if cfg.minutes is not None else ""
    else:
        budget = f"{cfg.minutes:g} min"
    if step:
        budget += f", from step {step:,}"
    threads = torch.get_num_threads()
    omp = os.environ.get("OMP_NUM_THREADS")
    return (f"capsgen: training {cfg.family}" + (f" (preset {preset})" if preset else "")
            + f" on {cfg.data}: {params:,} parameters, device {task.device}, {threads} thread"
            + ("s" if threads != 1 else "") + (f" (OMP_NUM_THREADS={omp})" if omp else "")
            + f", batch {cfg.batch_size}" + (f" over {cfg.world_size} processes" if cfg.world_size > 1 else "")
            + f", {budget}, {cfg.precision}; into {run.path}")


def run_training(run: RunDir, task: Task, cfg: TrainConfig, train: Batch, test: Batch,
                 resume: bool = False, progress: bool = True,
                 on_eval: Callable[[int, dict], None] | None = None) -> dict:
    """Train ``task`` until ``cfg``'s step or time budget; returns the final evaluation figures.

    ``train`` and ``test`` are whole splits on the CPU; each step's slice is moved to the task's
    device. Only process 0 writes anything (metrics, pictures, checkpoints).
    """
    dist = task.dist
    main = dist.is_main
    if cfg.eval_limit is not None:
        test = test[: cfg.eval_limit]
    p = plan(cfg, len(train))
    local_b = cfg.batch_size // dist.world_size
    rank_slice = slice(dist.rank * local_b, (dist.rank + 1) * local_b)
    state = {"step": 0, "best": None, "elapsed": 0.0}
    if resume:
        extras: dict[str, torch.Tensor] = {}
        state.update(load_checkpoint(run.checkpoint("last"), task.modules, task.optimizers, extras=extras))
        task.load_extra_state(extras)
        if main:
            run.truncate_metrics(state["step"])
    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when training

        writer = SummaryWriter(str(run.tb), purge_step=state["step"] if resume else None)
    step = start_step = state["step"]
    if main and cfg.precision == "bf16" and task.device.type == "cpu":
        # Measured: the default CapsNet on mnist-5k, batch 32, one thread, 20 steps: 1353 s in bf16
        # against 133 s in fp32 on this project's 2-core machine (the issue saw 2x on another run).
        print("capsgen: warning: bf16 on a CPU is slower than fp32 (10x per step for the default CapsNet on this "
              "project's machine: CPUs without bf16 units emulate it); use it on a GPU, or leave --precision out",
              file=sys.stderr, flush=True)
    if main and step >= p.total_steps:
        print(f"{run.path}: already trained for {step} of {p.total_steps} steps")
    elif main and cfg.minutes is not None and state["elapsed"] >= cfg.minutes * 60:
        print(f"{run.path}: its time budget of {cfg.minutes:g} minutes is already spent")
    better = (lambda a, b: a < b) if task.best_mode == "min" else (lambda a, b: a > b)
    order_epoch, order = -1, None
    t0 = time.perf_counter() - state["elapsed"]
    window: dict[str, list[float]] = {}
    final: dict = {}

    def save(name: str) -> None:
        if not main:
            return
        problem = finite_weights(task.modules)
        if problem:
            raise Diverged(f"{problem} at step {step}; not saved as the '{name}' checkpoint. The last good "
                           f"checkpoint (step {state['step']}) stays in {run.checkpoint('last')}; start a new "
                           "run with a lower learning rate (e.g. --set model.lr=…)")
        state["step"] = step
        state["elapsed"] = time.perf_counter() - t0
        try:
            save_checkpoint(run.checkpoint(name), task.modules, task.optimizers, dict(state),
                            extras=task.extra_state())
        except (OSError, CapsgenError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).split(": ")[-1]
            raise CapsgenError(f"{run.checkpoint(name)}: cannot write the checkpoint ({why}); "
                               f"the previous one is intact — free space or fix permissions, then "
                               f"capsgen train --resume {run.path}") from None

    def log_row() -> None:
        if not window:
            return
        means = {k2: sum(v) / len(v) for k2, v in window.items()}
        window.clear()
        if main:
            run.append_metrics({"step": step, "split": "train", "epoch": round(step / p.steps_per_epoch, 4),
                                "time": round(time.perf_counter() - t0, 2), **means})
            for k2, v in means.items():
                writer.add_scalar(f"train/{k2}", v, step)
            bar.set_postfix({k2: f"{v:.4g}" for k2, v in means.items()}, refresh=False)

    def evaluate(record: bool = True) -> dict:
        task.train_mode(False)
        with torch.no_grad():
            res = task.evaluate(test)
        task.train_mode(True)
        if not record:
            return res
        run.append_metrics({"step": step, "split": "test", **res})
        for k, v in res.items():
            writer.add_scalar(f"test/{k}", v, step)
        if on_eval:
            on_eval(step, res)
        return res

    if step == 0:
        save("last")  # so a run that diverges or dies early still has a good checkpoint
    budget_s = cfg.minutes * 60 if cfg.minutes is not None else math.inf
    if progress and main and step < p.total_steps:
        print(start_header(run, task, cfg, p, step), file=sys.stderr, flush=True)
    bar = tqdm(total=None if p.total_steps == UNBOUNDED else p.total_steps, initial=step,
               disable=not (progress and main), unit="step", dynamic_ncols=True, file=sys.stderr)
    spent = state["elapsed"] >= budget_s
    task.train_mode(True)
    try:
        with _StopFlag() as stop:
            while step < p.total_steps and not spent:
                if dist.any_([stop.requested])[0]:    # a boundary: everything of `step` steps is done
                    log_row()
                    save("last")
                    raise Interrupted(f"interrupted at step {step}; checkpoint saved. Continue with: "
                                      f"capsgen train --resume {run.path}")
                epoch, k = divmod(step, p.steps_per_epoch)
                if epoch != order_epoch:
                    order, order_epoch = epoch_order(cfg.seed, epoch, len(train)), epoch
                idx = order[k * cfg.batch_size:(k + 1) * cfg.batch_size][rank_slice]
                ctx = StepContext(step, step / p.steps_per_epoch, p.steps_per_epoch,
                                  step_generator(cfg.seed, step), cfg.batch_size, rank_slice)
                with _autocast(task, cfg.precision):
                    figures = task.train_step(train[idx].to(task.device), ctx)
                bad = [k2 for k2, v in figures.items() if not math.isfinite(v)]
                reason = f"{', '.join(bad)} became non-finite" if bad else task.check_figures(figures)
                out_of_time = time.perf_counter() - t0 >= budget_s
                out_of_time, diverged = dist.any_([out_of_time, bool(reason)])
                if diverged:
                    raise Diverged(f"{reason or 'another process diverged'} at step {step + 1}; the last good "
                                   f"checkpoint (step {state['step']}) is kept in {run.checkpoint('last')}; "
                                   "start a new run with a lower learning rate (e.g. --set model.lr=…)")
                step += 1
                for k2, v in figures.items():
                    window.setdefault(k2, []).append(v)
                if budget_s != math.inf:   # tqdm's own ETA counts steps; a time budget ends sooner
                    left = max(0.0, budget_s - (time.perf_counter() - t0))
                    bar.set_description_str(f"{int(left // 60)}:{int(left % 60):02d} left", refresh=False)
                bar.update(1)
                last = step == p.total_steps or out_of_time
                if last and progress and main:
                    bar.write(f"capsgen: step {step}: final evaluation on the test split ...",
                              file=sys.stderr)
                if step % cfg.log_every == 0 or step == p.total_steps or out_of_time:
                    log_row()
                if main:
                    task.after_step(step, run, writer)
                if main and (step % p.eval_every == 0 or step == p.total_steps):
                    final = evaluate()
                    bar.set_postfix({k2: f"{v:.4g}" for k2, v in final.items()}, refresh=False)
                    val = final.get(task.best_metric) if task.best_metric else None
                    if val is not None and (state["best"] is None or better(val, state["best"])):
                        state["best"] = val
                        save("best")
                if main and out_of_time and step % p.eval_every and step != p.total_steps:
                    final = evaluate()   # the budget ends the run here: evaluate what it reached
                if step % cfg.checkpoint_every == 0 or step == p.total_steps or out_of_time:
                    save("last")
                if out_of_time:
                    break
    except KeyboardInterrupt:    # a second Ctrl-C: stop now; the last checkpoint on disk is whole
        raise Interrupted(f"stopped at once; the last checkpoint (step {state['step']}) is kept. "
                          f"Continue with: capsgen train --resume {run.path}") from None
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if main and not final:
        # A resume of a finished run trains nothing and usually finds this step's test row in
        # metrics.jsonl already (the last step is evaluated before 'last' is saved): no second row.
        done = step == start_step and any(r.get("split") == "test" and r.get("step") == step
                                          for r in run.read_metrics())
        final = evaluate(record=not done) if step > 0 else {}
    return final
