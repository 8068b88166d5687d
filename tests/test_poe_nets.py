"""Hauser's products of expert capsules: autoencoder front end, capsule grouping, W / U steps,
sampling domains and the negative-image measure (capsgen.models.poe)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from capsgen.config import check_config
from capsgen.errors import CapsgenError, ConfigError
from capsgen.models.poe.config import PoEConfig
from capsgen.models.poe.nets import (ConvAutoencoder, PoECapsules, PoEModel, autoencoder_loss,
                                     capsules_to_features, features_to_capsules, negative_mask,
                                     negative_share)
from capsgen.nn import PrimaryCapsules, squash
from capsgen.nn.contrastive import decode_capsules

try:
    from reference_capsules import ref_primary_flat, ref_primary_grid
except ImportError:  # tests/ imported as a package
    from tests.reference_capsules import ref_primary_flat, ref_primary_grid

# Small but every part of the model: 20x20 images, 5x5 kernels -> 16x16 -> 6x6 features of 16
# channels = 2 x 36 = 72 primary capsules of 8-D, 4 code capsules of 6-D.
# Raw (uncentred) capsules unless a test asks, as the paper has them (the family's default centres).
TINY = dict(ae_channels=16, ae_kernel=5, code_capsules=4, code_dim=6, init_std=0.1, centre_capsules=False)


def tiny_model(seed: int = 0, shape=(1, 20, 20), **kw) -> PoECapsules:
    return PoEModel(PoEConfig(**{**TINY, **kw}), shape, torch.Generator().manual_seed(seed)).capsules


def blobs(n: int, size: int = 20, seed: int = 0, channels: int = 1) -> torch.Tensor:
    """Bright Gaussian blobs at random places on a dark background, [n, C, size, size]."""
    g = torch.Generator().manual_seed(seed)
    centre = 0.3 * size + 0.4 * size * torch.rand(n, 2, generator=g)
    width = 1.5 + 2.0 * torch.rand(n, 1, 1, generator=g)
    r = torch.arange(size, dtype=torch.float32)
    d2 = (r[None, :, None] - centre[:, 0, None, None]) ** 2 + (r[None, None, :] - centre[:, 1, None, None]) ** 2
    img = torch.exp(-d2 / (2 * width ** 2))
    return img[:, None].expand(n, channels, size, size).clone()


# ----------------------------------------------------------------------------- config
def test_config_module_does_not_import_torch():
    code = "import sys, capsgen.models.poe.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_config_defaults_are_the_papers_architecture_and_bad_values_are_refused():
    cfg = PoEConfig()
    assert (cfg.ae_channels, cfg.ae_kernel, cfg.ae_stride, cfg.primary_dim) == (128, 9, 2, 8)
    assert (cfg.code_capsules, cfg.code_dim, cfg.init_std) == (20, 16, 0.01)
    check_config(cfg, "model")
    with pytest.raises(ConfigError, match="multiple of"):
        check_config(PoEConfig(ae_channels=12), "model")
    with pytest.raises(ConfigError, match="decoder_rule"):
        check_config(PoEConfig(decoder_rule="backprop"), "model")
    with pytest.raises(ConfigError):
        PoEModel(PoEConfig(w_lr=0.0), (1, 28, 28), torch.Generator())


# ----------------------------------------------------------------------------- autoencoder
def test_paper_shapes_28x28_give_576_capsules_and_colour_works():
    m = PoEModel(PoEConfig(), (1, 28, 28), torch.Generator().manual_seed(0)).capsules
    assert m.ae.feature_shape == (128, 6, 6) and m.num_primary == 576
    assert m.encoder_weight.shape == (576, 20, 16, 8) and m.decoder_weight.shape == (20, 576, 8, 16)
    x = torch.rand(2, 1, 28, 28)
    assert m.primary_capsules(x).shape == (2, 576, 8)
    colour = ConvAutoencoder((3, 32, 32), channels=16)
    y = colour(torch.rand(2, 3, 32, 32))
    assert colour.feature_shape == (16, 8, 8) and y.shape == (2, 3, 32, 32)
    assert float(y.detach().min()) >= 0 and float(y.detach().max()) <= 1


def test_too_small_images_are_refused():
    with pytest.raises(CapsgenError, match="too small"):
        ConvAutoencoder((1, 12, 12), kernel=9)


def test_decoder_uses_the_transposed_encoder_filters():
    """Tied weights: the decoder's two layers are the adjoints of the encoder's convolutions,
    <conv(a), b> = <a, conv^T(b)>, and the AE owns no decoder filters of its own."""
    ae = ConvAutoencoder((1, 20, 20), channels=8, kernel=5, generator=torch.Generator().manual_seed(1))
    names = sorted(n for n, _ in ae.named_parameters())
    assert names == ["conv1.bias", "conv1.weight", "conv2.bias", "conv2.weight", "dec_bias1", "dec_bias2"]
    g = torch.Generator().manual_seed(2)
    a = torch.randn(2, 8, 16, 16, generator=g, dtype=torch.float64)
    b = torch.randn(2, 8, 6, 6, generator=g, dtype=torch.float64)
    w = ae.conv2.weight.detach().double()
    lhs = (F.conv2d(a, w, stride=2) * b).sum()
    rhs = (a * F.conv_transpose2d(b, w, stride=2, output_padding=ae.output_padding)).sum()
    assert torch.allclose(lhs, rhs)
    # the decode path is exactly those transposed convolutions with the decoder biases
    f = torch.rand(2, 8, 6, 6)
    h = F.leaky_relu(F.conv_transpose2d(f, ae.conv2.weight, ae.dec_bias2, 2, output_padding=ae.output_padding), 0.2)
    expected = torch.sigmoid(F.conv_transpose2d(h, ae.conv1.weight, ae.dec_bias1))
    assert torch.allclose(ae.decode(f), expected)
    # and training the decoder moves the encoder's filters
    ae.decode(f).sum().backward()
    assert ae.conv1.weight.grad.abs().sum() > 0 and ae.conv2.weight.grad.abs().sum() > 0


def test_dropout_draws_from_the_generator_only_when_given():
    ae = ConvAutoencoder((1, 20, 20), channels=8, kernel=5, dropout=0.5)
    x = torch.rand(3, 1, 20, 20)
    assert torch.equal(ae.encode(x), ae.encode(x))
    a = ae.encode(x, torch.Generator().manual_seed(5))
    b = ae.encode(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.allclose(a, ae.encode(x))


def test_autoencoder_training_lowers_reconstruction_loss():
    torch.manual_seed(0)
    ae = ConvAutoencoder((1, 20, 20), channels=8, kernel=5, generator=torch.Generator().manual_seed(0))
    x = blobs(8)
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(ae.parameters(), 3e-3)
    losses = []
    for _ in range(30):
        loss, m = autoencoder_loss(ae, x, g, "bce")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(m["ae_mse"])
    assert losses[-1] < 0.5 * losses[0], losses


# ----------------------------------------------------------------------------- capsule grouping
def test_capsule_grouping_is_primary_capsules_order():
    """features_to_capsules groups channels exactly as capsgen.nn.PrimaryCapsules (and as the
    loop reference of Sabour's PrimaryCaps) does."""
    g = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv2d(6, 16, 5, 2)
    h = torch.randn(2, 6, 15, 15, generator=g)
    prim = PrimaryCapsules(6, num_capsules=2, capsule_dim=8, kernel_size=5, stride=2)
    prim.conv.load_state_dict(conv.state_dict())
    with torch.no_grad():
        ours = squash(features_to_capsules(conv(h), 8))
        assert torch.allclose(ours, prim(h), atol=1e-6)
        ref = ref_primary_flat(ref_primary_grid(h, conv.weight, conv.bias, 2, 8, 2))
    assert torch.allclose(ours, ref, atol=1e-6)


def test_capsules_to_features_inverts_the_grouping():
    f = torch.randn(3, 16, 6, 6)
    caps = features_to_capsules(f, 8)
    assert caps.shape == (3, 72, 8)
    assert torch.equal(capsules_to_features(caps, 16, 6, 6), f)


# ----------------------------------------------------------------------------- model and steps
def test_w_and_u_are_buffers_checkpointed_and_reproducible():
    a, b = tiny_model(seed=4), tiny_model(seed=4)
    params = {n for n, _ in a.named_parameters()}
    assert all(n.startswith("ae.") for n in params)
    state = a.state_dict()
    assert {"encoder_weight", "decoder_weight", "directions", "domain_fitted", "capsule_mean",
            "max_length", "capsules_fitted"} <= set(state)
    for k, v in state.items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert not torch.equal(a.encoder_weight, tiny_model(seed=5).encoder_weight)


def test_a_checkpoint_with_the_capsule_state_at_the_root_still_loads():
    """Before the twin, W, U and the statistics were the root's own buffers ("encoder_weight", not
    "capsules.encoder_weight"); such a state dict loads into the same tensors."""
    cfg = PoEConfig(**TINY)
    a = PoEModel(cfg, (1, 20, 20), torch.Generator().manual_seed(4))
    flat = {k.removeprefix("capsules."): v for k, v in a.state_dict().items()}
    assert "encoder_weight" in flat and "capsules.encoder_weight" not in flat
    b = PoEModel(cfg, (1, 20, 20), torch.Generator().manual_seed(9))
    b.load_state_dict(flat, strict=True)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_encoder_and_decoder_steps_change_only_their_own_weights():
    m = tiny_model()
    m.freeze_autoencoder()
    caps = m.visible_capsules(blobs(8))
    wopt, uopt = m.make_optimizers()
    W0, U0 = m.encoder_weight.clone(), m.decoder_weight.clone()
    ae0 = {k: v.clone() for k, v in m.ae.state_dict().items()}
    metrics = m.encoder_step(caps, wopt)
    assert set(metrics) == {"w_recon", "free_energy_gap", "code_length", "w_lr"}
    assert not torch.equal(m.encoder_weight, W0) and torch.equal(m.decoder_weight, U0)
    W1 = m.encoder_weight.clone()
    assert set(m.decoder_step(caps, uopt)) == {"u_recon", "u_lr"}
    assert torch.equal(m.encoder_weight, W1) and not torch.equal(m.decoder_weight, U0)
    for k, v in m.ae.state_dict().items():
        assert torch.equal(v, ae0[k]), k
    assert wopt.state_dict()["momentum_buffer"].shape == m.encoder_weight.shape


def structured_capsules(n: int, caps: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    """Squashed capsules driven by a 3-D latent per sample, [n, caps, dim]: learnable structure
    with lengths spread over (0, 1), unlike an untrained AE's near-zero capsules."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(caps, dim, 3, generator=g)
    return squash(torch.einsum("ide,be->bid", A, torch.randn(n, 3, generator=g)))


def test_cd_phases_lower_capsule_errors():
    """W then U by the model's own steps on 32 samples of 72 capsules: both errors fall."""
    m = tiny_model(seed=1, w_lr=20.0, u_lr=0.5)
    m.freeze_autoencoder()
    caps = structured_capsules(32, m.num_primary)
    wopt, uopt = m.make_optimizers()
    w = [m.encoder_step(caps, wopt)["w_recon"] for _ in range(40)]
    u = [m.decoder_step(caps, uopt)["u_recon"] for _ in range(40)]
    assert min(w[-5:]) < 0.7 * w[0], w
    assert min(u[-5:]) < 0.5 * u[0], u
    errs = m.reconstruction_errors(blobs(8, seed=3))
    assert set(errs) == {"ae_mse", "w_recon", "u_recon", "pixel_mse"}
    assert all(v == v and v < float("inf") for v in errs.values())


# ----------------------------------------------------------------------------- sampling
def fitted_model(seed: int = 0) -> PoECapsules:
    m = tiny_model(seed=seed)
    m.freeze_autoencoder()
    wopt, _ = m.make_optimizers()
    caps = m.visible_capsules(blobs(32, seed=seed))
    for _ in range(5):
        m.encoder_step(caps, wopt)
    m.fit_capsule_statistics([blobs(16, seed=7), blobs(16, seed=8)])
    m.fit_sampling_domain([blobs(16, seed=7), blobs(16, seed=8)])
    return m


def test_fit_sampling_domain_sets_unit_directions_and_reports_coverage():
    m = fitted_model()
    assert bool(m.domain_fitted)
    assert torch.allclose(m.directions.norm(dim=-1), torch.ones(4), atol=1e-5)
    share = m.fit_sampling_domain([blobs(16, seed=7)])
    assert share.shape == (4,) and float(share.min()) >= 0.5 and float(share.max()) <= 1
    assert 0 < float(m.max_length) < 1
    longest = m.primary_capsules(torch.cat([blobs(16, seed=7), blobs(16, seed=8)])).norm(dim=-1).max()
    assert float(m.max_length) == pytest.approx(float(longest), rel=1e-5)


def test_centred_capsules_are_zero_mean_and_decode_back_to_the_same_images():
    plain, centred = tiny_model(seed=2), tiny_model(seed=2, centre_capsules=True)
    train = blobs(24, seed=11)
    with pytest.raises(CapsgenError, match="fit_capsule_statistics"):
        centred.visible_capsules(train)
    for m in (plain, centred):
        m.freeze_autoencoder()
        m.fit_capsule_statistics([train[:12], train[12:]])
    assert torch.allclose(plain.capsule_mean, centred.capsule_mean)
    visible = centred.visible_capsules(train)
    assert visible.mean(0).abs().max() < 1e-6
    assert torch.allclose(visible, plain.visible_capsules(train) - plain.capsule_mean)
    # adding the mean back before unsquash: the same pictures from either representation
    assert torch.allclose(centred.capsules_to_images(visible),
                          plain.capsules_to_images(plain.visible_capsules(train)), atol=1e-5)


def test_sample_shapes_range_and_reproducibility():
    m = fitted_model()
    for restricted in (False, True):
        a = m.sample(6, None, restricted, torch.Generator().manual_seed(9))
        b = m.sample(6, None, restricted, torch.Generator().manual_seed(9))
        assert a.shape == (6, 1, 20, 20) and torch.equal(a, b)
        assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert m.sample(0, 1, True, torch.Generator()).shape == (0, 1, 20, 20)


def test_sampled_codes_use_one_capsule_and_restriction_flips_into_the_half_space():
    m = fitted_model()
    full = m.sample_codes(200, 2, False, torch.Generator().manual_seed(3))
    restricted = m.sample_codes(200, 2, True, torch.Generator().manual_seed(3))
    others = [j for j in range(4) if j != 2]
    assert full[:, others].abs().max() == 0 and restricted[:, others].abs().max() == 0
    dots_full = (full[:, 2] * m.directions[2]).sum(-1)
    dots_restricted = (restricted[:, 2] * m.directions[2]).sum(-1)
    assert (dots_full < 0).any() and (dots_restricted >= 0).all()
    # the same Gaussian draws, reflected through the origin where they fell in the other half
    flip = torch.where(dots_full < 0, -1.0, 1.0)[:, None]
    assert torch.allclose(restricted[:, 2], full[:, 2] * flip)
    # squashed 16-D... here 6-D Gaussian samples: lengths in (0, 1)
    lengths = full[:, 2].norm(dim=-1)
    assert float(lengths.min()) > 0 and float(lengths.max()) < 1
    # capsule_index None spreads the samples over the capsules
    mixed = m.sample_codes(200, None, False, torch.Generator().manual_seed(4))
    used = (mixed.norm(dim=-1) > 0).sum(0)
    assert (used > 0).all() and int(used.sum()) == 200


def test_sampling_errors_are_one_line_capsgen_errors():
    m = tiny_model()
    with pytest.raises(CapsgenError, match="fit_sampling_domain"):
        m.sample(2, 0, True, torch.Generator())
    with pytest.raises(CapsgenError, match="out of range"):
        m.sample(2, 4, False, torch.Generator())


def test_capsules_to_images_clamps_lengths_before_unsquash():
    m = tiny_model()
    caps = torch.randn(2, m.num_primary, 8)
    caps = 1.5 * caps / caps.norm(dim=-1, keepdim=True)       # longer than any squashed capsule
    images = m.capsules_to_images(caps)
    assert torch.isfinite(images).all()


# ----------------------------------------------------------------------------- negatives
def test_negative_measure_on_positives_negatives_and_colour():
    pos = blobs(10)
    assert not negative_mask(pos).any()
    assert negative_mask(1 - pos).all()
    mixed = torch.cat([pos[:3], 1 - pos[:1]])
    assert negative_share(mixed) == pytest.approx(0.25)
    assert negative_share(blobs(4, channels=3)) == 0.0
    assert negative_share(pos[:0]) == 0.0
    # A grey background (0.1) with a bright stroke (0.6) and a dark rim (0) filling the interior:
    # no negative, although the interior's mean (0.04) is below the frame's (the old rule said
    # negative; mnist-5k samples look like this). Inverted, it is one, although its interior's
    # mean is then above the frame's.
    rim = torch.full((2, 1, 20, 20), 0.1)
    rim[:, :, 2:-2, 2:-2] = 0.0
    rim[:, :, 8:12, 8:12] = 0.6
    assert rim[:, :, 2:-2, 2:-2].mean() < 0.1
    assert not negative_mask(rim).any() and negative_mask(1 - rim).all()
    with pytest.raises(ValueError):
        negative_mask(torch.rand(2, 1, 4, 4))


def test_decode_keeps_u_layouts_only_while_u_is_unchanged():
    m = tiny_model()
    code = squash(torch.randn(3, m.cfg.code_capsules, m.cfg.code_dim, generator=torch.Generator().manual_seed(1)))
    fresh = decode_capsules(code, m.decoder_weight, m.cfg.routing_iterations)
    assert torch.equal(m.decode(code), fresh) and torch.equal(m.decode(code), fresh)   # built, then kept
    with torch.no_grad():
        m.decoder_weight.mul_(1.5)                      # an in-place change (a CD step does this)
    assert torch.equal(m.decode(code), decode_capsules(code, m.decoder_weight, m.cfg.routing_iterations))
    m.load_state_dict({**m.state_dict(), "decoder_weight": torch.zeros_like(m.decoder_weight)})
    assert m.decode(code).abs().sum() == 0
