"""The CapsNet's matched non-capsule twin (``capsgen train capsnet --twin``): the same conv,
decoder, margin loss and masking with PrimaryFeatures, a DenseTwin and GroupScores in place of
the squash, the routing and the lengths (it learns: tests/test_capsnet.py); it trains and resumes
through the command line, and everything a capsnet run can do (eval, figures, attacks) works on a
twin run."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from capsgen.cli import main
from capsgen.models.capsnet.config import CapsNetConfig
from capsgen.models.capsnet.nets import CapsNet, capsnet_loss
from capsgen.nn import margin_loss
from capsgen.nn.twins import TWIN_SLOPE, DenseTwin, GroupScore, PrimaryFeatures

TINY = CapsNetConfig(conv_channels=16, conv_kernel=3, primary_capsules=4, primary_kernel=3,
                     class_dim=8, decoder_hidden=(32, 64), shift_pixels=1)
TINY_SET = ["--set", "conv_channels=16", "--set", "conv_kernel=3", "--set", "primary_capsules=4",
            "--set", "primary_kernel=3", "--set", "class_dim=8", "--set", "decoder_hidden=32,64",
            "--set", "shift_pixels=1"]
COMMON = ["--data", "digits", "--batch-size", "32", "--no-progress", "--set", "threads=1",
          "--set", "eval_limit=64", *TINY_SET]


def test_twin_is_the_capsnet_with_squash_routing_and_lengths_replaced():
    torch.manual_seed(0)
    caps = CapsNet(TINY, (1, 8, 8), 10)
    twin = CapsNet(dataclasses.replace(TINY, twin=True), (1, 8, 8), 10)
    assert isinstance(twin.primary, PrimaryFeatures) and isinstance(twin.score, GroupScore)
    assert isinstance(twin.classes, DenseTwin) and caps.score is None
    # the same weights outside the replaced parts; the dense layer has the capsule transforms' width
    outside = {k: v.shape for k, v in caps.state_dict().items() if not k.startswith("classes.")}
    assert outside == {k: v.shape for k, v in twin.state_dict().items()
                       if not k.startswith(("classes.", "score."))}
    assert twin.classes.linear.weight.numel() == caps.classes.weight.numel()
    twin.load_state_dict({**twin.state_dict(), **{k: v for k, v in caps.state_dict().items()
                                                 if not k.startswith("classes.")}})
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 10, (5,))
    pre = caps.primary.conv(F.relu(caps.conv(x)))      # the capsules' pre-squash activations
    feats = F.leaky_relu(pre.view(5, 4, 8, 2, 2).permute(0, 1, 3, 4, 2).reshape(5, 16, 8), TWIN_SLOPE)
    torch.testing.assert_close(twin.primary(F.relu(twin.conv(x))), feats)
    # the same loss on the twin's scores: margin on GroupScores + the same masked decoder
    loss, parts = capsnet_loss(twin, x, y)
    v = twin(x)
    scores = twin.score(v)
    assert ((scores > 0) & (scores < 1)).all() and torch.equal(parts["scores"], scores)
    sse = (caps.decode(v, y) - x).pow(2).flatten(1).sum(1).mean()      # caps' decoder = twin's
    torch.testing.assert_close(loss, margin_loss(scores, y) + 0.0005 * sse)


def eval_json(capsys, run: Path) -> dict:
    """The JSON line of ``capsgen eval RUN``."""
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[0])


def last_test_row(run: Path) -> dict:
    """The last test row of a run's metrics.jsonl (the figures of the family's Task.evaluate)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "test"][-1]


def test_twin_trains_resumes_evaluates_draws_and_is_attacked_like_a_capsnet_run(tmp_path, capsys):
    caps_run, twin_run = tmp_path / "caps", tmp_path / "twin"
    assert main(["train", "capsnet", *COMMON, "--steps", "3", "--out", str(caps_run)]) == 0
    assert main(["train", "capsnet", "--twin", *COMMON, "--steps", "3", "--out", str(twin_run)]) == 0
    cfg = json.loads((twin_run / "config.json").read_text())["model"]
    assert cfg["twin"] is True
    assert main(["train", "--resume", str(twin_run), "--steps", "4", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (twin_run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows if r["split"] == "train") == 4
    caps_res, twin_res = eval_json(capsys, caps_run), eval_json(capsys, twin_run)
    assert twin_res["capabilities"] == caps_res["capabilities"] == ["classify"]
    assert set(twin_res["classify"]) == set(caps_res["classify"]) and 0 <= twin_res["classify"]["test_error"] <= 1
    assert set(last_test_row(twin_run)) == set(last_test_row(caps_run)) and "recon_sse" in last_test_row(twin_run)
    names = lambda run: sorted(p.name for p in (run / "figures").glob("*.png"))  # noqa: E731
    assert names(twin_run) == names(caps_run) and "reconstructions.png" in names(twin_run)
    out = tmp_path / "pgd"
    capsys.readouterr()
    assert main(["attack", str(twin_run), "--device", "cpu", "--method", "pgd", "--eps", "0.1", "--steps", "2",
                 "--n", "20", "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[0])
    assert res["family"] == "capsnet" and res["n"] == 20 and res["max_abs_perturbation"] <= 0.1 + 1e-6
    assert (out / "adversarial.npz").exists()


def test_twin_with_a_routing_setting_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "capsnet", "--twin", "--set", "model.routing_iterations=1", "--data", "digits",
                 "--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.routing_iterations conflicts with --twin" in err[0], err
    assert not out.exists()
