"""The ``vcaps`` twin (a conditional VAE with the capsule model's encoder and decoder): it reads the
same head as one latent, its decoder input is [latent, condition], its loss is KL + the class
head's cross-entropy, and through the commands it trains, resumes, samples, classifies and is
evaluated under the same metric names as the capsule run. tests/test_twins.py checks that the
twin differs from the capsule model only in TWIN_PARTS."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from capsgen.cli import main
from capsgen.data.batch import Batch
from capsgen.models.vcaps.config import VCapsConfig
from capsgen.models.vcaps.nets import (ConvCapsuleEncoder, FCDecoder, ResidualCapsuleEncoder,
                                      VariationalCapsuleAutoencoder)
from capsgen.models.vcaps.task import VCapsTask
from capsgen.nn.twins_vcaps import GaussianLatent, conditioned_first_layer
from capsgen.nn.variational import VariationalCapsules, capsule_kl, reconstruction_loss
from capsgen.train.checkpoint import read_checkpoint
from capsgen.train.task import DataInfo, StepContext
from tests.test_vcaps_task import TINY, TINY_CONV, TINY_RES, cache, shapes16, train  # noqa: F401 (fixtures)


def metric_names(res: dict, prefix: str = "") -> set[str]:
    """Dotted paths of every key of a nested result (the values left out)."""
    out = set()
    for k, v in res.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= metric_names(v, f"{prefix}{k}.")
    return out


def eval_json(run, capsys, n: int) -> dict:
    capsys.readouterr()
    assert main(["eval", str(run), "--n", str(n)]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[0])


# ----------------------------------------------------------------------------- through the commands
def test_twin_class_run_trains_resumes_samples_and_evaluates_like_the_capsule_run(tmp_path, capsys, cache):
    args = ["--steps", "4", *TINY_CONV, "--set", "beta=1", "--set", "d_width=4", "--set", "sample_every=2",
            "--set", "checkpoint_every=2", "--set", "log_every=1"]
    caps, twin, part = tmp_path / "caps", tmp_path / "twin", tmp_path / "part"
    assert train(caps, *args) == 0 and train(twin, "--twin", *args) == 0
    assert json.loads((twin / "config.json").read_text())["model"]["twin"] is True
    # resumed from step 2, the twin ends exactly where the uninterrupted run did
    assert train(part, "--twin", *args[:1], "2", *args[2:]) == 0
    assert main(["train", "--resume", str(part), "--steps", "4", "--no-progress"]) == 0
    a, _ = read_checkpoint(twin / "checkpoints" / "last.safetensors")
    b, _ = read_checkpoint(part / "checkpoints" / "last.safetensors")
    keys = [k for k in a if k.startswith(("module.", "optim."))]
    assert any("posterior.classifier" in k for k in keys) and any("decoder.condition" in k for k in keys)
    assert all(torch.equal(a[k], b[k]) for k in keys)
    rows = [json.loads(r) for r in (twin / "metrics.jsonl").read_text().splitlines()]
    train_row = [r for r in rows if r["split"] == "train"][-1]
    assert {"class_loss", "kl_active", "recon", "accuracy", "d_loss"} <= set(train_row)
    assert "kl_margin" not in train_row
    for png in ("reconstructions.png", "samples.png", "class_grid.png", "interpolation.png", "vcaps_curves.png"):
        assert (twin / "figures" / png).stat().st_size > 0
    assert main(["sample", str(twin), "--n", "5", "--class", "2", "--out", str(tmp_path / "s.npz")]) == 0
    assert main(["interpolate", str(twin), "--out", str(tmp_path / "i.png"), "--rows", "2", "--cols", "3"]) == 0
    got, want = eval_json(twin, capsys, 40), eval_json(caps, capsys, 40)
    assert got["capabilities"] == want["capabilities"] == ["generate", "class-conditional", "classify", "encode"]
    assert metric_names(got) == metric_names(want)
    assert 0 <= got["classify"]["test_error"] <= 1 and len(got["class-conditional"]["per_class"]) == 10


def test_twin_attribute_run_is_evaluated_like_the_capsule_run(tmp_path, capsys, cache, shapes16):
    args = ["--steps", "5", *TINY_RES, "--set", "log_every=5", "--set", "sample_every=0"]
    caps, twin = tmp_path / "caps", tmp_path / "twin"
    assert train(caps, *args, data=shapes16) == 0 and train(twin, "--twin", *args, data=shapes16) == 0
    for png in ("attribute_grid.png", "attribute_swap.png", "interpolation.png", "reconstructions.png"):
        assert (twin / "figures" / png).stat().st_size > 0
    out = tmp_path / "s.npz"
    assert main(["sample", str(twin), "--n", "3", "--attributes", "square=1,blue=0", "--out", str(out)]) == 0
    got, want = eval_json(twin, capsys, 40), eval_json(caps, capsys, 40)
    assert got["capabilities"] == want["capabilities"] == ["generate", "attribute-conditional", "attributes", "encode"]
    assert metric_names(got) == metric_names(want)


@pytest.mark.parametrize("field", ["kl_margin=4", "model.kl_lambda=1", "presence_vectors=true"])
def test_twin_refuses_a_capsule_only_setting(tmp_path, capsys, field):
    out = tmp_path / "run"
    assert train(out, "--twin", "--steps", "1", "--set", field) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "conflicts with --twin" in err[0] and field.split("=")[0].split(".")[-1] in err[0]
    assert not out.exists()


# ----------------------------------------------------------------------------- the twin's parts
@pytest.mark.parametrize("grouped", [False, True])
def test_twin_reads_the_capsule_models_head_as_one_latent(grouped):
    if grouped:
        make = lambda twin: ResidualCapsuleEncoder((3, 16, 16), (3, 2), 2, base=4, max_channels=8,  # noqa: E731
                                                   group_width=5, twin=twin)
    else:
        make = lambda twin: ConvCapsuleEncoder((1, 8, 8), (4,), 3, channels=(4, 4, 4), twin=twin)  # noqa: E731
    torch.manual_seed(0)
    caps = make(False).eval()
    torch.manual_seed(0)
    twin = make(True).eval()
    assert isinstance(caps.posterior, VariationalCapsules) and not list(caps.posterior.parameters())
    assert isinstance(twin.posterior, GaussianLatent)
    x = torch.rand(2, *((3, 16, 16) if grouped else (1, 8, 8)))
    (mu, logvar), (tmu, tlogvar, logits) = caps(x), twin(x)
    # the same weights up to the class head, and the same numbers in the same order
    assert torch.equal(tmu, mu.flatten(1)) and torch.equal(tlogvar, logvar.flatten(1))
    assert logits.shape == (2, 3 if grouped else 4)
    with pytest.raises(ValueError, match="capsule model's pass"):
        VariationalCapsuleAutoencoder(twin, FCDecoder((1, 8, 8), (4,), 3, condition_dim=4))(x)


def test_condition_enters_the_first_layer_as_a_concatenation():
    dec = FCDecoder((1, 8, 8), (4,), 3, hidden=(16,), condition_dim=4)
    assert dec.net[0].in_features == 12 and dec.condition.weight.shape == (16, 4) and dec.condition.bias is None
    inputs = torch.randn(5, 16)
    joint = F.linear(inputs, torch.cat([dec.net[0].weight, dec.condition.weight], 1), dec.net[0].bias)
    assert torch.allclose(conditioned_first_layer(dec.net[0], dec.condition, inputs), joint, atol=1e-6)
    assert dec(inputs).shape == (5, 1, 8, 8)


def tiny_twin(mode: str = "class", **kw) -> VCapsTask:
    torch.manual_seed(0)
    if mode == "class":
        cfg = VCapsConfig(caps_dim=3, enc_channels=(4, 4, 4), dec_hidden=(8,), twin=True, **kw)
        info = DataInfo("t", (1, 8, 8), 5, [str(k) for k in range(5)], 40)
    else:
        cfg = VCapsConfig(caps_dim=3, res_base=2, res_max_channels=4, res_group_width=2, twin=True, **kw)
        info = DataInfo("t", (3, 8, 8), 4, list("abcd"), 40, ["p", "q", "r"])
    return VCapsTask(cfg, info, torch.device("cpu"))


def ctx(n: int) -> StepContext:
    return StepContext(0, 0.0, 1, torch.Generator().manual_seed(0), n, slice(0, n))


def test_twin_scores_are_its_class_heads():
    task = tiny_twin()
    task.train_mode(False)
    x = torch.rand(6, 1, 8, 8)
    logits = task.ae.encoder(x)[2]
    scores = task.class_scores(x)
    assert torch.equal(scores, logits) and scores.requires_grad and scores.shape == (6, 5)
    att = tiny_twin("attributes")
    att.train_mode(False)
    x = torch.rand(4, 3, 8, 8)
    assert torch.allclose(att.attribute_probs(x), torch.sigmoid(att.ae.encoder(x)[2]))


def test_twin_step_loss_is_kl_plus_cross_entropy_plus_alpha_reconstruction():
    task = tiny_twin(alpha=0.5, train_mask="label")
    batch = Batch(torch.rand(6, 1, 8, 8), torch.randint(0, 5, (6,)), None)
    task.train_mode(False)   # batch norm in eval mode, so the reference forward sees the same statistics
    with torch.no_grad():
        mu, logvar, logits = task.ae.encoder(batch.images)
        eps = torch.randn(6, 15, generator=ctx(6).generator)
        z = torch.cat([mu + eps * torch.exp(0.5 * logvar), F.one_hot(batch.labels, 5).float()], 1)
        want = (capsule_kl(mu, logvar).mean() + F.cross_entropy(logits, batch.labels)
                + 0.5 * reconstruction_loss(task.ae.decoder(z), batch.images))
    out = task.train_step(batch, ctx(6))
    assert out["loss"] == pytest.approx(want.item(), rel=1e-5)
    assert out["class_loss"] == pytest.approx(F.cross_entropy(logits, batch.labels).item(), rel=1e-5)


def test_twin_decoder_input_is_latent_and_condition():
    task = tiny_twin()
    assert task.code.latent_shape == (15,)                  # 5 classes x 3 = the capsule model's numbers
    mask = task.sample_masks(torch.tensor([3, 0]))
    inp = task.code.decoder_input(torch.zeros(2, 15), mask)
    assert torch.equal(inp[:, 15:], F.one_hot(torch.tensor([3, 0]), 5).float())
    att = tiny_twin("attributes")
    want = torch.tensor([[1, 0, 1], [0, 1, 1]])
    inp = att.code.decoder_input(torch.zeros(2, 18), att.sample_masks(want))
    assert inp.shape == (2, 21) and torch.equal(inp[:, 18:], want.float())
    # swapping attribute j changes a's condition bit j only
    a, b = torch.zeros(1, 21), torch.ones(1, 21)
    swapped = att.code.swap(a, b, 3)
    for j in range(3):
        assert swapped[0, j].sum() == 1 and swapped[0, j, 18 + j] == 1


def test_twin_draws_the_capsule_models_noise():
    twin = tiny_twin()
    torch.manual_seed(0)
    caps = VCapsTask(VCapsConfig(caps_dim=3, enc_channels=(4, 4, 4), dec_hidden=(8,)),
                     DataInfo("t", (1, 8, 8), 5, [str(k) for k in range(5)], 40), torch.device("cpu"))
    assert torch.equal(twin.fixed_latent, caps.fixed_latent.flatten(1))
    assert torch.equal(twin.fixed_targets, caps.fixed_targets)
    like = torch.zeros(1)
    assert torch.equal(twin._noise(ctx(4), 4, like), caps._noise(ctx(4), 4, like).flatten(1))
