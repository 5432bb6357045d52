"""Other libraries' model definitions (pure torch), converted: the real test of the converter.

EfficientNet from ``efficientnet_pytorch`` (Conv2d subclasses with 'same' padding in their own
forward, a custom autograd swish, squeeze-excitation) and MONAI's networks (DenseNet
concatenations, SE-ResNet, a U-Net with transposed convolutions and instance norm, SegResNet's
group norms) all convert, compute the original's outputs at full width, and extract exactly.
"""

import pytest
import torch
from efficientnet_pytorch import EfficientNet
from monai.networks import nets

import slimmable
from slimmable.export import max_difference, slimmable_leftovers

MODELS = {
    "efficientnet_pytorch-b0-static": (
        lambda: EfficientNet.from_name("efficientnet-b0", num_classes=10, image_size=32),
        (3, 32, 32),
    ),
    "efficientnet_pytorch-b0-dynamic": (
        lambda: EfficientNet.from_name("efficientnet-b0", num_classes=10),
        (3, 32, 32),
    ),
    "monai-densenet121": (
        lambda: nets.DenseNet121(spatial_dims=2, in_channels=3, out_channels=10),
        (3, 32, 32),
    ),
    "monai-resnet18": (
        lambda: nets.resnet18(spatial_dims=2, n_input_channels=3, num_classes=10),
        (3, 32, 32),
    ),
    "monai-basicunet": (
        lambda: nets.BasicUNet(
            spatial_dims=2, in_channels=3, out_channels=2, features=(8, 8, 16, 32, 64, 8)
        ),
        (3, 32, 32),
    ),
    "monai-segresnet": (
        lambda: nets.SegResNet(spatial_dims=2, in_channels=3, out_channels=2, init_filters=8),
        (3, 32, 32),
    ),
}


def assert_close(a, b):
    diff, scale = max_difference(a, b)
    assert diff <= 1e-5 * max(1.0, scale), diff


@pytest.mark.parametrize("name", list(MODELS))
def test_third_party_models_convert_exactly(name):
    factory, size = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(x)
    slimmable.convert(model, x, width_range=(0.25, 1.0))
    with torch.no_grad():
        assert_close(model(x), reference)
    slimmable.calibrate(model, [x], widths=[0.5])
    net = slimmable.extract_subnet(model, 0.5, input_size=size)
    assert slimmable_leftovers(net) == []
    with torch.no_grad(), slimmable.set_width(model, 0.5):
        assert_close(net(x), model(x))
    full, half = (r.macs for r in slimmable.profile(model, size, [1.0, 0.5]).widths)
    assert half < full
