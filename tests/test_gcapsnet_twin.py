"""The G-CapsNets' matched non-capsule twins (``capsgen train gcapsnet --twin``): every capsule
layer replaced in place by a dense or conv layer of the same width (capsgen.models.gcapsnet.nets),
the same convolutions, decoder, loss and masking; each twin learns, trains, resumes exactly and can
do what a gcapsnet run can (eval, figures, attacks); the CNN baseline has no twin."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from capsgen.cli import main
from capsgen.errors import ConfigError
from capsgen.models.gcapsnet.config import GCapsNetConfig, preset_config
from capsgen.models.gcapsnet.nets import ConvGCapsNet, build_gcapsnet, classification_loss
from capsgen.nn import margin_loss
from capsgen.nn.twins import DenseTwin, GroupScore, PrimaryFeatures
from capsgen.nn.twins_conv import ConvTwin
from capsgen.runs import make_configs
from tests.test_capsnet_twin import eval_json, last_test_row
from tests.test_gcapsnet_task import COMMON, TINY, assert_same_checkpoints


def twin_args(kind: str) -> list[str]:
    """TINY[kind] without the ``--set``s of capsule-only fields, which --twin refuses."""
    pairs = [p for p in TINY[kind][1::2] if p.split("=")[0] not in GCapsNetConfig.CAPSULE_FIELDS]
    return [a for p in pairs for a in ("--set", p)]


def train_twin(out: Path, kind: str, *extra: str) -> int:
    return main([*COMMON, "--twin", *twin_args(kind), "--out", str(out), *extra])


@pytest.mark.parametrize("preset", ["fc-recon", "conv-recon", "multilayer"])
def test_each_capsule_layer_is_replaced_in_place_by_a_layer_of_its_width(preset):
    cfg = preset_config(preset)
    shape = (3, 32, 32) if preset == "multilayer" else (1, 28, 28)
    torch.manual_seed(0)
    caps, twin = build_gcapsnet(cfg, shape, 10), build_gcapsnet(dataclasses.replace(cfg, twin=True), shape, 10)
    assert isinstance(twin.score, GroupScore) and caps.score is None
    if preset == "multilayer":
        assert all(isinstance(t, ConvTwin) for t in twin.caps) and len(twin.caps) == len(caps.caps)
        for t, c in zip(twin.caps, caps.caps):
            assert (t.conv.kernel_size[0], t.conv.stride[0]) == (c.kernel_size, c.stride)
            assert (t.in_capsules, t.in_dim, t.out_capsules, t.out_dim) == \
                (c.in_capsules, c.in_dim, c.out_capsules, c.out_dim)
        with pytest.raises(ValueError, match="no capsule layers"):
            twin.parameter_table()
    else:
        assert isinstance(twin.primary, PrimaryFeatures)
        assert twin.primary.conv.weight.shape == caps.primary.conv.weight.shape
    if isinstance(caps, ConvGCapsNet):
        assert isinstance(twin.classes, ConvTwin) and twin.classes.conv.kernel_size == (6, 6)   # the 6x6 grid
        assert twin.classes.conv.out_channels == 10 * caps.class_dim
    else:
        assert isinstance(twin.classes, DenseTwin)
        I, J, Dout, Din = caps.classes.weight.shape
        assert (twin.classes.linear.in_features, twin.classes.linear.out_features) == (I * Din, J * Dout)
    x, y = torch.rand(3, *shape), torch.tensor([0, 4, 9])
    poses = twin(x)
    assert poses.shape == caps(x).shape
    scores = twin.class_scores(x)
    assert scores.shape == (3, 10) and ((scores > 0) & (scores < 1)).all()
    loss, parts = classification_loss(twin, x, y, cfg)
    expected = margin_loss(twin.score(poses), y)
    if twin.has_decoder:
        expected = expected + cfg.recon_weight * (twin.decode(poses, y) - x).pow(2).flatten(1).sum(1).mean()
    torch.testing.assert_close(loss, expected)


def test_multilayer_twin_feeds_the_unsquashed_relu_output_to_its_first_layer():
    cfg = dataclasses.replace(preset_config("multilayer"), twin=True)
    twin = build_gcapsnet(cfg, (3, 32, 32), 10)
    seen = []
    twin.caps[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    x = torch.rand(2, 3, 32, 32)
    twin(x)
    y = twin.convs(x)                                    # [2, 128, 10, 10], after the last ReLU
    assert torch.equal(seen[0], y.view(2, 16, 8, 10, 10).permute(0, 1, 3, 4, 2))


@pytest.mark.parametrize("kind", ["fc", "conv", "multilayer"])
def test_every_twin_learns_on_digits(kind, tmp_path):
    out = tmp_path / kind
    # the settings of the capsule networks' test (tests/test_gcapsnet_task.py)
    assert train_twin(out, kind, "--steps", "100", "--set", "lr=3e-3", "--set", "shift_pixels=0",
                      "--set", "eval_limit=200", "--set", "checkpoint_every=100") == 0
    assert last_test_row(out)["test_error"] < 0.6     # chance: 0.9


def test_twin_resumes_exactly_evaluates_and_draws_like_the_capsule_run(tmp_path, capsys):
    caps, full, part = tmp_path / "caps", tmp_path / "full", tmp_path / "part"
    assert main([*COMMON, *TINY["fc-recon"], "--steps", "3", "--out", str(caps)]) == 0
    assert train_twin(full, "fc-recon", "--steps", "6") == 0
    assert train_twin(part, "fc-recon", "--steps", "3") == 0
    assert main(["train", "--resume", str(part), "--steps", "6", "--no-progress"]) == 0
    assert_same_checkpoints(full, part)
    assert json.loads((full / "config.json").read_text())["model"]["twin"] is True
    caps_res, twin_res = eval_json(capsys, caps), eval_json(capsys, full)
    assert twin_res["capabilities"] == caps_res["capabilities"] == ["classify"]
    assert set(twin_res["classify"]) == set(caps_res["classify"])
    assert set(last_test_row(full)) == set(last_test_row(caps)) and "recon_sse" in last_test_row(full)
    names = [sorted(p.name for p in (run / "figures").glob("*.png")) for run in (caps, full)]
    assert names[0] == names[1] and "reconstructions.png" in names[1]


def test_conv_twin_run_can_be_attacked(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "uap"
    assert train_twin(run, "conv", "--steps", "3") == 0
    capsys.readouterr()
    assert main(["attack", str(run), "--device", "cpu", "--method", "uap", "--eps", "0.2", "--iters", "3",
                 "--n", "20", "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[0])
    assert res["family"] == "gcapsnet" and res["n"] == 20 and res["max_abs_perturbation"] <= 0.2 + 1e-6


def test_the_cnn_baseline_has_no_twin():
    for pairs in (["model.arch=baseline"], ["model.preset=cifar-baseline", "model.arch=baseline"]):
        with pytest.raises(ConfigError, match="arch=baseline is the CNN baseline, which has no capsule part"):
            make_configs("gcapsnet", [*pairs, "model.twin=true"])


@pytest.mark.parametrize("args,message", [
    (["--preset", "baseline"], "model: twin: arch=baseline is the CNN baseline, which has no capsule part"),
    (["--set", "model.arch=baseline"], "has no capsule part"),
    (["--set", "model.coupling_init=xavier"], "--set model.coupling_init conflicts with --twin"),
    (["--preset", "multilayer", "--set", "caps_relu=false"], "--set model.caps_relu conflicts with --twin"),
])
def test_twin_refusals_are_one_line_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["train", "gcapsnet", "--twin", *args, "--data", "digits", "--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()
