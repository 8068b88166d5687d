"""Attacks of Chen et al. (G-CapsNets): FGSM (white- and black-box), PGD, universal perturbations.

Small trained models on scikit-learn's 8x8 digits (1,438 train / 359 test images) stand in for
MNIST; each trains in about two seconds on one thread and is shared by the module.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from capsgen.data import load_split
from capsgen.errors import CapsgenError
from capsgen.eval.attacks import (CURVE_EPSILONS, LeNet, PerturbationGenerator, accuracy, accuracy_vs_epsilon,
                                  apply_perturbation, fgsm, pgd, project, train_substitute,
                                  train_universal_perturbation)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def digits():
    x, y = load_split("digits", "train").to_tensors()
    xt, yt = load_split("digits", "test").to_tensors()
    return x, y, xt, yt


@pytest.fixture(scope="module")
def lenet(digits):
    """A LeNet trained 300 Adam steps (the white-box target; about 91-95 % test accuracy)."""
    x, y, _, _ = digits
    return train_substitute(x, y, 300, torch.Generator().manual_seed(1))


def train_mlp(x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> nn.Module:
    """A different architecture from the substitute, for the transfer test."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def random_lenet(seed: int, scale: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    m = LeNet((1, 8, 8), 10)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(scale)
    return m.eval()


# ----------------------------------------------------------------------------- FGSM maths
class Linear(nn.Module):
    def __init__(self, W: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.W, self.b = nn.Parameter(W), nn.Parameter(b)

    def forward(self, x):
        return x.flatten(1) @ self.W.T + self.b


def test_fgsm_on_linear_model_is_the_analytic_sign_of_gradient():
    g = torch.Generator().manual_seed(0)
    B, K, shape = 5, 4, (1, 2, 3)
    D = 6
    W, b = torch.randn(K, D, generator=g, dtype=torch.float64), torch.randn(K, generator=g, dtype=torch.float64)
    x = torch.rand(B, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (B,), generator=g)
    eps = 0.07
    # Cross-entropy of a linear model: d/dx -log softmax(Wx + b)_y = W^T (p - onehot(y)).
    logits = x.flatten(1) @ W.T + b
    p = logits.exp() / logits.exp().sum(1, keepdim=True)
    grad = (p - torch.eye(K, dtype=torch.float64)[y]) @ W
    expected = (x.flatten(1) + eps * grad.sign()).clamp(0, 1).view_as(x)
    adv = fgsm(Linear(W, b), x, y, eps)
    assert torch.allclose(adv, expected, atol=1e-15, rtol=0)
    # Margin loss (best wrong minus true score): its gradient is W[best wrong] - W[y].
    wrong = logits.scatter(1, y[:, None], float("-inf")).argmax(1)
    expected = (x.flatten(1) + eps * (W[wrong] - W[y]).sign()).clamp(0, 1).view_as(x)
    assert torch.allclose(fgsm(Linear(W, b), x, y, eps, loss="margin"), expected, atol=1e-15, rtol=0)


def test_pgd_one_step_without_random_start_is_fgsm(lenet, digits):
    _, _, xt, yt = digits
    for eps in (8 / 255, 0.1, 0.3):
        assert torch.equal(pgd(lenet, xt, yt, eps, step_size=eps, steps=1, random_start=False), fgsm(lenet, xt, yt, eps))


def test_chunked_attack_equals_whole_batch(lenet, digits):
    _, _, xt, yt = digits
    assert torch.equal(fgsm(lenet, xt[:50], yt[:50], 0.1, batch_size=7), fgsm(lenet, xt[:50], yt[:50], 0.1))
    a = pgd(lenet, xt[:50], yt[:50], 0.1, 0.03, 3, torch.Generator().manual_seed(3))
    b = pgd(lenet, xt[:50], yt[:50], 0.1, 0.03, 3, torch.Generator().manual_seed(3), batch_size=50)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- bounds
def _attacks(model, x, y, eps):
    g = torch.Generator().manual_seed(5)
    yield "fgsm", fgsm(model, x, y, eps)
    yield "fgsm-margin", fgsm(model, x, y, eps, loss="margin")
    yield "pgd", pgd(model, x, y, eps, step_size=max(eps / 3, 1e-3), steps=4, generator=g)
    yield "pgd-big-step", pgd(model, x, y, eps, step_size=1.0, steps=2, generator=g)
    yield "pgd-no-start", pgd(model, x, y, eps, step_size=eps, steps=2, random_start=False)
    yield "uap", apply_perturbation(x, PerturbationGenerator((1, 8, 8), eps, latent_dim=8, width=8)(
        torch.rand(1, 8, generator=g)), eps)


@pytest.mark.parametrize("eps", [0.0, 1 / 255, 8 / 255, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_every_attack_stays_in_the_box_and_the_ball(digits, eps, scale):
    _, _, xt, yt = digits
    # Real digits (many exact 0s and 1s) plus uniform noise images.
    x = torch.cat([xt[:40], torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(2))])
    y = torch.cat([yt[:40], torch.arange(20) % 10])
    for name, adv in _attacks(random_lenet(0, scale), x, y, eps):
        assert adv.shape == x.shape and adv.dtype == x.dtype, name
        assert adv.min() >= 0 and adv.max() <= 1, name
        assert (adv - x).abs().max() <= eps, name
        if eps == 0.0:
            assert torch.equal(adv, x), name
    if eps >= 0.1:  # the attacks actually move the images
        assert (fgsm(random_lenet(0, scale), x, y, eps) - x).abs().max() > 0


def test_projection_corrects_float_rounding():
    # 0.1 is not a float32: x + 0.1 rounds above x + eps for about half of these values.
    x = 0.2 + 0.6 * torch.rand(10000, generator=torch.Generator().manual_seed(0))   # no [0, 1] clipping
    eps = 0.1
    naive = (x + eps).clamp(0, 1)
    assert ((naive - x) > eps).any()          # the problem is real ...
    for d in (eps, -eps):
        adv = project(x + d, x, eps)
        assert (adv - x).abs().max() <= eps   # ... and corrected
        assert ((adv - x).abs() - eps).abs().max() < 1e-6   # moved by one float at most


@pytest.mark.parametrize("bad", [-0.01, 1.01, 8.0, float("nan"), "x"])
def test_epsilon_outside_unit_interval_is_a_one_line_error(lenet, digits, bad):
    _, _, xt, yt = digits
    calls = [lambda: fgsm(lenet, xt[:4], yt[:4], bad),
             lambda: pgd(lenet, xt[:4], yt[:4], bad, 0.01, 1, torch.Generator()),
             lambda: accuracy_vs_epsilon(lenet, xt[:4], yt[:4], (bad,)),
             lambda: PerturbationGenerator((1, 8, 8), bad),
             lambda: train_universal_perturbation(lenet, xt[:4], yt[:4], bad, 1, torch.Generator())]
    for call in calls:
        with pytest.raises(CapsgenError) as err:
            call()
        assert "\n" not in str(err.value) and "[0, 1]" in str(err.value)


def test_bad_images_and_options_are_one_line_errors(lenet, digits):
    _, _, xt, yt = digits
    with pytest.raises(CapsgenError, match=r"\[0, 1\]"):
        fgsm(lenet, xt[:4] * 2 - 1, yt[:4], 0.1)
    with pytest.raises(CapsgenError, match="labels"):
        fgsm(lenet, xt[:4], yt[:3], 0.1)
    with pytest.raises(CapsgenError, match="steps"):
        pgd(lenet, xt[:4], yt[:4], 0.1, 0.01, 0, torch.Generator())
    with pytest.raises(CapsgenError, match="margin"):
        fgsm(lenet, xt[:4], yt[:4], 0.1, loss="hinge")
    with pytest.raises(CapsgenError, match="untargeted"):
        train_universal_perturbation(lenet, xt[:4], yt[:4], 0.1, 1, torch.Generator(), objective="x")


# ----------------------------------------------------------------------------- side effects
def test_attacks_change_no_weights_and_restore_the_mode(digits):
    _, _, xt, yt = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 10))
    model.train()
    model[-1].weight.requires_grad_(False)   # a frozen layer stays frozen, the others trainable
    before = copy.deepcopy(model.state_dict())
    x, y = xt[:32], yt[:32]
    a1 = fgsm(model, x, y, 0.1)
    a2 = fgsm(model, x, y, 0.1)
    assert torch.equal(a1, a2)                # eval mode: no dropout noise, fixed batch-norm statistics
    pgd(model, x, y, 0.1, 0.02, 3, torch.Generator().manual_seed(0))
    accuracy_vs_epsilon(model, x, y, (0.05,))
    train_universal_perturbation(model, x, y, 0.1, 3, torch.Generator().manual_seed(0), latent_dim=8, width=8,
                                 batch_size=8, record_every=1)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)   # weights and running stats
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, True, False, True]
    assert all(p.grad is None for p in model.parameters())


def test_a_bound_method_of_a_module_is_frozen_too(digits):
    _, _, xt, yt = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Dropout(0.5))
    model.train()
    # Dropout in train mode would make two identical attacks differ.
    assert torch.equal(fgsm(model.forward, xt[:32], yt[:32], 0.1), fgsm(model.forward, xt[:32], yt[:32], 0.1))
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())


def test_randomness_comes_only_from_the_generator(digits):
    x, y, xt, yt = digits
    model = random_lenet(3)
    state = torch.get_rng_state()
    a = pgd(model, xt[:20], yt[:20], 0.1, 0.02, 2, torch.Generator().manual_seed(7))
    b = pgd(model, xt[:20], yt[:20], 0.1, 0.02, 2, torch.Generator().manual_seed(7))
    c = pgd(model, xt[:20], yt[:20], 0.1, 0.02, 2, torch.Generator().manual_seed(8))
    s1 = train_substitute(x[:100], y[:100], 3, torch.Generator().manual_seed(4))
    s2 = train_substitute(x[:100], y[:100], 3, torch.Generator().manual_seed(4))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert all(torch.equal(p, q) for p, q in zip(s1.parameters(), s2.parameters()))


# ----------------------------------------------------------------------------- strength
def test_pgd_lowers_accuracy_at_least_as_much_as_fgsm(lenet, digits):
    _, _, xt, yt = digits
    clean = accuracy(lenet, xt, yt)
    assert clean > 0.85
    for eps in (0.05, 0.1):
        acc_fgsm = accuracy(lenet, fgsm(lenet, xt, yt, eps), yt)
        acc_pgd = accuracy(lenet, pgd(lenet, xt, yt, eps, eps / 4, 10, torch.Generator().manual_seed(0)), yt)
        print(f"eps {eps}: clean {clean:.3f}, FGSM {acc_fgsm:.3f}, PGD-10 {acc_pgd:.3f}")
        assert acc_pgd <= acc_fgsm < clean - 0.1


def test_substitute_trains_and_its_fgsm_transfers(lenet, digits):
    x, y, xt, yt = digits
    target = train_mlp(x, y, 300, seed=11)
    curve = accuracy_vs_epsilon(target, xt, yt, (0.05, 0.1, 0.2), source=lenet)
    white = accuracy_vs_epsilon(target, xt, yt, (0.2,))
    print("black-box (LeNet substitute -> MLP):", curve, "white-box:", white)
    assert accuracy(lenet, xt, yt) > 0.85 and curve[0.0] > 0.85
    assert curve[0.2] < curve[0.0] - 0.3          # the substitute's perturbations transfer
    assert white[0.2] <= curve[0.2]               # and the white-box attack is at least as strong


def test_accuracy_vs_epsilon_curve(lenet, digits):
    _, _, xt, yt = digits
    curve = accuracy_vs_epsilon(lenet, xt, yt)
    assert list(curve) == [0.0, *CURVE_EPSILONS]
    assert curve[0.0] == accuracy(lenet, xt, yt)
    assert curve[32 / 255] < curve[0.0] - 0.1
    assert all(0.0 <= v <= 1.0 for v in curve.values())


def test_lenet_is_lenet():
    m = LeNet((1, 28, 28), 10)
    assert [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)] == [6, 16]
    assert [l.out_features for l in m.modules() if isinstance(l, nn.Linear)] == [120, 84, 10]
    assert m.classifier[1].in_features == 16 * 5 * 5
    n = sum(p.numel() for p in m.parameters())
    print("LeNet 28x28 parameters:", n)
    assert n == 61706
    assert m(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert LeNet((3, 32, 32), 10)(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert LeNet((1, 8, 8), 10)(torch.rand(2, 1, 8, 8)).shape == (2, 10)


# ----------------------------------------------------------------------------- universal
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_perturbation_generator_output_is_bounded(shape):
    eps = 8 / 255
    torch.manual_seed(0)
    net = PerturbationGenerator(shape, eps)
    convs = [m for m in net.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(convs) == 3 and sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 3
    for z in (torch.rand(4, 100), torch.zeros(2, 100), torch.ones(1, 100), 1e6 * torch.randn(3, 100)):
        d = net(z)
        assert d.shape == (len(z), *shape)
        assert d.abs().max() <= eps
    with pytest.raises(ValueError, match="divisible by 4"):
        PerturbationGenerator((1, 30, 30), eps)


def test_universal_perturbation_lowers_accuracy(lenet, digits):
    _, _, xt, yt = digits
    eps = 0.2
    res = train_universal_perturbation(lenet, xt, yt, eps, 100, torch.Generator().manual_seed(0),
                                       lr=1e-2, record_every=25, objective="untargeted")
    print("untargeted UAP accuracy vs iteration:", res.clean_accuracy, res.history)
    assert [it for it, _ in res.history] == [0, 25, 50, 75, 100]
    assert res.perturbation.shape == (1, 1, 8, 8) and res.perturbation.abs().max() <= eps
    assert res.history[-1][1] < res.history[0][1] - 0.2 and res.history[-1][1] < res.clean_accuracy - 0.3
    # The paper's random-wrong-label objective runs and stays bounded (it is the weaker one).
    res = train_universal_perturbation(lenet, xt[:100], yt[:100], eps, 10, torch.Generator().manual_seed(0),
                                       record_every=5)
    assert [it for it, _ in res.history] == [0, 5, 10] and res.perturbation.abs().max() <= eps
