"""The cheap GAN levers: DiffAugment, hinge objective, spectral norm, strided capsule-D conv, minibatch
standard deviation, and the
Karmakar presets' iteration count. Augmentations are checked against loop references written from
DiffAugment's definition; the rest against hand computations and a resumed run."""
from __future__ import annotations

import os
import signal

import pytest
import torch

from capsgen.cli import main
from capsgen.data.batch import Batch
from capsgen.models.gan.augment import (cutout, cutout_size, diff_augment, translate, translation_range)
from capsgen.models.gan.config import CapsuleGANConfig, DCGANConfig
from capsgen.models.gan.losses import hinge_d_loss, hinge_g_loss, objective, real_logit
from capsgen.models.gan.nets import CapsuleDiscriminator, minibatch_spread
from capsgen.models.gan.task import GANTask, build_discriminator
from capsgen.train.checkpoint import read_checkpoint
from capsgen.train.task import DataInfo, StepContext
from tests.test_gan_train import train, train_rows


# ------------------------------------------------------------------------------ DiffAugment
def translate_loop(x, ty, tx, fill):
    out = torch.full_like(x, fill)
    B, C, H, W = x.shape
    for b in range(B):
        for i in range(H):
            for j in range(W):
                si, sj = i - int(ty[b]), j - int(tx[b])
                if 0 <= si < H and 0 <= sj < W:
                    out[b, :, i, j] = x[b, :, si, sj]
    return out


def cutout_loop(x, cy, cx, size, fill):
    out = x.clone()
    B, C, H, W = x.shape
    for b in range(B):
        for i in range(int(cy[b]) - size[0] // 2, int(cy[b]) - size[0] // 2 + size[0]):
            for j in range(int(cx[b]) - size[1] // 2, int(cx[b]) - size[1] // 2 + size[1]):
                if 0 <= i < H and 0 <= j < W:
                    out[b, :, i, j] = fill
    return out


def test_translate_and_cutout_match_loop_references():
    torch.manual_seed(0)
    x = torch.randn(5, 2, 6, 7)
    ty, tx = torch.tensor([0, 2, -3, 6, -1]), torch.tensor([1, -2, 0, 3, -7])
    torch.testing.assert_close(translate(x, ty, tx, -1.0), translate_loop(x, ty, tx, -1.0), rtol=0, atol=0)
    cy, cx = torch.tensor([0, 3, 5, 6, 2]), torch.tensor([7, 0, 3, 1, 4])
    for size in ((3, 4), (2, 2)):
        torch.testing.assert_close(cutout(x, cy, cx, size, 0.5), cutout_loop(x, cy, cx, size, 0.5), rtol=0, atol=0)


def test_augment_gradients():
    x = torch.randn(3, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    ty, tx, cy, cx = torch.tensor([1, -2, 0]), torch.tensor([0, 1, -1]), torch.tensor([1, 4, 2]), torch.tensor([0, 2, 5])
    assert torch.autograd.gradcheck(lambda v: cutout(translate(v, ty, tx), cy, cx, (3, 3)), (x,))


def test_diff_augment_draws_from_the_generator_in_the_documented_order():
    x = torch.randn(4, 1, 28, 28)
    assert translation_range(28) == 4 and cutout_size(28) == 14 and translation_range(8) == 1
    state = torch.get_rng_state()
    out = diff_augment(x, "translation,cutout", torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)                       # global RNG untouched
    g = torch.Generator().manual_seed(7)
    ty, tx = torch.randint(-4, 5, (4,), generator=g), torch.randint(-4, 5, (4,), generator=g)
    cy, cx = torch.randint(0, 29, (4,), generator=g), torch.randint(0, 29, (4,), generator=g)
    torch.testing.assert_close(out, cutout(translate(x, ty, tx), cy, cx, (14, 14)), rtol=0, atol=0)
    assert not torch.equal(out, diff_augment(x, "translation,cutout", torch.Generator().manual_seed(8)))
    assert diff_augment(x, "none", torch.Generator()) is x
    # a 14x14 square, at least its quarter inside the image, is blanked (-1) in each image
    blank = (diff_augment(x, "cutout", torch.Generator().manual_seed(1)) == -1).sum(dim=(1, 2, 3))
    assert (blank >= 7 * 7).all() and (blank <= 14 * 14).all()
    with pytest.raises(ValueError, match="unknown DiffAugment operation"):
        diff_augment(x, "flip", torch.Generator())


def test_diff_augment_rows_of_a_global_batch():
    # A process holding rows 3..5 of a global batch of 6 augments them as a one-process run would.
    x = torch.randn(6, 1, 8, 8)
    whole = diff_augment(x, "translation,cutout", torch.Generator().manual_seed(3))
    part = diff_augment(x[3:], "translation,cutout", torch.Generator().manual_seed(3), total=6, rows=slice(3, 6))
    torch.testing.assert_close(part, whole[3:], rtol=0, atol=0)


def tiny_task(cls=CapsuleGANConfig, **kw) -> GANTask:
    torch.manual_seed(0)
    base = dict(g_width=8, d_width=8, n_fixed=4, d_conv_channels=8, d_conv_kernel=3, d_primary_caps=4,
                d_primary_kernel=3, d_caps=4, d_dense=16)
    cfg = cls(**{**base, **kw})
    return GANTask(cfg, DataInfo("t", (1, 8, 8), None, None, 32), torch.device("cpu"))


def test_discriminator_sees_augmented_real_and_fake_images_and_g_gets_gradients_through_them():
    task = tiny_task(diffaugment="translation,cutout")
    seen = []
    task.D.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    real = torch.rand(6, 1, 8, 8) * 2 - 1
    task.d_step(real, torch.Generator().manual_seed(0))
    assert [len(s) for s in seen] == [6, 6] and not torch.equal(seen[0], real)
    assert (seen[0] == -1).sum() >= 6 * 16                  # a 4x4 cutout (at least partly) in each
    g = torch.Generator().manual_seed(0)
    task.noise(6, g)                                        # the d step's draws: latents, then offsets
    torch.testing.assert_close(seen[0], diff_augment(real, "translation,cutout", g), rtol=0, atol=0)
    before = [p.clone() for p in task.G.parameters()]
    task.g_step(6, torch.Generator().manual_seed(1))
    assert any(not torch.equal(a, b) for a, b in zip(before, task.G.parameters()))


# ---------------------------------------------------------------------------------- hinge
def test_hinge_by_hand():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-3.0, 0.0, 0.4])
    # D: max(0, 1 - r) = [0, 0.5, 2]; max(0, 1 + f) = [0, 1, 1.4]
    assert hinge_d_loss(real, fake).item() == pytest.approx(2.5 / 3 + 2.4 / 3)
    assert hinge_g_loss(fake).item() == pytest.approx(-(-3.0 + 0.0 + 0.4) / 3)
    view, d_loss, g_loss = objective("hinge")
    assert view is real_logit
    lengths = torch.tensor([[0.5], [0.9]])                 # capsule P(real): log-odds 0 and log 9
    assert g_loss(view(lengths, "length")).item() == pytest.approx(-torch.log(torch.tensor(9.0)).item() / 2, rel=1e-5)


# --------------------------------------------------------------------------- spectral norm
def top_singular_value(w: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2).item()


@pytest.mark.parametrize("cls,kw", [(DCGANConfig, {}), (CapsuleGANConfig, {"discriminator": "caps-dense"})])
def test_spectral_norm_bounds_every_conv_and_dense_layer_of_d(cls, kw):
    task = tiny_task(cls, d_spectral_norm=True, **kw)
    layers = [m for m in task.D.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert layers and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in layers)
    x = torch.randn(16, 1, 8, 8)
    for _ in range(30):                                      # power iterations converge in train mode
        task.D(x)
    for m in layers:
        assert top_singular_value(m.weight) == pytest.approx(1.0, abs=0.02)
        assert top_singular_value(m.parametrizations.weight.original) != pytest.approx(1.0, abs=0.02)
    if cls is CapsuleGANConfig:                              # the capsule transforms are left alone
        assert not torch.nn.utils.parametrize.is_parametrized(task.D.caps)
    plain = tiny_task(cls, **kw)
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in plain.D.modules())


def test_spectral_norm_eval_changes_no_state():
    task = tiny_task(d_spectral_norm=True)
    task.train_step(Batch(torch.rand(8, 1, 8, 8)), StepContext(0, 0.0, 4, torch.Generator()))
    before = {k: v.clone() for k, v in task.D.state_dict().items()}
    assert any(k.endswith("._u") for k in before)            # the power-iteration vectors are saved
    task.train_mode(False)
    task.evaluate(Batch(torch.rand(20, 1, 8, 8)))
    assert all(torch.equal(before[k], v) for k, v in task.D.state_dict().items())


def test_resume_with_every_lever_equals_uninterrupted(tmp_path, monkeypatch):
    args = ["--steps", "8", "--batch-size", "16", "--set", "diffaugment=translation,cutout",
            "--set", "d_spectral_norm=true", "--set", "objective=hinge", "--set", "checkpoint_every=3",
            "--set", "log_every=1", "--set", "lr_d=2e-4", "--set", "sample_every=0"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert train(ref, "capsulegan", *args) == 0
    original = GANTask.after_step

    def stop_at_5(self, step, r, writer=None):
        original(self, step, r, writer)
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(GANTask, "after_step", stop_at_5)
    assert train(run, "capsulegan", *args) == 130
    monkeypatch.setattr(GANTask, "after_step", original)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    a, _ = read_checkpoint(ref / "checkpoints" / "last.safetensors")
    b, _ = read_checkpoint(run / "checkpoints" / "last.safetensors")
    keys = [k for k in a if k.startswith(("module.", "optim."))]
    assert any("parametrizations" in k for k in keys) and set(keys) == {k for k in b if k.startswith(("module.", "optim."))}
    for k in keys:
        assert torch.equal(a[k], b[k]), k
    assert train_rows(run) == train_rows(ref)


# ------------------------------------------------------------------------ strided first conv
def test_strided_first_conv_quarters_the_primary_capsule_input():
    shape = (1, 28, 28)
    plain = CapsuleDiscriminator(shape, 16, 9, "relu", 4, 8, 9, 2, out_caps=1, head="length")
    fast = CapsuleDiscriminator(shape, 16, 9, "relu", 4, 8, 5, 2, out_caps=1, head="length", conv_stride=2)
    x = torch.randn(2, *shape)
    assert plain.conv(x).shape[-2:] == (20, 20) and fast.conv(x).shape[-2:] == (10, 10)   # 400 -> 100 positions
    assert plain.num_primary == 4 * 6 * 6 and fast.num_primary == 4 * 3 * 3
    assert fast(x).shape == (2, 1)
    cfg = CapsuleGANConfig(d_conv_stride=2, d_primary_kernel=5)
    assert build_discriminator(cfg, shape).conv.stride == (2, 2)
    with pytest.raises(ValueError, match="too small for kernels 9 and 9 stride 3"):   # 28 -> 7 < 9
        build_discriminator(CapsuleGANConfig(d_conv_stride=3), shape)


# ------------------------------------------------------------------ minibatch standard deviation
def minibatch_spread_loop(y, group):
    """Karras et al.'s definition, sample by sample: group k holds samples k, k + M, k + 2M, …"""
    B, C, H, W = y.shape
    g = min(group, B) if B % min(group, B) == 0 else B
    M = B // g
    out = torch.empty(B, dtype=y.dtype)
    for k in range(M):
        members = [k + M * r for r in range(g)]
        total = 0.0
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    vals = [y[b, c, i, j] for b in members]
                    mean = sum(vals) / g
                    total = total + (sum((v - mean) ** 2 for v in vals) / g + 1e-8) ** 0.5
        for b in members:
            out[b] = total / (C * H * W)
    return out


@pytest.mark.parametrize("B,group", [(8, 4), (6, 4), (5, 5), (1, 4), (4, 1)])
def test_minibatch_spread_matches_loop_reference(B, group):
    torch.manual_seed(B)
    y = torch.randn(B, 3, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(minibatch_spread(y, group), minibatch_spread_loop(y, group))


def test_minibatch_spread_gradients_and_what_it_tells_apart():
    y = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: minibatch_spread(t, 2), (y,))
    same = torch.randn(1, 2, 3, 3).expand(4, 2, 3, 3)       # one mode repeated: spread ~ 0
    assert minibatch_spread(same, 4).max() < 1e-3 < minibatch_spread(torch.randn(4, 2, 3, 3), 4).min()


def test_spread_bias_equals_karras_constant_channel_into_the_primary_conv():
    """Appending the statistic as a channel to an unpadded conv = adding it times the kernel sums."""
    torch.manual_seed(0)
    d = CapsuleDiscriminator((1, 28, 28), 8, 9, "relu", 2, 4, 5, 2, out_caps=1, head="length",
                             conv_stride=2, minibatch_std=4)
    with torch.no_grad():
        d.spread_weight.normal_()
    x = torch.randn(8, 1, 28, 28)
    y = d.act(d.conv(x))
    stat = minibatch_spread(y, 4)
    conv = torch.nn.Conv2d(9, 8, 5, 2)                     # the ProGAN way: 8 + 1 input channels
    with torch.no_grad():
        conv.weight[:, :8] = d.primary.conv.weight
        conv.bias.copy_(d.primary.conv.bias)
        conv.weight[:, 8] = d.spread_weight[:, None, None] / 25   # kernel sum = spread_weight
    ref = conv(torch.cat([y, stat.view(8, 1, 1, 1).expand(8, 1, *y.shape[2:])], dim=1))
    ours = d.primary.conv(y) + (stat[:, None] * d.spread_weight)[:, :, None, None]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert d(x).shape == (8, 1)


@pytest.mark.parametrize("discriminator", ["caps-dense", "caps1", "caps2", "trunk-caps", "trunk-caps2"])
def test_every_capsule_discriminator_sees_the_minibatch_spread(discriminator):
    """d_minibatch_std reaches every capsule discriminator: in eval mode (batch norm on running
    statistics) an image's output then depends on the other images of its group, and without the
    setting it does not. trunk-caps ignored the setting until 2026-12-07."""
    torch.manual_seed(0)
    cfg = CapsuleGANConfig(discriminator=discriminator, d_conv_channels=8, d_width=8, d_primary_kernel=1,
                           d_primary_stride=1)
    plain = build_discriminator(cfg, (1, 28, 28)).eval()
    cfg.d_minibatch_std = 4
    d = build_discriminator(cfg, (1, 28, 28)).eval()
    assert d.spread_weight is not None and torch.all(d.spread_weight == 0)     # starts as without it
    assert plain.spread_weight is None and "spread_weight" not in dict(plain.named_parameters())
    with torch.no_grad():
        d.spread_weight.fill_(3.0)
    x = torch.randn(4, 1, 28, 28)
    others = torch.cat([x[:1], torch.randn(3, 1, 28, 28)])       # image 0 kept, its group changed
    with torch.no_grad():
        assert not torch.allclose(d(x)[0], d(others)[0])
        torch.testing.assert_close(plain(x)[0], plain(others)[0])


def test_capsule_discriminator_with_minibatch_std_trains_and_resumes(tmp_path):
    d = build_discriminator(CapsuleGANConfig(d_conv_channels=8, d_minibatch_std=4), (1, 28, 28))
    assert d.spread_weight.shape == (8 * 8,) and torch.all(d.spread_weight == 0)   # starts as without
    args = ["--steps", "4", "--batch-size", "8", "--set", "d_minibatch_std=4", "--set", "sample_every=0",
            "--set", "log_every=1"]
    assert train(tmp_path / "r", "capsulegan", *args) == 0
    rows = train_rows(tmp_path / "r")
    assert len(rows) == 4 and all(torch.isfinite(torch.tensor(r["d_loss"])) for r in rows)
    weights, _ = read_checkpoint(tmp_path / "r" / "checkpoints" / "last.safetensors")
    assert weights["module.discriminator.spread_weight"].abs().sum() > 0          # it learnt something


@pytest.mark.parametrize("setting,message", [("diffaugment=flip", "diffaugment"), ("d_conv_stride=0", "d_conv_stride"),
                                             ("objective=wgan", "hinge"), ("d_minibatch_std=-1", "d_minibatch_std")])
def test_bad_lever_values_are_one_line_errors(tmp_path, capsys, setting, message):
    assert train(tmp_path / "r", "capsulegan", "--steps", "1", "--set", setting) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_karmakar_presets_carry_the_papers_10000_iterations():
    from capsgen.runs import make_configs

    for family in ("dcgan", "capsulegan"):
        tcfg, mcfg = make_configs(family, [], preset="karmakar", data="digits")
        assert tcfg.steps == 10000 and tcfg.batch_size == 16 and mcfg.schedule == "alternate"
        tcfg, _ = make_configs(family, [], preset="karmakar", data="digits", steps=50)
        assert tcfg.steps == 50                                # a --steps flag wins over the preset


def test_every_lever_bundle_of_the_ablation_file_builds():
    """benchmarks/capsulegan_levers.txt holds the measured rows of RESULTS.md's ablation: each
    bundle must still be a valid config whose networks fit 28x28 and take one training step."""
    from pathlib import Path

    from capsgen import runs

    root = Path(__file__).resolve().parent.parent
    ablation = _ablation_module()
    levers = ablation.read_levers(str(root / "benchmarks" / "capsulegan_levers.txt"))
    assert {"base", "dcgan", "tc-t1", "tc2-t1"} <= {name for name, _ in levers}
    info = DataInfo("synthetic", (1, 28, 28), 10, None, 64)
    images = torch.rand(8, 1, 28, 28)
    for name, bundle in levers:
        family, pairs = ablation.split_bundle(bundle, "capsulegan")
        tcfg, mcfg = runs.make_configs(family, ["train.threads=1", *pairs], data="digits", batch_size=8)
        task = runs.build_task(tcfg, mcfg, info, "cpu")
        task.train_mode(True)
        figures = task.train_step(Batch(images), StepContext(0, 0.0, 1, torch.Generator().manual_seed(0)))
        assert all(torch.isfinite(torch.tensor(v)) for v in figures.values()), name


def _ablation_module():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("capsulegan_ablation", root / "benchmarks" / "capsulegan_ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    return ablation


def test_ablation_rows_summarised_over_seeds(tmp_path):
    """rows.json keeps one row per lever and minutes; the summary's verdicts follow the mean ± sd rule."""
    import json

    from capsgen.errors import CapsgenError

    ablation = _ablation_module()

    def row(lever, minutes, seed, fid, recall, steps=100):
        return {"lever": lever, "family": "x", "minutes": minutes, "seed": seed, "steps": steps, "fid": fid,
                "precision": 0.5, "recall": recall, "coverage": 0.3}

    folders = []
    for seed, (fid_ref, fid_caps, rec_ref, rec_caps) in enumerate([(30, 20, 0.40, 0.41), (31, 21, 0.30, 0.29),
                                                                   (29, 22, 0.35, 0.36)]):
        out = tmp_path / f"s{seed}"
        out.mkdir()
        ablation.record_row(out, row("dcgan", 10, seed, 99, 0.0))
        ablation.record_row(out, row("dcgan", 10, seed, fid_ref, rec_ref))     # replaces the row above
        ablation.record_row(out, row("caps", 10, seed, fid_caps, rec_caps))
        ablation.record_row(out, row("caps", 30, seed, fid_caps - 5, rec_caps))
        folders.append(str(out))
    assert len(json.loads((tmp_path / "s0" / "rows.json").read_text())) == 3
    text = "\n".join(ablation.summarise(folders, "dcgan"))
    caps10 = next(line for line in text.splitlines() if line.startswith("| caps | 0,1,2 | 100 ± 0 | 21.00 ± 1.00"))
    assert "fid better" in caps10 and "recall not resolved" in caps10 and "precision not resolved" in caps10
    assert "| dcgan | 0,1,2 | 100 ± 0 | 30.00 ± 1.00 |" in text
    assert "30 minutes per run; verdicts against 'dcgan' (no such row)" in text
    assert "| (per seed) | | 100 / 100 / 100 | 20.00 / 21.00 / 22.00 |" in text
    with pytest.raises(CapsgenError, match="run the ablation into"):
        ablation.summarise([str(tmp_path / "missing")], "dcgan")
    with pytest.raises(CapsgenError, match="give each seed's folder once"):
        ablation.summarise([folders[0], folders[0]], "dcgan")
    for text in ("{not json", '{"lever": "x"}', '[{"lever": "x"}]'):
        (tmp_path / "bad").mkdir(exist_ok=True)
        (tmp_path / "bad" / "rows.json").write_text(text)
        with pytest.raises(CapsgenError, match="rows.json"):
            ablation.summarise([str(tmp_path / "bad")], "dcgan")
        with pytest.raises(CapsgenError, match="move it away"):         # nor is it written over
            ablation.record_row(tmp_path / "bad", row("dcgan", 10, 0, 30, 0.4))
        assert (tmp_path / "bad" / "rows.json").read_text() == text
