"""The ``sabour`` preset of capsnet: Sabour et al.'s code's learning-rate schedule (Adam, 1e-3 x
0.96^(step / 2000), batches of 128), while the defaults — and so earlier runs — stay as they were."""
from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from capsgen.config import from_dict
from capsgen.data.batch import Batch
from capsgen.errors import ConfigError
from capsgen.models.capsnet.config import CapsNetConfig
from capsgen.models.capsnet.task import CapsNetTask
from capsgen.models.common import set_step_lr
from capsgen.runs import make_configs
from capsgen.train.task import DataInfo, StepContext

TINY = ["model.conv_channels=4", "model.conv_kernel=3", "model.primary_capsules=2", "model.primary_kernel=3",
        "model.class_dim=4", "model.decoder_hidden=8"]


def ctx(step: int, steps_per_epoch: int = 600) -> StepContext:
    return StepContext(step, step / steps_per_epoch, steps_per_epoch, torch.Generator().manual_seed(step))


def lr_after(task: CapsNetTask, step: int) -> float:
    x = torch.rand(2, 1, 8, 8)
    task.train_step(Batch(x, torch.tensor([0, 1])), ctx(step))
    return task.optimizers["model"].param_groups[0]["lr"]


def task_for(tcfg_mcfg) -> CapsNetTask:
    _, mcfg = tcfg_mcfg
    return CapsNetTask(mcfg, DataInfo("digits", (1, 8, 8), 10, None, 100), torch.device("cpu"))


def test_sabour_preset_is_their_code_schedule():
    tcfg, mcfg = make_configs("capsnet", TINY, preset="sabour")
    assert (mcfg.lr, mcfg.lr_decay, mcfg.lr_decay_steps, tcfg.batch_size) == (1e-3, 0.96, 2000, 128)
    task = task_for((tcfg, mcfg))
    # continuous decay (no staircase), whatever the epoch length
    for step, want in ((0, 1e-3), (1000, 1e-3 * 0.96 ** 0.5), (2000, 1e-3 * 0.96), (7000, 1e-3 * 0.96 ** 3.5)):
        assert lr_after(task, step) == pytest.approx(want, rel=1e-12)
    # a --batch-size flag wins over the preset's
    assert make_configs("capsnet", TINY, preset="sabour", batch_size=100)[0].batch_size == 100


def test_defaults_are_unchanged_and_old_configs_reopen():
    cfg = CapsNetConfig()
    assert (cfg.lr, cfg.lr_decay, cfg.lr_decay_steps) == (1e-3, 1.0, None)
    # the per-epoch staircase is what it was
    task = task_for(make_configs("capsnet", [*TINY, "model.lr_decay=0.5"]))
    assert lr_after(task, 599) == pytest.approx(1e-3) and lr_after(task, 1200) == pytest.approx(2.5e-4)
    # a config.json written before lr_decay_steps existed still reads, with the old behaviour
    old = asdict(CapsNetConfig())
    del old["lr_decay_steps"]
    assert from_dict(CapsNetConfig, json.loads(json.dumps(old))).lr_decay_steps is None


def test_set_step_lr_both_ways():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    set_step_lr(opt, 0.1, 0.5, ctx(250, steps_per_epoch=100))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 2)
    set_step_lr(opt, 0.1, 0.5, ctx(250, steps_per_epoch=100), every_steps=100)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 2.5)


def test_bad_schedules_are_refused():
    with pytest.raises(ConfigError, match="lr_decay_steps"):
        make_configs("capsnet", ["model.lr_decay_steps=0"])
    with pytest.raises(ConfigError, match="no decay"):      # without a decay the steps do nothing
        make_configs("capsnet", ["model.lr_decay_steps=2000"])
