"""G-CapsNet networks (Chen et al.): parameter counts beside the paper's, shapes, decoders,
losses, presets and configuration errors."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from capsgen.errors import ConfigError
from capsgen.models.gcapsnet import config as gconfig
from capsgen.models.gcapsnet.config import (PAPER_PARAMETER_COUNTS, PAPER_SHAPES, GCapsNetConfig,
                                            preset_config, rounds_to)
from capsgen.models.gcapsnet.nets import (CNNBaseline, ConvGCapsNet, FCGCapsNet, MultiLayerGCapsNet,
                                          build_gcapsnet, classification_loss, count_parameters,
                                          format_parameter_counts, paper_parameter_counts)
from capsgen.nn import margin_loss, safe_norm
from capsgen.nn.trainable_routing import COUPLING_INITS, TrainableConvCapsules, TrainableDenseCapsules

# Small versions of each architecture for fast tests on 28x28 images.
TINY = {
    "fc": dict(arch="fc", conv_channels=8, primary_caps=4, class_dim=6, decoder_hidden=(16,)),
    "conv": dict(arch="conv", conv_channels=8, primary_caps=4, caps_matrix=4, decoder_hidden=(16,)),
    "multilayer": dict(arch="multilayer", ml_conv_channels=(8, 16), caps_relu=True, decoder_hidden=(16,)),
    "baseline": dict(arch="baseline", baseline_conv=(4, 4), baseline_kernels=(5, 5),
                     baseline_strides=(2, 2), baseline_padding=(2, 2), baseline_fc=(16,)),
}


def tiny(arch, **kw):
    return GCapsNetConfig(**{**TINY[arch], **kw})


# ----------------------------------------------------------------------------- paper counts
@pytest.fixture(scope="module")
def count_rows():
    return paper_parameter_counts()


def test_parameter_counts_beside_the_paper(count_rows):
    rows = count_rows
    print("\n" + format_parameter_counts(rows))
    assert len(rows) == len(PAPER_PARAMETER_COUNTS)
    for r in rows:
        # Every figure is met at the printed precision, except those whose note says why not.
        assert r.matches == (r.note == ""), (r.preset, r.part, r.paper, r.ours)


def test_parameter_counts_exact_values(count_rows):
    # The exact counts behind the figures (derivations in the config docstring).
    got = {(r.preset, r.part): r.ours for r in count_rows}
    assert got["fc", "total"] == 20_992 + 5_308_672 + 1152 * 10 * 16 * 8 + 1152 * 10
    assert got["fc-recon", "total"] - got["fc", "total"] == 160 * 512 + 512 + 512 * 1024 + 1024 + 1024 * 784 + 784
    assert got["conv", "total"] == 20_992 + 5_308_672 + 32 * 36 * 10 * 4 * 4 + 32 * 36 * 10
    assert got["conv-recon", "total"] - got["conv", "total"] == 80 * 512 + 512 + 525_312 + 803_600
    assert got["cifar-fc", "total"] == got["cifar-conv", "total"] == 15_616 + 1_327_360 + 2048 * 10 * 64 + 2048 * 10
    assert got["baseline", "total"] == 35_445_522
    assert got["multilayer", "Conv Caps Routing#1"] == 4 * 4 * 16 * 7 * 7 * 8
    assert got["multilayer", "FC Caps Routing#1"] == 16 * 3 * 3 * 8 * 10
    assert got["multilayer", "total"] == sum(v for (p, part), v in got.items() if p == "multilayer" and part != "total")


def test_rounds_to():
    assert rounds_to(6_815_744, "6.8M") and not rounds_to(6_850_001, "6.8M")
    assert rounds_to(2_674_176, "2.67M") and not rounds_to(2_684_176, "2.67M")
    assert rounds_to(131_072, "131.1K") and rounds_to(716_400, "716K") and not rounds_to(716_992, "716K")


def test_paper_count_entries_name_real_presets():
    for entry in PAPER_PARAMETER_COUNTS:
        assert entry.preset in GCapsNetConfig.PRESETS and entry.preset in PAPER_SHAPES


# ----------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", sorted(GCapsNetConfig.PRESETS))
def test_presets_apply_and_validate(name):
    cfg = preset_config(name)
    cfg.validate()
    assert cfg.preset == name


def test_preset_values():
    assert preset_config("fc").reconstruction is False and preset_config("fc-recon").reconstruction is True
    assert preset_config("conv").caps_matrix == 4 and preset_config("cifar-conv").caps_matrix == 8
    assert preset_config("cifar-fc").conv_channels == 64 and preset_config("cifar-fc").class_dim == 8
    assert preset_config("multilayer").caps_relu is True
    assert preset_config("cifar-baseline").baseline_fc == (512,)
    with pytest.raises(ValueError):
        preset_config("capsnet")


def test_coupling_init_names_agree_with_nn():
    assert gconfig.COUPLING_INITS == COUPLING_INITS


def test_config_module_is_torch_free():
    code = "import sys, capsgen.models.gcapsnet.config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- networks
@pytest.mark.parametrize("arch", ["fc", "conv", "multilayer", "baseline"])
@pytest.mark.parametrize("recon", [False, True])
def test_shapes_scores_and_decoder(arch, recon):
    if arch == "baseline" and recon:
        pytest.skip("the baseline has no decoder")
    cfg = tiny(arch, reconstruction=recon)
    model = build_gcapsnet(cfg, (1, 28, 28), 10)
    x = torch.rand(3, 1, 28, 28)
    out = model(x)
    scores = model.class_scores(x)
    assert scores.shape == (3, 10)
    if arch == "baseline":
        assert model.score_kind == "logit" and not model.has_decoder
        model.eval()  # dropout off, so two calls agree
        assert torch.equal(model(x), model.class_scores(x))
        return
    assert model.score_kind == "length" and model.has_decoder == recon
    assert out.dim() == 3 and out.shape[:2] == (3, 10)
    assert torch.allclose(scores, safe_norm(out)) and (scores >= 0).all() and (scores < 1).all()
    if recon:
        img = model.decode(out, torch.tensor([0, 4, 9]))
        assert img.shape == (3, 1, 28, 28) and (img >= 0).all() and (img <= 1).all()
    else:
        with pytest.raises(ValueError):
            model.decode(out, torch.tensor([0, 4, 9]))


def test_decode_reads_only_the_labelled_capsule():
    model = build_gcapsnet(tiny("fc", reconstruction=True), (1, 28, 28), 10)
    poses = torch.randn(2, 10, 6)
    labels = torch.tensor([2, 7])
    other = poses.clone()
    other[:, 0] += 5.0          # not a labelled class
    assert torch.equal(model.decode(poses, labels), model.decode(other, labels))
    other[0, 2] += 1.0          # sample 0's labelled class
    changed = model.decode(other, labels)
    assert not torch.allclose(changed[0], model.decode(poses, labels)[0])
    assert torch.equal(changed[1], model.decode(poses, labels)[1])


def test_networks_use_trainable_routing_layers():
    fc = build_gcapsnet(tiny("fc"), (1, 28, 28), 10)
    assert isinstance(fc, FCGCapsNet) and isinstance(fc.classes, TrainableDenseCapsules)
    conv = build_gcapsnet(tiny("conv"), (1, 28, 28), 10)
    assert isinstance(conv, ConvGCapsNet) and isinstance(conv.classes, TrainableConvCapsules)
    assert conv.classes.kernel_size == 6 and conv.classes.pose_rows == 2   # 8-D as 2x4, 4x4 transforms
    ml = build_gcapsnet(tiny("multilayer"), (3, 32, 32), 10)
    assert isinstance(ml, MultiLayerGCapsNet)
    assert [layer.input_size for layer in ml.caps] == [(10, 10), (7, 7)]   # 32 -> 26 -> 10 -> 7 -> 3
    assert [layer.pose_rows for layer in ml.caps] == [1, 4]
    assert ml.classes.coupling.shape == (16 * 3 * 3, 10, 8)
    assert isinstance(build_gcapsnet(tiny("baseline"), (1, 28, 28), 10), CNNBaseline)


def test_multilayer_matches_the_paper_layout_on_cifar():
    ml = build_gcapsnet(preset_config("multilayer"), (3, 32, 32), 10)
    assert [m.bias for m in ml.convs if isinstance(m, torch.nn.Conv2d)] == [None, None]
    assert [tuple(layer.weight.shape) for layer in ml.caps] == [(16 * 16, 8, 8, 8), (8 * 9, 16, 2, 2)]
    assert [tuple(layer.coupling.shape) for layer in ml.caps] == [(7, 7, 256, 8), (3, 3, 72, 16)]


def test_conv_net_requires_a_kernel_covering_the_grid():
    with pytest.raises(ConfigError, match="caps_kernel"):
        build_gcapsnet(tiny("conv", caps_kernel=3), (1, 28, 28), 10)
    assert build_gcapsnet(tiny("conv", caps_kernel=6), (1, 28, 28), 10).classes.kernel_size == 6


@pytest.mark.parametrize("arch", ["fc", "conv", "multilayer", "baseline"])
def test_too_small_images_are_refused(arch):
    with pytest.raises(ConfigError, match="too small"):
        build_gcapsnet(tiny(arch, baseline_padding=(0, 0)), (1, 8, 8), 10)


@pytest.mark.parametrize("bad", [dict(arch="capsnet"), dict(squash="tanh"), dict(coupling_init="softmax"),
                                 dict(arch="conv", caps_matrix=3),
                                 dict(arch="multilayer", ml_caps_kernels=(4,)),
                                 dict(arch="baseline", baseline_fc=(8,), baseline_dropout=1.0)])
def test_bad_configs_are_refused(bad):
    with pytest.raises(ConfigError):
        build_gcapsnet(GCapsNetConfig(**bad), (1, 28, 28), 10)


# ----------------------------------------------------------------------------- losses and training
def test_classification_loss_parts():
    torch.manual_seed(0)
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    cfg = tiny("fc", reconstruction=True)
    model = build_gcapsnet(cfg, (1, 28, 28), 10)
    loss, parts = classification_loss(model, x, y, cfg)
    poses = model(x)
    margin = margin_loss(safe_norm(poses), y)
    sse = (model.decode(poses, y) - x).pow(2).flatten(1).sum(1).mean()
    assert torch.allclose(loss, margin + cfg.recon_weight * sse)
    assert torch.allclose(parts["margin"], margin) and parts["scores"].shape == (4, 10)
    base_cfg = tiny("baseline")
    base = build_gcapsnet(base_cfg, (1, 28, 28), 10).eval()
    loss, parts = classification_loss(base, x, y, base_cfg)
    assert torch.allclose(loss, F.cross_entropy(base(x), y))


@pytest.mark.parametrize("arch", ["fc", "conv", "multilayer", "baseline"])
def test_each_network_fits_a_small_batch(arch):
    # 40 Adam steps on 8 fixed images: the loss must fall well below its start and the
    # couplings (ordinary parameters) must move.
    torch.manual_seed(1)
    x = torch.rand(8, 1, 28, 28)
    y = torch.arange(8) % 4
    cfg = tiny(arch, baseline_dropout=0.0)
    model = build_gcapsnet(cfg, (1, 28, 28), 4)
    couplings = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("coupling")}
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    first = None
    for _ in range(40):
        loss, _ = classification_loss(model, x, y, cfg)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert len(couplings) == {"fc": 1, "conv": 1, "multilayer": 3, "baseline": 0}[arch]
    for n, p in model.named_parameters():
        if n in couplings:
            assert not torch.allclose(p, couplings[n]), n


def test_count_parameters():
    model = build_gcapsnet(tiny("fc"), (1, 28, 28), 10)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
