"""The one generic training loop.

Determinism: the order of examples in epoch e is a permutation seeded by (seed, e), and each
step gets a generator seeded by (seed, step). Together with the RNG states stored in every
checkpoint, a run killed at any moment and resumed from its last checkpoint ends with the
same weights as an uninterrupted run of the same seed (on CPU).
"""
from __future__ import annotations

import math
import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

from capsgen.config import TrainConfig
from capsgen.errors import CapsgenError
from capsgen.train.checkpoint import load_checkpoint, save_checkpoint
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
    if n_train < cfg.batch_size:
        raise CapsgenError(f"batch size {cfg.batch_size} is larger than the {n_train} training "
                           "images; lower --batch-size")
    spe = n_train // cfg.batch_size  # drop the last partial batch: every step has equal shape
    if cfg.minutes is not None and cfg.minutes <= 0:
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


class _SignalGuard:
    """Turn SIGTERM into KeyboardInterrupt so both stop the run the same clean way."""

    def __enter__(self):
        self._old = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._old)
        return False


def run_training(run: RunDir, task: Task, cfg: TrainConfig,
                 train: tuple[torch.Tensor, torch.Tensor | None],
                 test: tuple[torch.Tensor, torch.Tensor | None],
                 resume: bool = False, progress: bool = True,
                 on_eval: Callable[[int, dict], None] | None = None) -> dict:
    """Train ``task`` until ``cfg``'s step budget; returns the final evaluation figures."""
    x_train, y_train = train
    x_test, y_test = test
    if cfg.eval_limit is not None:
        x_test = x_test[: cfg.eval_limit]
        y_test = y_test[: cfg.eval_limit] if y_test is not None else None
    p = plan(cfg, len(x_train))
    state = {"step": 0, "best": None, "elapsed": 0.0}
    if resume:
        last = run.checkpoint("last")
        if last.exists():
            state.update(load_checkpoint(last, task.modules, task.optimizers))
        run.truncate_metrics(state["step"])
    from torch.utils.tensorboard import SummaryWriter  # slow import: only when training

    writer = SummaryWriter(str(run.tb), purge_step=state["step"] if resume else None)
    step = state["step"]
    if step >= p.total_steps:
        print(f"{run.path}: already trained for {step} of {p.total_steps} steps")
    elif cfg.minutes is not None and state["elapsed"] >= cfg.minutes * 60:
        print(f"{run.path}: its time budget of {cfg.minutes:g} minutes is already spent")
    better = (lambda a, b: a < b) if task.best_metric and task.best_mode == "min" else (lambda a, b: a > b)
    order_epoch, order = -1, None
    t0 = time.perf_counter() - state["elapsed"]
    window: dict[str, list[float]] = {}
    final: dict = {}

    def save(name: str) -> None:
        state["step"] = step
        state["elapsed"] = time.perf_counter() - t0
        save_checkpoint(run.checkpoint(name), task.modules, task.optimizers, dict(state))

    def evaluate() -> dict:
        task.train_mode(False)
        with torch.no_grad():
            res = task.evaluate(x_test, y_test)
        task.train_mode(True)
        run.append_metrics({"step": step, "split": "test", **res})
        for k, v in res.items():
            writer.add_scalar(f"test/{k}", v, step)
        if on_eval:
            on_eval(step, res)
        return res

    if step == 0:
        save("last")  # so a run that diverges or dies early still has a good checkpoint
    budget_s = cfg.minutes * 60 if cfg.minutes is not None else math.inf
    bar = tqdm(total=None if p.total_steps == UNBOUNDED else p.total_steps, initial=step, disable=not progress, unit="step",
               dynamic_ncols=True, file=sys.stderr)
    task.train_mode(True)
    try:
        with _SignalGuard():
            while step < p.total_steps and time.perf_counter() - t0 < budget_s:
                epoch, k = divmod(step, p.steps_per_epoch)
                if epoch != order_epoch:
                    order, order_epoch = epoch_order(cfg.seed, epoch, len(x_train)), epoch
                idx = order[k * cfg.batch_size:(k + 1) * cfg.batch_size]
                ctx = StepContext(step, step / p.steps_per_epoch, p.steps_per_epoch,
                                  step_generator(cfg.seed, step))
                figures = task.train_step(x_train[idx], y_train[idx] if y_train is not None else None, ctx)
                bad = [k2 for k2, v in figures.items() if not math.isfinite(v)]
                reason = f"{', '.join(bad)} became non-finite" if bad else task.check_figures(figures)
                if reason:
                    raise Diverged(f"{reason} at step {step + 1}; the last "
                                   f"good checkpoint (step {state['step']}) is kept in {run.checkpoint('last')} "
                                   "(try a lower learning rate with --set lr=…)")
                step += 1
                for k2, v in figures.items():
                    window.setdefault(k2, []).append(v)
                bar.update(1)
                out_of_time = time.perf_counter() - t0 >= budget_s
                if step % cfg.log_every == 0 or step == p.total_steps or out_of_time:
                    means = {k2: sum(v) / len(v) for k2, v in window.items()}
                    window.clear()
                    run.append_metrics({"step": step, "split": "train", "epoch": round(step / p.steps_per_epoch, 4),
                                        "time": round(time.perf_counter() - t0, 2), **means})
                    for k2, v in means.items():
                        writer.add_scalar(f"train/{k2}", v, step)
                    bar.set_postfix({k2: f"{v:.4g}" for k2, v in means.items()}, refresh=False)
                task.after_step(step, run, writer)
                if step % p.eval_every == 0 or step == p.total_steps:
                    final = evaluate()
                    bar.set_postfix({k2: f"{v:.4g}" for k2, v in final.items()}, refresh=False)
                    val = final.get(task.best_metric)
                    if val is not None and (state["best"] is None or better(val, state["best"])):
                        state["best"] = val
                        save("best")
                if out_of_time and step % p.eval_every and step != p.total_steps:
                    final = evaluate()   # the budget ends the run here: evaluate what it reached
                if step % cfg.checkpoint_every == 0 or step == p.total_steps or out_of_time:
                    save("last")
    except KeyboardInterrupt:
        bar.close()
        save("last")
        writer.close()
        raise Interrupted(f"interrupted at step {step}; checkpoint saved. Continue with: "
                          f"capsgen train --resume {run.path}") from None
    finally:
        bar.close()
        writer.close()
    if not final:
        final = evaluate() if step > 0 else {}
    return final
