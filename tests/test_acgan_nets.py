"""AC-GAN networks (Chen et al.'s sizes) and losses (Odena et al.), checked by hand."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from capsgen.models.acgan.config import ACGANConfig
from capsgen.models.acgan.nets import (ACGANDiscriminator, ACGANGenerator, build_discriminator, build_generator,
                                       discriminator_loss, generator_loss)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def trace_shapes(module: nn.Sequential, x: torch.Tensor) -> list[tuple[int, ...]]:
    """Output shape (without the batch) of every ReLU / tanh in a Sequential."""
    shapes = []
    for layer in module:
        x = layer(x)
        if isinstance(layer, (nn.ReLU, nn.Tanh)):
            shapes.append(tuple(x.shape[1:]))
    return shapes


@pytest.mark.parametrize("conditioning", ["embedding", "onehot"])
def test_generator_follows_chen_et_al_shapes(conditioning):
    torch.manual_seed(0)
    g = build_generator(ACGANConfig(conditioning=conditioning), (1, 28, 28), 10)
    z, y = torch.randn(4, 100), torch.tensor([0, 3, 7, 9])
    x = g(z, y)
    assert x.shape == (4, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    # 3x3x384 -> 7x7x192 -> 14x14x96 -> 28x28x1 (channels first here)
    g.eval()
    assert trace_shapes(g.net, g.condition(z, y)) == [(384, 3, 3), (192, 7, 7), (96, 14, 14), (1, 28, 28)]
    # Hand count: linear (z or z + one-hot -> 3*3*384, with bias), transposed convs 5x5 (the inner
    # two without bias, before batch norm), two batch norms, the class embedding.
    linear_in = 100 if conditioning == "embedding" else 110
    expected = (linear_in * 3456 + 3456 + 384 * 192 * 25 + 2 * 192 + 192 * 96 * 25 + 2 * 96 + 96 * 25 + 1
                + (10 * 100 if conditioning == "embedding" else 0))
    print(f"AC-GAN generator ({conditioning}) parameters: {n_params(g):,}")
    assert n_params(g) == expected


def test_generator_output_saturates_inside_the_tanh_range():
    torch.manual_seed(0)
    g = ACGANGenerator((1, 28, 28), 10)
    x = g(1e4 * torch.randn(8, 100), torch.arange(8))
    assert x.min() >= -1 and x.max() <= 1 and x.abs().max() > 0.99


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 8), (3, 28, 32)])
def test_generator_other_sizes(shape):
    g = ACGANGenerator(shape, 5, latent_dim=16, channels=(8, 8, 8))
    x = g(torch.randn(2, 16), torch.tensor([1, 4]))
    assert x.shape == (2, *shape) and x.abs().max() <= 1
    d = ACGANDiscriminator(shape, 5, channels=(4, 4, 4, 4))
    src, cls = d(x)
    assert src.shape == (2, 1) and cls.shape == (2, 5)


def test_unsupported_sizes_and_inputs_are_refused():
    with pytest.raises(ValueError, match="divisible by 4"):
        ACGANGenerator((1, 30, 30), 10)
    with pytest.raises(ValueError, match="conditioning"):
        ACGANGenerator((1, 28, 28), 10, conditioning="concat")
    g = ACGANGenerator((1, 28, 28), 10, latent_dim=8, channels=(4, 4, 4))
    with pytest.raises(ValueError, match=r"z \[B, 8\]"):
        g(torch.randn(2, 9), torch.tensor([0, 1]))


def test_class_conditions_the_generator():
    torch.manual_seed(0)
    for conditioning in ("embedding", "onehot"):
        g = ACGANGenerator((1, 28, 28), 10, latent_dim=16, channels=(8, 8, 8), conditioning=conditioning).eval()
        z = torch.randn(1, 16).expand(2, 16)
        x = g(z, torch.tensor([2, 5]))
        assert not torch.allclose(x[0], x[1])


def test_discriminator_follows_chen_et_al():
    torch.manual_seed(0)
    d = build_discriminator(ACGANConfig(), (1, 28, 28), 10)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256]
    assert [c.stride[0] for c in convs] == [2, 1, 2, 1]
    # every conv followed by leaky ReLU then dropout, nothing else
    kinds = [type(m) for m in d.features][:-1]
    assert kinds == [nn.Conv2d, nn.LeakyReLU, nn.Dropout] * 4
    assert all(m.negative_slope == 0.2 for m in d.features if isinstance(m, nn.LeakyReLU))
    assert all(m.p == 0.3 for m in d.features if isinstance(m, nn.Dropout))
    d.eval()
    src, cls = d(torch.rand(3, 1, 28, 28) * 2 - 1)
    assert src.shape == (3, 1) and cls.shape == (3, 10)
    feat = 256 * 7 * 7
    expected = (1 * 32 * 9 + 32 + 32 * 64 * 9 + 64 + 64 * 128 * 9 + 128 + 128 * 256 * 9 + 256
                + feat + 1 + feat * 10 + 10)
    print(f"AC-GAN discriminator parameters: {n_params(d):,}")
    assert n_params(d) == expected
    assert d.training is False and torch.equal(d(torch.zeros(1, 1, 28, 28))[0], d(torch.zeros(1, 1, 28, 28))[0])


# ------------------------------------------------------------------------------------ losses
def _bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def _ce(logits: list[float], y: int) -> float:
    return -math.log(math.exp(logits[y]) / sum(math.exp(v) for v in logits))


def test_losses_match_a_hand_computation():
    src_real, src_fake = [1.5, -0.3], [-2.0, 0.7]
    cls_real, cls_fake = [[2.0, 0.1, -1.0], [0.0, 0.5, 0.3]], [[-0.2, 1.1, 0.4], [1.0, 1.0, -2.0]]
    y_real, y_fake = [0, 2], [1, 0]
    T = torch.tensor
    args = (T(src_real)[:, None], T(cls_real), T(y_real), T(src_fake)[:, None], T(cls_fake), T(y_fake))
    for real_target, w in ((1.0, 1.0), (0.95, 0.0), (0.9, 0.5)):
        out = discriminator_loss(*args, real_target=real_target, fake_class_weight=w)
        source = (sum(_bce(s, real_target) for s in src_real) / 2 + sum(_bce(s, 0.0) for s in src_fake) / 2)
        klass = (sum(_ce(c, y) for c, y in zip(cls_real, y_real)) / 2
                 + w * sum(_ce(c, y) for c, y in zip(cls_fake, y_fake)) / 2)
        assert out["source"].item() == pytest.approx(source, rel=1e-6)
        assert out["class"].item() == pytest.approx(klass, rel=1e-6)
        assert out["loss"].item() == pytest.approx(source + klass, rel=1e-6)
    out = generator_loss(T(src_fake)[:, None], T(cls_fake), T(y_fake))
    source = sum(_bce(s, 1.0) for s in src_fake) / 2
    klass = sum(_ce(c, y) for c, y in zip(cls_fake, y_fake)) / 2
    assert out["source"].item() == pytest.approx(source, rel=1e-6)
    assert out["loss"].item() == pytest.approx(source + klass, rel=1e-6)


def test_one_training_step_moves_both_networks():
    """The losses wire G and D together: D's loss trains D only, G's loss reaches G through D."""
    torch.manual_seed(0)
    cfg = ACGANConfig(latent_dim=8, g_channels=(8, 8, 8), d_channels=(4, 4, 4, 4))
    g, d = build_generator(cfg, (1, 8, 8), 3), build_discriminator(cfg, (1, 8, 8), 3)
    x, y = torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 0])
    yf = torch.tensor([2, 2, 1, 0])
    fake = g(torch.randn(4, 8), yf)
    d_out = discriminator_loss(*d(x), y, *d(fake.detach()), yf)
    d_out["loss"].backward()
    assert all(p.grad is None for p in g.parameters()) and all(p.grad is not None for p in d.parameters())
    d.zero_grad()
    generator_loss(*d(fake), yf)["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())


def test_config_is_torch_free_and_validated():
    code = ("import sys; from capsgen.models.acgan.config import ACGANConfig; c = ACGANConfig(); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "print(c.latent_dim, c.lr, c.beta1, c.g_channels, c.d_channels)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["100", "0.0002", "0.5", "(384,", "192,", "96)", "(32,", "64,", "128,", "256)"]
    with pytest.raises(ValueError, match="three widths"):
        ACGANConfig(g_channels=(8, 8)).validate()
    with pytest.raises(ValueError, match="equal length"):
        ACGANConfig(d_strides=(2, 1)).validate()
    assert "train.batch_size=100" in ACGANConfig.PRESETS["chen"]
