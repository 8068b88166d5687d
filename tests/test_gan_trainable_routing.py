"""Trainable routing (Chen et al., G-CapsNets) in the CapsuleGAN discriminator:
``model.d_routing_kind=trainable`` swaps routing by agreement for learnt couplings, and nothing else."""
from __future__ import annotations

import pytest
import torch

from capsgen.cli import main
from capsgen.config import check_config
from capsgen.errors import ConfigError
from capsgen.models.gan.config import CapsuleGANConfig, DCGANConfig
from capsgen.models.gan.nets import CapsuleDiscriminator
from capsgen.models.gan.task import build_discriminator
from capsgen.nn import DenseCapsules
from capsgen.nn.trainable_routing import ROUTINGS, TrainableDenseCapsules
from capsgen.runs import make_configs
from capsgen.train.checkpoint import read_checkpoint
from tests.reference_capsules import ref_frozen_routing, ref_votes
from tests.test_gan_train import TINY_GAN

SMALL = dict(conv_channels=4, conv_kernel=3, activation="relu", primary_caps=2, primary_dim=4,
             primary_kernel=3, primary_stride=2, out_dim=3, init_std=0.3)   # 8x8 input -> 2 x 2x2 primaries


def test_config_default_choices_and_ineffective_fields():
    assert CapsuleGANConfig().d_routing_kind == "dynamic" and DCGANConfig().d_routing_kind == "dynamic"
    from capsgen.models.gan import config as gan_config

    assert gan_config.ROUTINGS == ROUTINGS          # the torch-free copy agrees with capsgen.nn
    with pytest.raises(ConfigError, match="d_routing_kind"):
        check_config(CapsuleGANConfig(d_routing_kind="em"), "model")
    # iterations mean nothing to trainable routing: setting them is refused with the reason
    with pytest.raises(ConfigError, match="trainable routing"):
        make_configs("capsulegan", ["model.discriminator=caps2", "model.d_routing_kind=trainable",
                                    "model.d_routing=5"])
    make_configs("capsulegan", ["model.discriminator=caps2", "model.d_routing=5"])   # dynamic: fine


@pytest.mark.parametrize("disc,k", [("caps1", 1), ("caps2", 2), ("caps-dense", 1)])
def test_build_discriminator_picks_the_routing(disc, k):
    torch.manual_seed(0)
    for kind, cls in (("dynamic", DenseCapsules), ("trainable", TrainableDenseCapsules)):
        cfg = CapsuleGANConfig(discriminator=disc, d_routing_kind=kind, objective="bce" if disc == "caps-dense"
                               else "margin")
        d = build_discriminator(cfg, (1, 28, 28))
        assert isinstance(d.caps, cls)
        out = d(torch.rand(2, 1, 28, 28) * 2 - 1)
        assert out.shape == (2, k)
        if d.kind == "length":
            assert (out >= 0).all() and (out < 1).all()
    # the same number of transforms; trainable routing adds one coupling per (primary, parent)
    dyn = build_discriminator(CapsuleGANConfig(discriminator=disc), (1, 28, 28))
    tr = build_discriminator(CapsuleGANConfig(discriminator=disc, d_routing_kind="trainable"), (1, 28, 28))
    extra = sum(p.numel() for p in tr.parameters()) - sum(p.numel() for p in dyn.parameters())
    assert extra == tr.caps.coupling.numel() == dyn.num_primary * tr.caps.weight.shape[1]


def _ref_capsules(d: CapsuleDiscriminator, x: torch.Tensor) -> torch.Tensor:
    """Output capsules by loops: votes W_ij u_i, s_j = sum_i c_ij u_hat_{j|i}, Sabour's squash."""
    u = d.primary(d.act(d.conv(x)))
    u_hat = ref_votes(u, d.caps.weight)
    c = d.caps.coupling.unsqueeze(0).expand(len(x), -1, -1)
    return ref_frozen_routing(u_hat, c)


@pytest.mark.parametrize("out_caps,head", [(1, "length"), (2, "length"), (3, "dense")])
def test_trainable_discriminator_matches_the_loop_reference(out_caps, head):
    torch.manual_seed(1)
    d = CapsuleDiscriminator((1, 8, 8), out_caps=out_caps, head=head, dense=5, routing="trainable", **SMALL)
    with torch.no_grad():
        d.caps.coupling.uniform_(-1, 2)             # away from the uniform start, signs included
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(d.capsules(x), _ref_capsules(d, x), rtol=1e-5, atol=1e-6)


def test_gradients_of_the_couplings_and_transforms():
    torch.manual_seed(2)
    d = CapsuleDiscriminator((1, 8, 8), out_caps=2, head="length", routing="trainable", **SMALL).double()
    x = (torch.rand(2, 1, 8, 8, dtype=torch.float64) * 2 - 1)
    u = d.primary(d.act(d.conv(x))).detach()
    coupling = d.caps.coupling.detach().clone().requires_grad_(True)
    weight = d.caps.weight.detach().clone().requires_grad_(True)

    def layer(c, w):
        return torch.func.functional_call(d.caps, {"coupling": c, "weight": w}, (u,))

    assert torch.autograd.gradcheck(layer, (coupling, weight))
    # and the layer's gradients are those of the loop reference
    out = torch.func.functional_call(d.caps, {"coupling": coupling, "weight": weight}, (u,))
    ref = ref_frozen_routing(ref_votes(u, weight), coupling.unsqueeze(0).expand(2, -1, -1))
    g = torch.randn_like(out)
    got = torch.autograd.grad((out * g).sum(), (coupling, weight))
    want = torch.autograd.grad((ref * g).sum(), (coupling, weight))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_one_capsule_starts_where_dynamic_routing_is_and_then_differs():
    # One parent: dynamic routing's coupling is 1 forever; trainable routing's starts at 1/J = 1
    # (same output for the same transforms) but is a parameter the discriminator learns.
    torch.manual_seed(3)
    dyn = CapsuleDiscriminator((1, 8, 8), out_caps=1, head="length", **SMALL)
    tr = CapsuleDiscriminator((1, 8, 8), out_caps=1, head="length", routing="trainable", **SMALL)
    tr.load_state_dict({**dyn.state_dict(), "caps.coupling": torch.ones(dyn.num_primary, 1)})
    assert torch.equal(tr.caps.coupling, torch.ones(dyn.num_primary, 1))
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(tr(x), dyn(x), rtol=1e-5, atol=1e-7)
    tr(x).sum().backward()
    assert tr.caps.coupling.grad is not None and tr.caps.coupling.grad.abs().sum() > 0
    with torch.no_grad():
        tr.caps.coupling[0] = 3.0
    assert not torch.allclose(tr(x), dyn(x))


def test_a_capsulegan_step_learns_the_couplings():
    from capsgen.data.batch import Batch
    from capsgen.models.gan.task import GANTask
    from capsgen.train.task import DataInfo, StepContext

    torch.manual_seed(0)
    cfg = CapsuleGANConfig(discriminator="caps2", d_routing_kind="trainable", g_width=8, d_conv_channels=4,
                           d_conv_kernel=3, d_primary_caps=2, d_primary_kernel=3, n_fixed=4, lr_d=1e-2)
    task = GANTask(cfg, DataInfo("t", (1, 8, 8), None, None, 32), torch.device("cpu"))
    start = task.D.caps.coupling.detach().clone()
    assert torch.equal(start, torch.full_like(start, 0.5))          # 1/J, J = 2
    for step in range(2):
        figures = task.train_step(Batch(torch.rand(8, 1, 8, 8)), StepContext(step, 0.0, 4, torch.Generator()))
        assert all(torch.isfinite(torch.tensor(v)) for v in figures.values())
    assert not torch.allclose(task.D.caps.coupling, start)


@pytest.mark.slow
def test_capsulegan_trains_and_resumes_with_trainable_routing(tmp_path):
    args = ["train", "capsulegan", "--data", "digits", "--seed", "0", *TINY_GAN, "--set", "discriminator=caps2",
            "--set", "d_routing_kind=trainable", "--set", "checkpoint_every=2", "--batch-size", "16"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main([*args, "--steps", "4", "--out", str(full)]) == 0
    assert main([*args, "--steps", "2", "--out", str(part)]) == 0
    assert main(["train", "--resume", str(part), "--steps", "4", "--no-progress"]) == 0
    a, _ = read_checkpoint(full / "checkpoints" / "last.safetensors")
    b, _ = read_checkpoint(part / "checkpoints" / "last.safetensors")
    key = next(k for k in a if k.endswith("caps.coupling") and "discriminator" in k)
    assert not torch.allclose(a[key], torch.full_like(a[key], 0.5))    # the couplings learnt (start 1/J)
    for k in a:
        assert torch.equal(a[k], b[k]), k
