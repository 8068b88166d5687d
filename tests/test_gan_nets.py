"""Shape contracts of the GAN generators and discriminators (paper sizes at batch 2)."""
from __future__ import annotations

import pytest
import torch

from capsgen.config import apply_overrides
from capsgen.models.gan.nets import (CapsuleDiscriminator, DCGANDiscriminator, DCGANGenerator,
                                     KarmakarGenerator, TrunkCapsuleDiscriminator, halvings)
from capsgen.models.gan.config import CapsuleGANConfig, DCGANConfig
from capsgen.models.gan.task import build_discriminator, build_generator
from capsgen.nn import safe_norm

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64)]


def count(module: torch.nn.Module, cls: type) -> int:
    return sum(isinstance(m, cls) for m in module.modules())


def test_halvings():
    assert [halvings(s, s) for s in (8, 28, 32, 64, 7)] == [1, 2, 3, 4, 0]


@pytest.mark.parametrize("shape", SHAPES)
def test_dcgan_generator_shapes(shape):
    torch.manual_seed(0)
    g = DCGANGenerator(shape, latent_dim=100, width=64)
    x = g(torch.randn(2, 100))
    assert x.shape == (2, *shape)
    assert x.min() >= -1 and x.max() <= 1
    # Radford et al.: the last hidden layer has `width` channels, the first width * 2^(n-1).
    convs = [m for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convs) == halvings(*shape[1:]) and convs[-1].in_channels == 64
    assert g.net[0].out_features == 64 * 2 ** (len(convs) - 1) * (shape[1] >> len(convs)) ** 2


def test_karmakar_generator_is_five_3x3_convs_without_batch_norm():
    g = KarmakarGenerator((1, 28, 28), latent_dim=100, channels=(128, 64, 32, 3))
    convs = [m for m in g.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 64, 32, 3, 1]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert count(g, torch.nn.BatchNorm2d) == 0 and count(g, torch.nn.LeakyReLU) == 5
    x = g(torch.randn(2, 100))
    assert x.shape == (2, 1, 28, 28) and x.abs().max() <= 1
    assert KarmakarGenerator((3, 64, 64))(torch.randn(2, 100)).shape == (2, 3, 64, 64)


@pytest.mark.parametrize("shape", SHAPES)
def test_dcgan_discriminator_shapes(shape):
    d = DCGANDiscriminator(shape, width=64)
    assert d.kind == "logit" and d(torch.randn(2, *shape)).shape == (2, 1)


def test_paper000_conv_discriminator_has_five_conv_layers():
    d = DCGANDiscriminator((1, 28, 28), width=64, norm="none", extra_layers=2)
    assert count(d, torch.nn.Conv2d) == 5 and count(d, torch.nn.BatchNorm2d) == 0
    assert d(torch.randn(2, 1, 28, 28)).shape == (2, 1)


def test_dcgan_discriminator_keeps_its_parameter_names():
    """The trunk was factored out of DCGANDiscriminator: checkpoints written before still load."""
    keys = list(DCGANDiscriminator((1, 28, 28), width=32).state_dict())
    assert keys[:2] == ["net.0.weight", "net.0.bias"] and keys[-2:] == ["net.5.weight", "net.5.bias"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name,kind,k", [("trunk-caps", "logit", 1), ("trunk-caps2", "length", 2)])
@pytest.mark.parametrize("routing", ["dynamic", "trainable"])
def test_trunk_capsule_discriminator(shape, name, kind, k, routing):
    """DCGAN's strided body, then primary capsules on its last map (same-size padding), routed
    capsules and a head: equal to composing those parts by hand."""
    torch.manual_seed(0)
    cfg = CapsuleGANConfig(discriminator=name, d_primary_kernel=3, d_primary_stride=1, d_routing_kind=routing)
    d = build_discriminator(cfg, shape)
    assert isinstance(d, TrunkCapsuleDiscriminator) and d.kind == kind
    n = halvings(*shape[1:])
    side = shape[1] >> n
    assert d.num_primary == cfg.d_primary_caps * side * side
    assert count(d.trunk, torch.nn.Conv2d) == n and d.primary.conv.in_channels == cfg.d_width * 2 ** (n - 1)
    d.eval()
    x = torch.randn(3, *shape)
    out = d(x)
    assert out.shape == (3, k)
    v = d.caps(d.primary(d.trunk(x)))
    assert v.shape == (3, cfg.d_caps if name == "trunk-caps" else 2, cfg.d_caps_dim)
    torch.testing.assert_close(out, d.head(v) if kind == "logit" else safe_norm(v), rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in d.parameters() if p.requires_grad)


def test_trunk_capsule_discriminator_refuses_an_unknown_head():
    with pytest.raises(ValueError, match="unknown capsule head"):
        TrunkCapsuleDiscriminator((1, 28, 28), head="softmax")


def preset_config(cls, preset: str, *extra: str):
    cfg = cls()
    apply_overrides({"model": cfg}, [p for p in cls.PRESETS[preset] if not p.startswith("train.")] + list(extra))
    return cfg


def test_karmakar_capsnet_discriminator_paper_size():
    cfg = preset_config(CapsuleGANConfig, "karmakar")
    d = build_discriminator(cfg, (1, 28, 28))
    assert isinstance(d, CapsuleDiscriminator) and d.kind == "logit"
    assert d.conv.out_channels == 256 and isinstance(d.act, torch.nn.PReLU)
    assert d.num_primary == 32 * 7 * 7          # 7x7 stride 2 primary capsules on a 20x20 map
    x = torch.randn(2, 1, 28, 28)
    assert d.capsules(x).shape == (2, 10, 16)
    assert d(x).shape == (2, 1)
    assert [m.out_features for m in d.head if isinstance(m, torch.nn.Linear)] == [64, 1]
    g = build_generator(cfg, (1, 28, 28))
    assert isinstance(g, KarmakarGenerator) and g(torch.randn(2, 100)).shape == (2, 1, 28, 28)


def test_trunk_hinge_preset_is_dcgans_body_under_trainable_capsules():
    from capsgen.nn.trainable_routing import TrainableDenseCapsules

    cfg = preset_config(CapsuleGANConfig, "trunk-hinge")
    assert cfg.objective == "hinge" and cfg.lr_d == cfg.lr == 4e-4 and cfg.d_minibatch_std == 4
    assert "train.batch_size=32" in CapsuleGANConfig.PRESETS["trunk-hinge"]
    d = build_discriminator(cfg, (1, 28, 28))
    assert isinstance(d, TrunkCapsuleDiscriminator) and d.kind == "logit" and d.minibatch_std == 4
    assert [m.out_channels for m in d.trunk if isinstance(m, torch.nn.Conv2d)] == [24, 48]
    assert d.num_primary == 8 * 7 * 7 and d.primary.conv.kernel_size == (1, 1)
    assert isinstance(d.caps, TrainableDenseCapsules)
    assert d(torch.randn(2, 1, 28, 28)).shape == (2, 1)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("preset,k", [("jaiswal", 1), ("jaiswal-2caps", 2)])
def test_jaiswal_capsnet_discriminator_paper_size(shape, preset, k):
    d = build_discriminator(preset_config(CapsuleGANConfig, preset), shape)
    assert d.kind == "length" and d.conv.out_channels == 256
    out = d(torch.randn(2, *shape))
    assert out.shape == (2, k) and (out >= 0).all() and (out < 1).all()


def test_one_capsule_routing_is_a_no_op():
    torch.manual_seed(0)
    d = CapsuleDiscriminator((1, 12, 12), 8, 3, "relu", 4, 8, 3, 2, out_caps=1, out_dim=16,
                             routing_iterations=3, head="length", init_std=0.1)
    assert d.caps.routing_iterations == 1       # softmax over one parent: c == 1 at every iteration
    x = torch.randn(3, 1, 12, 12)
    one = d(x)
    d.caps.routing_iterations = 3
    torch.testing.assert_close(d(x), one, rtol=1e-6, atol=1e-7)
    # with two parents routing does change the answer
    d2 = CapsuleDiscriminator((1, 12, 12), 8, 3, "relu", 4, 8, 3, 2, out_caps=2, out_dim=16,
                              routing_iterations=1, head="length", init_std=0.1)
    r1 = d2(x)
    d2.caps.routing_iterations = 3
    assert not torch.allclose(d2(x), r1)


def test_small_cpu_defaults_and_family_validation():
    for cls, kind in ((DCGANConfig, "logit"), (CapsuleGANConfig, "length")):
        cfg = cls()
        d, g = build_discriminator(cfg, (1, 28, 28)), build_generator(cfg, (1, 28, 28))
        assert d.kind == kind and g(torch.randn(2, 100)).shape == (2, 1, 28, 28)
        assert d(torch.randn(2, 1, 28, 28)).shape == (2, 1)
        assert sum(p.numel() for p in d.parameters()) < 1_000_000
    with pytest.raises(ValueError, match="not one of this family"):
        build_discriminator(DCGANConfig(discriminator="caps1"), (1, 28, 28))
    with pytest.raises(ValueError, match="too small"):
        build_discriminator(CapsuleGANConfig(), (1, 8, 8))


def test_slerp_walks_the_great_circle():
    from capsgen.models.gan.task import slerp

    z0, z1 = torch.tensor([[3.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 3.0], [2.0, 2.0]])
    path = slerp(z0, z1, torch.linspace(0, 1, 5))
    assert path.shape == (2, 5, 2)
    torch.testing.assert_close(path[:, 0], z0)
    torch.testing.assert_close(path[:, -1], z1)
    torch.testing.assert_close(path[0].norm(dim=1), torch.full((5,), 3.0))   # stays on the circle
    torch.testing.assert_close(path[1], torch.lerp(z0[1], z1[1], torch.linspace(0, 1, 5)[:, None]))  # parallel
