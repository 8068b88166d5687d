"""The ``gcapsnet`` family through the command line on the 8x8 digits: training, resume equality,
evaluation, pictures, config ranges, and each network's parameter count beside Chen et al.'s."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from capsgen.cli import main
from capsgen.data.batch import Batch
from capsgen.errors import ConfigError
from capsgen.models import get_family
from capsgen.models.gcapsnet.config import PRESET_NAMES, GCapsNetConfig, preset_config
from capsgen.models.gcapsnet.task import GCapsNetTask
from capsgen.runs import make_configs, open_run
from capsgen.train.checkpoint import read_checkpoint
from capsgen.train.task import DataInfo, StepContext

# Every architecture at a size that fits 8x8 images (the primary grid is 2x2 for fc and conv).
BODY = ["--set", "conv_channels=8", "--set", "conv_kernel=3", "--set", "primary_caps=4", "--set",
        "primary_kernel=3", "--set", "class_dim=4"]
TINY = {
    "fc": ["--set", "arch=fc", *BODY],
    "fc-recon": ["--set", "arch=fc", *BODY, "--set", "reconstruction=true", "--set", "decoder_hidden=16"],
    "conv": ["--set", "arch=conv", *BODY[:-2]],
    "multilayer": ["--set", "arch=multilayer", "--set", "ml_conv_channels=8,16", "--set", "ml_conv_kernels=3,3",
                   "--set", "ml_conv_strides=1,1", "--set", "ml_caps_types=4,4", "--set", "ml_caps_kernels=2,2",
                   "--set", "ml_caps_strides=1,1", "--set", "ml_caps_matrices=4,2", "--set", "caps_relu=true"],
    "baseline": ["--set", "arch=baseline", "--set", "baseline_conv=8,8", "--set", "baseline_kernels=3,3",
                 "--set", "baseline_strides=1,2", "--set", "baseline_padding=1,1", "--set", "baseline_fc=16"],
}
COMMON = ["train", "gcapsnet", "--data", "digits", "--batch-size", "32", "--seed", "3", "--no-progress",
          "--set", "threads=1", "--set", "log_every=1", "--set", "checkpoint_every=2", "--set", "shift_pixels=1"]


def train(out: Path, kind: str, *extra: str) -> int:
    return main([*COMMON, *TINY[kind], "--out", str(out), *extra])


def assert_same_checkpoints(a_run: Path, b_run: Path) -> None:
    a, _ = read_checkpoint(a_run / "checkpoints" / "last.safetensors")
    b, _ = read_checkpoint(b_run / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("kind", ["fc-recon", "baseline"])
def test_train_resume_equals_uninterrupted_and_eval(kind, tmp_path, capsys):
    # fc-recon: shifts and the decoder; baseline: dropout masks drawn per step
    full, part = tmp_path / "full", tmp_path / "part"
    assert train(full, kind, "--steps", "6") == 0
    assert train(part, kind, "--steps", "3") == 0
    assert main(["train", "--resume", str(part), "--steps", "6", "--no-progress"]) == 0
    assert_same_checkpoints(full, part)
    capsys.readouterr()
    assert main(["eval", str(full)]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[0])
    assert res["capabilities"] == ["classify"] and 0 <= res["classify"]["test_error"] <= 1
    figures = sorted(p.name for p in (full / "figures").glob("*.png"))
    assert ("reconstructions.png" in figures) == (kind == "fc-recon")
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert ("recon_sse" in train_rows[0]) == (kind == "fc-recon")
    assert ("cross_entropy" in train_rows[0]) == (kind == "baseline")


@pytest.mark.parametrize("kind", ["fc", "conv", "multilayer"])
def test_every_capsule_architecture_learns_on_digits(kind, tmp_path):
    out = tmp_path / kind
    # no shifts: up to 2 pixels of an 8x8 digit hide it (the fc net stayed at chance for 60 steps)
    assert train(out, kind, "--steps", "100", "--set", "lr=3e-3", "--set", "shift_pixels=0",
                 "--set", "eval_limit=200", "--set", "checkpoint_every=100") == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    test = [r for r in rows if r["split"] == "test"][-1]
    assert test["test_error"] < 0.6          # 10 classes: chance is 0.9
    task = open_run(out).task
    assert isinstance(task, GCapsNetTask) and task.model.score_kind == "length"


def _task(kind: str, **over) -> GCapsNetTask:
    pairs = [f"model.{a.split('=')[0]}={a.split('=', 1)[1]}" for a in TINY[kind][1::2]]
    pairs += [f"model.{k}={v}" for k, v in over.items()]
    _, mcfg = make_configs("gcapsnet", pairs)
    torch.manual_seed(0)
    return GCapsNetTask(mcfg, DataInfo("digits", (1, 8, 8), 10, None, 100), torch.device("cpu"))


def test_step_uses_the_loss_helper_lr_decay_and_shifts():
    task = _task("fc-recon", lr_decay=0.5, shift_pixels=0)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    ctx = StepContext(step=7, epoch=2.3, steps_per_epoch=3, generator=torch.Generator().manual_seed(0))
    figures = task.train_step(Batch(x, y), ctx)
    assert task.optimizers["model"].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 ** 2)   # epoch 2
    assert set(figures) == {"loss", "accuracy", "margin", "recon_sse"}
    assert figures["loss"] == pytest.approx(figures["margin"] + 0.0005 * figures["recon_sse"], rel=1e-5)


def test_evaluate_changes_nothing_and_scores_are_differentiable():
    task = _task("fc-recon")
    task.train_mode(False)
    images, labels = torch.rand(12, 1, 8, 8), torch.arange(12) % 10
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    rng = torch.get_rng_state()
    res = task.evaluate(Batch(images, labels))
    assert set(res) == {"test_error", "n", "recon_sse"} and res["n"] == 12
    assert all(torch.equal(before[k], v) for k, v in task.model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert task.error_on(images, labels) == pytest.approx(res["test_error"])
    x = images.clone().requires_grad_(True)
    task.class_scores(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_describe_sets_the_parameter_count_beside_the_papers():
    info = DataInfo("mnist", (1, 28, 28), 10, None, 60000)
    fc = GCapsNetTask(preset_config("fc"), info, torch.device("cpu")).describe()
    assert fc == {"arch": "fc", "preset": "fc", "twin": False, "reconstruction": False, "params": 6_815_744, "paper": "6.8M",
                  "matches_paper": True, "note": ""}
    # not the paper's image shape: no paper figure to compare with
    tiny = _task("fc").describe()
    assert tiny["paper"] is None and tiny["matches_paper"] is None and tiny["params"] > 0


def test_config_ranges_presets_and_ineffective_fields():
    fam = get_family("gcapsnet")
    assert fam.capabilities == ("classify",) and set(fam.presets) == set(PRESET_NAMES)
    for bad in ("model.caps_matrix=0", "model.arch=capsnet", "model.lr=0", "model.baseline_padding=-1,0",
                "model.coupling_init=softmax", "model.preset=nosuch", "model.shift_pixels=-1"):
        with pytest.raises(ConfigError):
            make_configs("gcapsnet", [bad])
    with pytest.raises(ConfigError, match="baseline_dropout"):      # validate(): must stay below 1
        make_configs("gcapsnet", ["model.arch=baseline", "model.baseline_dropout=1"])
    with pytest.raises(ConfigError, match="no decoder"):
        make_configs("gcapsnet", ["model.recon_weight=0.1"])
    with pytest.raises(ConfigError, match="arch=baseline does not use it"):
        make_configs("gcapsnet", ["model.squash=sabour"], preset="baseline")
    _, cfg = make_configs("gcapsnet", ["model.recon_weight=0.1"], preset="conv-recon")
    assert isinstance(cfg, GCapsNetConfig) and cfg.recon_weight == 0.1 and cfg.preset == "conv-recon"


def test_train_refuses_images_too_small_in_one_line(tmp_path, capsys):
    assert main(["train", "gcapsnet", "--preset", "fc", "--data", "digits", "--steps", "1",
                 "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "too small for the fc G-CapsNet" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
