"""Networks and config of the variational capsule family (Huang et al.): shapes, the paper's
layer sizes, the capsule layouts the docstrings promise, masking inside the autoencoder, and
that a tiny model learns."""
from __future__ import annotations

import pytest
import torch

from capsgen.config import TrainConfig, apply_overrides
from capsgen.errors import ConfigError
from capsgen.models.vcaps.config import VCapsConfig
from capsgen.models.vcaps.nets import (ConvCapsuleEncoder, FCDecoder, MultiScaleDiscriminator,
                                       ResidualBlock, ResidualCapsuleDecoder, ResidualCapsuleEncoder,
                                       VariationalCapsuleAutoencoder, build_networks, capsule_layout,
                                       residual_widths)
from capsgen.nn.variational import capsule_kl, kl_margin_loss, predict_from_kl, reconstruction_loss


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 32, 32)])
def test_conv_encoder_and_fc_decoder_shapes(shape):
    enc = ConvCapsuleEncoder(shape, (10,), 4, channels=(8, 8, 8))
    dec = FCDecoder(shape, (10,), 4, hidden=(16, 32))
    mu, logvar = enc(torch.rand(3, *shape))
    assert mu.shape == logvar.shape == (3, 10, 4)
    x = dec(mu)
    assert x.shape == (3, *shape) and 0 <= x.min() and x.max() <= 1


@pytest.mark.parametrize("size", [64, 32, 28, 16])
def test_residual_encoder_and_decoder_shapes(size):
    shape = (3, size, size)
    enc = ResidualCapsuleEncoder(shape, (5, 2), 4, base=4, max_channels=16, group_width=6)
    dec = ResidualCapsuleDecoder(shape, (5, 2), 4, base=4, max_channels=16)
    mu, logvar = enc(torch.rand(2, *shape))
    assert mu.shape == logvar.shape == (2, 5, 2, 4)
    x = dec(mu)
    assert x.shape == (2, *shape) and 0 <= x.min() and x.max() <= 1


def test_paper_digit_network_sizes():
    """§4.2: C5s1-256, C5s2-256, C5s2-256, F320; F512, F1024, F784."""
    enc = ConvCapsuleEncoder((1, 28, 28))
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(256, (5, 5), (1, 1)),
                                                                         (256, (5, 5), (2, 2)),
                                                                         (256, (5, 5), (2, 2))]
    assert enc.fc.out_features == 320 == 2 * 10 * 16
    dec = FCDecoder((1, 28, 28))
    assert [m.out_features for m in dec.modules() if isinstance(m, torch.nn.Linear)] == [512, 1024, 784]


def test_paper_face_network_sizes_at_256():
    """§4.1: C5s1-16d, R32d ... R512d, C1s1-10240, C4s1g40-5120; F8192, R512u ... R16u, R16, c5s1-3."""
    assert residual_widths((3, 256, 256), 16, 512) == ([16, 32, 64, 128, 256, 512], 4)
    assert residual_widths((3, 64, 64), 16, 512) == ([16, 32, 64, 128], 4)
    with torch.device("meta"):   # 60M parameters: build the layers without allocating or initialising
        enc = ResidualCapsuleEncoder((3, 256, 256), (40, 2), 32)
        dec = ResidualCapsuleDecoder((3, 256, 256), (40, 2), 32)
    blocks = [m for m in enc.net if isinstance(m, ResidualBlock)]
    assert [b.body[0][0].out_channels for b in blocks] == [32, 64, 128, 256, 512]
    assert sum(isinstance(m, torch.nn.AvgPool2d) for m in enc.net) == 6
    wide, caps = enc.net[-2][0], enc.net[-1]
    assert (wide.out_channels, wide.kernel_size) == (10240, (1, 1))
    assert (caps.out_channels, caps.kernel_size, caps.groups) == (5120, (4, 4), 40)
    assert dec.fc[0].in_features == 40 * 2 * 32 and dec.fc[0].out_features == 8192
    blocks = [m for m in dec.net if isinstance(m, ResidualBlock)]
    assert [b.body[0][0].out_channels for b in blocks] == [512, 256, 128, 64, 32, 16, 16]
    assert sum(isinstance(m, torch.nn.Upsample) for m in dec.net) == 6
    last = [m for m in dec.net if isinstance(m, torch.nn.Conv2d)][-1]
    assert (last.in_channels, last.out_channels, last.kernel_size) == (16, 3, (5, 5))


# ----------------------------------------------------------------------------- layouts
def test_conv_encoder_output_is_means_then_logvars():
    enc = ConvCapsuleEncoder((1, 8, 8), (3,), 2, channels=(4, 4, 4))
    with torch.no_grad():
        enc.fc.weight.zero_()
        enc.fc.bias.copy_(torch.arange(12.0))
    mu, logvar = enc(torch.rand(2, 1, 8, 8))
    assert torch.equal(mu[0], torch.arange(6.0).view(3, 2))
    assert torch.equal(logvar[1], torch.arange(6.0, 12.0).view(3, 2))


def test_residual_encoder_group_layout_and_isolation():
    A, D = 3, 2
    enc = ResidualCapsuleEncoder((3, 16, 16), (A, 2), D, base=4, max_channels=8, group_width=5).eval()
    grouped = enc.net[-1]
    # layout: group a holds (mean, log-variance) x (absent, present) x D, in that order
    with torch.no_grad():
        saved = grouped.weight.clone()
        grouped.weight.zero_()
        grouped.bias.copy_(torch.arange(A * 4 * D, dtype=torch.float32))
    mu, logvar = enc(torch.rand(1, 3, 16, 16))
    for a in range(A):
        for j in range(2):
            for d in range(D):
                assert mu[0, a, j, d] == a * 4 * D + 0 * 2 * D + j * D + d
                assert logvar[0, a, j, d] == a * 4 * D + 1 * 2 * D + j * D + d
    # isolation: changing the channels of attribute 1's group moves only attribute 1's capsules
    with torch.no_grad():
        grouped.weight.copy_(saved)
    h = enc.net[:-1](torch.rand(2, 3, 16, 16))
    h2 = h.clone()
    h2[:, 5:10] += 1.0
    out, out2 = grouped(h).view(2, A, -1), grouped(h2).view(2, A, -1)
    assert torch.equal(out[:, [0, 2]], out2[:, [0, 2]]) and not torch.allclose(out[:, 1], out2[:, 1])


def test_residual_block_is_body_plus_skip():
    same, wider = ResidualBlock(4, 4), ResidualBlock(4, 6)
    assert isinstance(same.skip, torch.nn.Identity) and isinstance(wider.skip, torch.nn.Conv2d)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        for blk in (same, wider):
            blk.body[1][0].weight.zero_()     # second conv zero -> BN(0) = 0 -> ReLU 0: body is 0
    assert torch.allclose(same(x), x) and torch.allclose(wider(x), wider.skip(x))


def test_multiscale_discriminator():
    d = MultiScaleDiscriminator((1, 28, 28), scales=3, width=4, layers=3)
    outs = d(torch.rand(2, 1, 28, 28, requires_grad=True))
    assert len(outs) == 3 and all(o.shape[:2] == (2, 1) for o in outs)
    assert [o.shape[-1] for o in outs] == [3, 1, 1]   # 28 -> 14 -> 7 inputs, 7 still gets a score
    assert len(MultiScaleDiscriminator((3, 64, 64), scales=1)(torch.rand(1, 3, 64, 64))) == 1


# ----------------------------------------------------------------------------- the autoencoder
def tiny_digit_model(seed=0):
    torch.manual_seed(seed)
    return VariationalCapsuleAutoencoder(ConvCapsuleEncoder((1, 8, 8), (4,), 3, channels=(6, 6, 6)),
                                         FCDecoder((1, 8, 8), (4,), 3, hidden=(16,)))


def test_autoencoder_masks_and_sampling():
    ae = tiny_digit_model()
    x, y = torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0])
    out = ae(x, y, "label", gen(1))
    assert torch.equal(out["mask"], torch.nn.functional.one_hot(y, 4).float())
    inactive = out["mask"] == 0
    assert out["capsules"][inactive].abs().max() == 0 and out["capsules"][~inactive].abs().min() > 0
    out = ae(x, None, "min-kl", gen(1))
    assert torch.equal(out["mask"].argmax(1), out["kl"].argmin(1))
    assert torch.equal(out["kl"], capsule_kl(out["mu"], out["logvar"]))
    again = ae(x, None, "min-kl", gen(1))
    assert torch.equal(out["recon"], again["recon"])          # same generator seed, same draw
    means = ae(x, None, "min-kl", None, sample=False)
    assert torch.equal(means["capsules"], out["mu"] * out["mask"][..., None])


def test_reconstruction_gradient_reaches_only_the_active_capsule():
    ae = tiny_digit_model()
    out = ae(torch.rand(3, 1, 8, 8), torch.tensor([2, 0, 1]), "label", gen(2))
    grad_mu, = torch.autograd.grad(reconstruction_loss(out["recon"], torch.rand(3, 1, 8, 8)), out["mu"])
    active = out["mask"].bool()
    assert grad_mu[~active].abs().max() == 0 and grad_mu[active].abs().max() > 0


def test_tiny_model_learns_a_batch():
    ae = tiny_digit_model(seed=3)
    g = gen(4)
    x = torch.rand(8, 1, 8, 8, generator=g)
    y = torch.arange(8) % 4
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = ae(x, y, "label", g)
        loss = kl_margin_loss(out["kl"], y, 4.0, 0.5) + reconstruction_loss(out["recon"], x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    ae.eval()
    with torch.no_grad():
        assert torch.equal(predict_from_kl(ae(x, None, "min-kl", None, False)["kl"]), y)
    assert losses[-1] < 0.5 * losses[0]


def test_attribute_mode_end_to_end():
    cfg = VCapsConfig(caps_dim=4, res_base=4, res_max_channels=8, res_group_width=4, beta=1.0,
                      d_width=4, d_scales=2)
    caps = capsule_layout("attributes", num_attributes=6)
    assert caps == (6, 2) and capsule_layout("class", num_classes=10) == (10,)
    ae, disc = build_networks(cfg, (3, 32, 32), caps, "residual")
    x, attrs = torch.rand(2, 3, 32, 32), torch.randint(0, 2, (2, 6), generator=gen(5))
    out = ae(x, attrs, "label", gen(6))
    assert torch.equal(out["mask"].argmax(-1), attrs)           # index 1 = present
    assert predict_from_kl(out["kl"]).shape == (2, 6)
    loss = kl_margin_loss(out["kl"], attrs) + reconstruction_loss(out["recon"], x)
    loss.backward()
    assert len(disc(out["recon"])) == 2


# ----------------------------------------------------------------------------- config
def test_build_networks_follows_config():
    cfg = VCapsConfig(caps_dim=4, enc_channels=(4, 4, 4), dec_hidden=(8,))
    ae, disc = build_networks(cfg, (1, 8, 8), (10,), "conv")
    assert disc is None and isinstance(ae.encoder, ConvCapsuleEncoder)
    assert ae.encoder(torch.rand(1, 1, 8, 8))[0].shape == (1, 10, 4)
    with pytest.raises(ValueError, match="unknown network"):
        build_networks(cfg, (1, 8, 8), (10,), "dense")


def test_presets_are_valid_overrides():
    for name, pairs in VCapsConfig.PRESETS.items():
        cfgs = {"model": VCapsConfig(), "train": TrainConfig()}
        apply_overrides(cfgs, list(pairs))
        cfgs["model"].check()
        assert cfgs["model"].preset == name
    cfgs = {"model": VCapsConfig(), "train": TrainConfig()}
    apply_overrides(cfgs, list(VCapsConfig.PRESETS["huang-celeba"]))
    m = cfgs["model"]
    assert (m.caps_dim, m.alpha, m.beta, m.res_group_width, cfgs["train"].batch_size) == (32, 0.025, 10.0, 256, 64)


@pytest.mark.parametrize("field, value, fragment", [
    ("mode", "faces", "model.mode"), ("train_mask", "argmax", "model.train_mask"),
    ("caps_dim", 0, "caps_dim"), ("kl_margin", 0.0, "kl_margin"), ("alpha", -1.0, "alpha"),
    ("enc_strides", (1, 2), "enc_channels"),
])
def test_config_check_rejects_bad_values(field, value, fragment):
    cfg = VCapsConfig()
    setattr(cfg, field, value)
    with pytest.raises(ConfigError, match=fragment):
        cfg.check()


def test_config_resolve_mode_and_network():
    cfg = VCapsConfig()
    assert cfg.resolve(has_labels=True, has_attributes=True) == ("attributes", "residual")
    assert cfg.resolve(has_labels=True, has_attributes=False) == ("class", "conv")
    cfg.mode = "class"
    assert cfg.resolve(True, True) == ("class", "conv")
    with pytest.raises(ConfigError, match="needs class labels"):
        cfg.resolve(False, True)
    cfg.mode, cfg.network = "attributes", "conv"
    assert cfg.resolve(True, True) == ("attributes", "conv")
    with pytest.raises(ConfigError, match="needs binary attributes"):
        cfg.resolve(True, False)
