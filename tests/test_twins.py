"""Every capsule model against its matched non-capsule twin (``--twin``): the two differ only in the
capsule part, which the family names in ``Task.TWIN_PARTS`` (capsgen/train/task.py's contract).

For each family with a twin and each of its presets (and its defaults) the twin's config equals the
capsule model's but for ``twin``; every module outside TWIN_PARTS has the same path, type and
parameter shapes in both; inside them the twin holds no capsule layer; the optimizers and
capabilities are the same; and the parameter counts agree to within the family's stated tolerance.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from capsgen import runs
from capsgen.cli import main
from capsgen.errors import ConfigError
from capsgen.models import FAMILIES
from capsgen.models.poe.nets import PoECapsules
from capsgen.nn.layers import ConvCapsules, DenseCapsules, PrimaryCapsules
from capsgen.nn.trainable_routing import TrainableConvCapsules, TrainableDenseCapsules
from capsgen.nn.variational import VariationalCapsules
from capsgen.train.capabilities import capabilities_of
from capsgen.train.task import DataInfo

# PoECapsules: Hauser's capsule part (primary capsules, W and U with routing) is one module of buffers
CAPSULE_LAYERS = (PrimaryCapsules, DenseCapsules, ConvCapsules, TrainableDenseCapsules, TrainableConvCapsules,
                  VariationalCapsules, PoECapsules)
TWIN_FAMILIES = sorted(name for name, f in FAMILIES.items() if f.config_cls.TWIN)

# Largest |twin / capsule - 1| of the parameter counts per family: the twin replaces each capsule
# layer by a layer of the same width, so the counts differ by biases against couplings, and where
# poses are matrices by the transforms they share (gcapsnet).
PARAM_TOLERANCE = {
    "capsulegan": 0.02,
    # the routed layer's transforms become the Linear weight, plus 160 biases and 170 score weights: +0.004 %
    "capsnet": 1e-4,
    # fc: couplings out, biases in (-0.16 % MNIST, -0.76 % CIFAR-10); the conv preset's 2x4 pose matrices
    # share each 4x4 transform over both rows, which a plain Conv2d of the same width cannot: +9.8 %
    # (capsgen.models.gcapsnet.nets lists every preset's counts)
    "gcapsnet": 0.10,
    # the twin keeps every capsule-model weight (the head is read as one latent, the decoder's first
    # layer is kept) and adds a class head on the head's input and the decoder's condition input:
    # +1.39 % at the defaults, +1.50 % for huang-mnist, +0.81 % for huang-celeba
    "vcaps": 0.016,
    # W, U and the twin's mixture are buffers changed by their own rules (CD, EM), never by an
    # optimiser, so both models' parameters are exactly the autoencoder's (buffer counts in the
    # twin's docstring: W + U 2.95 M, the mixture 1.57 M at the defaults)
    "poe": 0.0,
}


def info_for(family: str, preset: str | None) -> DataInfo:
    """Data facts a family builds itself from; 28x28 grey digits unless the preset needs colour (and
    CelebA's 40 attributes)."""
    celeba = bool(preset and "celeba" in preset)
    shape = (3, 64, 64) if celeba else (3, 32, 32) if preset and "cifar" in preset else (1, 28, 28)
    return DataInfo(name="test", shape=shape, num_classes=10, class_names=[str(i) for i in range(10)],
                    train_size=100, attribute_names=[f"attribute{i}" for i in range(40)] if celeba else None)


def cases() -> list[tuple[str, str | None]]:
    return [(fam, preset) for fam in TWIN_FAMILIES for preset in (None, *FAMILIES[fam].presets)]


def build(family: str, preset: str | None, twin: bool, extra: tuple[str, ...] = ()):
    tcfg, mcfg = runs.make_configs(family, [*extra, *(["model.twin=true"] if twin else [])], preset=preset,
                                   data="mnist-5k")
    return mcfg, runs.build_task(tcfg, mcfg, info_for(family, preset), "cpu")


def tree(module: torch.nn.Module, prefix: str, parts: tuple[str, ...]) -> list[tuple]:
    """(path, type, own parameter and buffer shapes) of every submodule outside ``parts``."""
    rows = []
    for name, m in module.named_modules():
        path = f"{prefix}.{name}" if name else prefix
        if any(path == p or path.startswith(p + ".") for p in parts):
            continue
        own = [(n, tuple(t.shape)) for n, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]]
        rows.append((path, type(m).__name__, tuple(own)))
    return rows


def in_parts(task, parts: tuple[str, ...]) -> list[torch.nn.Module]:
    found = []
    for key, module in task.modules.items():
        for name, m in module.named_modules():
            path = f"{key}.{name}" if name else key
            if path in parts:
                found.append(m)
    return found


def n_params(task) -> int:
    return sum(p.numel() for name, m in task.modules.items() if name != "generator_ema" for p in m.parameters())


def test_some_families_have_twins():
    assert set(TWIN_FAMILIES) == {"capsulegan", "capsnet", "gcapsnet", "vcaps", "poe"}


@pytest.mark.parametrize("family,preset", cases())
def test_twin_differs_from_its_capsule_model_only_in_the_capsule_part(family, preset):
    torch.manual_seed(0)
    cfg, caps = build(family, preset, twin=False)
    try:
        tcfg, twin = build(family, preset, twin=True)
    except ConfigError as exc:   # a preset with no capsules (a CNN baseline) is refused a twin, in one line
        assert "no capsule part" in str(exc) and "\n" not in str(exc), exc
        assert not any(isinstance(m, CAPSULE_LAYERS) for key in caps.modules for m in caps.modules[key].modules())
        return
    assert dataclasses.replace(tcfg, twin=False) == cfg
    parts = type(caps).TWIN_PARTS
    assert parts, f"{family} has a twin but names no TWIN_PARTS"
    assert caps.modules.keys() == twin.modules.keys()
    for key in caps.modules:
        assert tree(caps.modules[key], key, parts) == tree(twin.modules[key], key, parts), key
    caps_parts, twin_parts = in_parts(caps, parts), in_parts(twin, parts)
    assert caps_parts, f"none of {parts} is a module of {family}"
    assert any(isinstance(m, CAPSULE_LAYERS) for p in caps_parts for m in p.modules())
    assert not any(isinstance(m, CAPSULE_LAYERS) for key in twin.modules for m in twin.modules[key].modules())
    assert caps.optimizers.keys() == twin.optimizers.keys()
    # the same capabilities (the explorer's routing maps, which need couplings, may be off in a twin)
    assert capabilities_of(caps) == capabilities_of(twin)
    ratio = n_params(twin) / n_params(caps)
    assert abs(ratio - 1) <= PARAM_TOLERANCE[family], (n_params(twin), n_params(caps))


def test_trunk_hinge_twin_is_the_preset_with_dense_layers_of_the_same_widths():
    _, caps = build("capsulegan", "trunk-hinge", twin=False)
    _, twin = build("capsulegan", "trunk-hinge", twin=True)
    d_caps, d_twin = caps.modules["discriminator"], twin.modules["discriminator"]
    # 8 x 8-D primary capsules on the 7x7 map -> 10 x 16-D: 392 x 8 -> 160 in the twin
    assert (d_twin.caps.linear.in_features, d_twin.caps.linear.out_features) == (392 * 8, 160)
    assert d_caps.caps.weight.shape == (392, 10, 16, 8)
    assert d_twin.primary.conv.weight.shape == d_caps.primary.conv.weight.shape
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    assert d_twin(x).shape == d_caps(x).shape == (4, 1)


def test_twin_trains_samples_and_keeps_twin_in_its_config(tmp_path):
    out = tmp_path / "twin"
    assert main(["train", "capsulegan", "--preset", "trunk-hinge", "--twin", "--data", "digits", "--steps", "3",
                 "--out", str(out), "--no-progress", "--set", "threads=1", "--set", "eval_limit=32",
                 "--set", "eval_n=32", "--set", "n_fixed=16"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["twin"] is True and cfg["model"]["preset"] == "trunk-hinge"
    assert main(["train", "--resume", str(out), "--steps", "4", "--no-progress"]) == 0
    assert main(["sample", str(out), "--n", "8", "--out", str(tmp_path / "s.npz")]) == 0


@pytest.mark.parametrize("args,message", [
    (["dcgan"], "dcgan has no capsule part"),
    (["capsulegan", "--set", "model.d_routing_kind=dynamic"], "conflicts with --twin"),
    (["capsulegan", "--set", "d_routing=2"], "conflicts with --twin"),
])
def test_twin_refusals_are_one_line_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["train", *args[:1], "--twin", *args[1:], "--data", "digits", "--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_set_twin_on_a_family_without_one_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "dcgan", "--set", "model.twin=true", "--data", "digits", "--steps", "1",
                 "--out", str(out)]) == 2
    assert "no capsule part" in capsys.readouterr().err
    assert not out.exists()


def test_resume_refuses_twin_flag(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--twin"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_models_lists_the_twins(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["family"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["capsulegan"]["twin"] and rows["dcgan"]["twin"] is None
