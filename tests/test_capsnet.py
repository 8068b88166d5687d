"""The CapsNet classifier: shapes, loss, masking, augmentation, learning, figures."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from capsgen.data.batch import Batch
from capsgen.models.capsnet.config import CapsNetConfig
from capsgen.models.capsnet.nets import CapsNet, capsnet_loss
from capsgen.models.capsnet.task import CapsNetTask
from capsgen.models.common import random_shift
from capsgen.nn import margin_loss, safe_norm
from capsgen.train.loop import step_generator
from capsgen.train.task import DataInfo, StepContext

TINY = CapsNetConfig(conv_channels=16, conv_kernel=3, primary_capsules=4, primary_kernel=3,
                     class_dim=8, decoder_hidden=(32, 64), shift_pixels=1)


def test_paper_architecture_shapes_mnist_and_cifar():
    torch.manual_seed(0)
    for shape, n_primary in (((1, 28, 28), 32 * 6 * 6), ((3, 32, 32), 32 * 8 * 8)):
        model = CapsNet(CapsNetConfig(), shape, 10)
        assert model.num_primary == n_primary
        x = torch.rand(2, *shape)
        poses = model(x)
        assert poses.shape == (2, 10, 16)
        assert (safe_norm(poses) < 1).all()
        assert model.decode(poses, torch.tensor([1, 2])).shape == (2, *shape)
    # Sabour et al.: 8.2M parameters for MNIST with the decoder (6.8M without)
    n = sum(p.numel() for p in CapsNet(CapsNetConfig(), (1, 28, 28), 10).parameters())
    assert 8.1e6 < n < 8.3e6


def test_loss_is_margin_plus_scaled_sum_squared_error():
    torch.manual_seed(0)
    model = CapsNet(TINY, (1, 8, 8), 10)
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 10, (5,))
    loss, parts = capsnet_loss(model, x, y)
    poses = model(x)
    recon = model.decode(poses, y)
    expected = margin_loss(safe_norm(poses), y) + 0.0005 * ((recon - x) ** 2).sum() / 5
    assert torch.allclose(loss, expected)


def test_decoder_sees_only_the_masked_capsule():
    torch.manual_seed(0)
    model = CapsNet(TINY, (1, 8, 8), 10)
    poses = torch.randn(3, 10, 8)
    mask = torch.tensor([0, 4, 9])
    other = poses.clone()
    for b, c in enumerate(mask):
        keep = other[b, c].clone()
        other[b] = torch.randn(10, 8)
        other[b, c] = keep
    assert torch.allclose(model.decode(poses, mask), model.decode(other, mask))


def test_random_shift_moves_content_within_bounds_and_zero_fills():
    x = torch.zeros(64, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    pos = out[:, 0].flatten(1).argmax(1)
    rows, cols = pos // 9, pos % 9
    assert out.sum() == 64                      # nothing lost, nothing invented
    assert ((rows - 4).abs() <= 2).all() and ((cols - 4).abs() <= 2).all()
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 5   # shifts vary per image
    # the same generator seed gives the same shifts (resume determinism)
    assert torch.equal(out, random_shift(x, 2, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("twin", [False, True])   # the twin (tests/test_capsnet_twin.py) as well
def test_task_learns_on_digits_and_writes_perturbation_figure(tmp_path, twin):
    from capsgen.data import load_split

    train, test = load_split("digits", "train"), load_split("digits", "test")
    xs, ys = train.to_tensors()
    xt, yt = test.to_tensors()
    torch.manual_seed(0)
    # A tiny CapsNet starts slowly (short votes => |v| ~ |s|^2), so a larger step size here.
    cfg = CapsNetConfig(**{**TINY.__dict__, "lr": 1e-2, "twin": twin})
    task = CapsNetTask(cfg, DataInfo("digits", (1, 8, 8), 10, None, len(xs)), torch.device("cpu"))
    before = task.evaluate(Batch(xt, yt))["test_error"]
    for step in range(150):
        idx = torch.randint(0, len(xs), (32,), generator=torch.Generator().manual_seed(step))
        task.train_step(Batch(xs[idx], ys[idx]), StepContext(step, 0.0, 40, step_generator(0, step)))
    with torch.no_grad():
        after = task.evaluate(Batch(xt, yt))["test_error"]
    assert after < 0.5 < before
    paths = task.write_figures(tmp_path, Batch(xt, yt))
    pert = [p for p in paths if p.name.startswith("perturbation")]
    assert len(pert) == 3
    img = Image.open(pert[0])
    # D = 8 rows of 11 steps, 8x8 images with 2 px padding, scaled x2
    assert img.size == (2 * (11 * 10 + 2), 2 * (8 * 10 + 2))
