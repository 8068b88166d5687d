"""ConvTwin (capsgen.nn.twins_conv): the conv twin of a convolutional capsule layer keeps its grid
layout, kernel, stride and width, and is exactly one Conv2d + LeakyReLU over the grid's channels."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from capsgen.nn.trainable_routing import TrainableConvCapsules
from capsgen.nn.twins import TWIN_SLOPE
from capsgen.nn.twins_conv import ConvTwin


def test_conv_twin_is_one_convolution_over_the_grid_channels_in_primary_capsule_order():
    torch.manual_seed(0)
    twin = ConvTwin(3, 4, 5, 2, kernel_size=3, stride=2, padding=1).double()
    x = torch.randn(2, 3, 7, 7, 4, dtype=torch.float64)
    # capsule c's pose entry d is channel c * 4 + d, on the way in and on the way out
    planes = x.permute(0, 1, 4, 2, 3).reshape(2, 12, 7, 7)
    y = F.leaky_relu(F.conv2d(planes, twin.conv.weight, twin.conv.bias, stride=2, padding=1), TWIN_SLOPE)
    out = twin(x)
    assert out.shape == (2, 5, 4, 4, 2)
    torch.testing.assert_close(out[:, 3, 1, 2, 1], y[:, 3 * 2 + 1, 1, 2])
    torch.testing.assert_close(out, y.view(2, 5, 2, 4, 4).permute(0, 1, 3, 4, 2))
    flat = ConvTwin(3, 4, 5, 2, kernel_size=3, stride=2, padding=1, activation=False).double()
    flat.load_state_dict(twin.state_dict())
    assert (flat(x) < 0).any() and torch.equal(F.leaky_relu(flat(x), TWIN_SLOPE), out)


@pytest.mark.parametrize("pose_rows", [1, 2])
def test_conv_twin_has_the_grid_of_the_capsule_layer_and_p_squared_its_transform_weights(pose_rows):
    caps = TrainableConvCapsules(4, 8, 6, 8, kernel_size=3, stride=2, pose_rows=pose_rows)
    twin = ConvTwin(4, 8, 6, 8, kernel_size=3, stride=2)
    x = torch.rand(2, 4, 9, 9, 8)
    assert twin(x).shape == caps(x).shape == (2, 6, 4, 4, 8)
    # p-row pose matrices share each (8/p) x (8/p) transform over the p rows; a convolution cannot
    assert twin.conv.weight.numel() == pose_rows ** 2 * caps.weight.numel()


def test_conv_twin_refuses_a_grid_of_the_wrong_layout():
    with pytest.raises(ValueError, match=r"ConvTwin expects \[B, 3, H, W, 4\]"):
        ConvTwin(3, 4, 5, 2)(torch.rand(2, 4, 7, 7, 3))
