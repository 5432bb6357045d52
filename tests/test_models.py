"""The model zoo: every registered model builds, runs at its widths, and declares its ties."""

from __future__ import annotations

import functools
import random

import pytest
import torch
from torch import nn

from slimmable import (
    calibrate,
    create_model,
    list_models,
    set_width,
    width_bounds,
    width_choices,
    width_knobs,
)
from slimmable.models import make_kit, model_factory
from slimmable.models.shufflenet import ShuffleNet

pytestmark = pytest.mark.usefixtures("one_thread")


FAMILIES = [
    "s_mobilenet_v1",
    "s_mobilenet_v2",
    "s_shufflenet",
    "s_resnet18",
    "s_resnet34",
    "s_resnet50",
    "s_resnet101",
    "s_resnet152",
    "us_mobilenet_v1",
    "us_mobilenet_v2",
    "s_mnasnet",
    "us_mnasnet",
    "us_resnet18",
    "us_resnet34",
    "us_resnet50",
    "us_resnet101",
    "us_resnet152",
    "s_resnet20",
    "us_resnet20",
    "s_mobilenet_v2_cifar",
    "us_mobilenet_v2_cifar",
    "s_small_cnn",
    "us_small_cnn",
]


@functools.cache
def built(name: str) -> nn.Module:
    """One instance per model for the whole module (building ResNet-152 takes a while)."""
    torch.manual_seed(0)
    return create_model(name, num_classes=7)


def small_input(model: nn.Module) -> torch.Tensor:
    """Two images at the model's own size, or 32x32 for the ImageNet models."""
    c, h, _ = model.default_cfg["input_size"]
    side = min(h, 32)
    return torch.randn(2, c, side, side, generator=torch.Generator().manual_seed(1))


def test_registry_lists_the_zoo():
    assert set(FAMILIES) <= set(list_models())
    assert list_models("s_resnet*") == [
        "s_resnet101",
        "s_resnet152",
        "s_resnet18",
        "s_resnet20",
        "s_resnet34",
        "s_resnet50",
    ]


@pytest.mark.parametrize(
    ("name", "widths"),
    [
        ("s_mobilenet_v1", (0.25, 0.5, 0.75, 1.0)),
        ("s_mobilenet_v2", (0.35, 0.5, 0.75, 1.0)),
        ("s_shufflenet", (0.25, 0.5, 1.0)),
        ("s_resnet50", (0.25, 0.5, 0.75, 1.0)),
        ("s_mnasnet", (0.35, 0.5, 0.75, 1.0)),
    ],
)
def test_s_models_default_to_the_papers_widths(name, widths):
    assert width_choices(create_model(name, num_classes=3)) == widths


@pytest.mark.parametrize(
    ("name", "bounds"), [("us_mobilenet_v1", (0.25, 1.0)), ("us_mobilenet_v2", (0.35, 1.0))]
)
def test_us_models_default_to_the_papers_range(name, bounds):
    model = create_model(name, num_classes=3)
    assert width_choices(model) is None
    assert width_bounds(model) == bounds


def test_factories_take_widths_and_width_range():
    s = create_model("s_resnet18", num_classes=3, widths=[0.5, 1.0], norm="shared")
    assert width_choices(s) == (0.5, 1.0)
    us = create_model("us_mobilenet_v2", num_classes=3, width_range=(0.5, 0.9))
    assert width_bounds(us) == (0.5, 0.9)
    with pytest.raises(ValueError, match="S-Net only"):
        ShuffleNet(make_kit(width_range=(0.25, 1.0)), num_classes=3)


def test_cifar_models_default_to_ten_classes():
    for name in ("s_resnet20", "us_resnet20", "s_mobilenet_v2_cifar", "us_mobilenet_v2_cifar"):
        model = model_factory(name)()
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def _test_widths(model: nn.Module) -> list[float]:
    choices = width_choices(model)
    if choices is not None:
        return list(choices)
    lo, hi = width_bounds(model)
    return [lo, round((lo + hi) / 2, 3), hi]


@pytest.mark.parametrize("name", FAMILIES)
def test_model_runs_at_its_widths(name):
    """S-Nets in training mode (BN on batch statistics); US-Nets in eval mode after
    calibrating their BN statistics at those widths."""
    model = built(name)
    x = small_input(model)
    widths = _test_widths(model)
    if width_choices(model) is None:
        calibrate(model, [x], widths)
        model.eval()
    else:
        model.train()
    outputs = []
    with torch.no_grad():
        for w in widths:
            with set_width(model, w):
                y = model(x)
            assert y.shape == (2, 7)
            assert torch.isfinite(y).all()
            outputs.append(y)
    # Different widths are different networks.
    assert not torch.allclose(outputs[0], outputs[-1])


def test_train_step_reaches_every_width():
    model = create_model("s_mobilenet_v2_cifar", num_classes=4)
    x, target = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    model.zero_grad()
    for w in (0.35, 1.0):
        with set_width(model, w):
            nn.functional.cross_entropy(model(x), target).backward()
    # both ends of the shared weight of the stem were trained
    grad = model.features[0][0].weight.grad
    assert grad[:16].abs().sum() > 0 and grad[16:].abs().sum() > 0


def _choices(model: nn.Module) -> list[float]:
    choices = width_choices(model)
    return list(choices) if choices is not None else [width_bounds(model)[0], 0.6, 1.0]


@pytest.mark.parametrize("name", FAMILIES)
def test_per_group_width_map_runs(name):
    """Each channel group (and every free knob) at its own width: the network still runs."""
    model = built(name)
    groups = model.channel_groups()
    knobs = set(width_knobs(model))
    tied = [n for g in groups for n in g]
    assert set(tied) <= knobs, "channel_groups names layers that are no width knobs"
    assert len(tied) == len(set(tied)), "a layer is in two channel groups"
    rng = random.Random(name)
    x = small_input(model)
    model.train()
    for _ in range(2):
        per_layer: dict[str, float] = {}
        for group in groups:
            per_layer.update(dict.fromkeys(group, rng.choice(_choices(model))))
        for knob in knobs - set(tied):
            per_layer[knob] = rng.choice(_choices(model))
        with torch.no_grad(), set_width(model, per_layer):
            assert model(x).shape == (2, 7)


@pytest.mark.parametrize(
    "name",
    ["s_mobilenet_v2", "s_shufflenet", "s_resnet18", "us_resnet50", "us_resnet20", "us_mnasnet"],
)
def test_channel_groups_are_real_ties(name):
    """Breaking a group (one member at another width) breaks the forward, and set_width says
    so before anything runs."""
    model = built(name)
    x = small_input(model)
    lo, hi = _choices(model)[0], _choices(model)[-1]
    model.train()
    knobs = width_knobs(model)
    groups = model.channel_groups()
    assert groups, f"{name} has residual sums but declares no channel groups"
    for group in groups:
        with pytest.raises(ValueError, match="share their channels"):
            set_width(model, {group[0]: lo, "*": hi})
        knobs[group[-1]].width = lo  # bypass set_width's check
        try:
            with pytest.raises((RuntimeError, ValueError)), torch.no_grad():
                model(x)
        finally:
            knobs[group[-1]].width = hi


def test_no_residual_no_groups():
    assert built("s_mobilenet_v1").channel_groups() == []
    assert built("s_small_cnn").channel_groups() == []


def test_resnet_groups_follow_the_stages():
    groups = built("s_resnet50").channel_groups()
    assert [len(g) for g in groups] == [4, 5, 7, 4]  # shortcut + every block's output conv
    assert groups[0][:2] == ["features.1.shortcut.0", "features.1.body.6"]
    basic = built("s_resnet18").channel_groups()
    assert basic[0] == ["features.0.0", "features.1.body.3", "features.2.body.3"]


def test_mobilenet_v2_groups_are_residual_stages():
    groups = built("s_mobilenet_v2").channel_groups()
    # stages with repeats: 24 (2), 32 (3), 64 (4), 96 (3), 160 (3)
    assert [len(g) for g in groups] == [2, 3, 4, 3, 3]
    assert groups[0] == ["features.2.body.6", "features.3.body.6"]


def test_mnasnet_groups_are_residual_stages():
    groups = built("s_mnasnet").channel_groups()
    # stages with repeats: 24 (3), 40 (3), 80 (3), 96 (2), 192 (4)
    assert [len(g) for g in groups] == [3, 3, 3, 2, 4]
    assert groups[0] == ["features.2.body.6", "features.3.body.6", "features.4.body.6"]


def test_expansion_channels_stay_multiples_of_the_ratio():
    model = create_model("us_mobilenet_v2", num_classes=3)
    expand = model.features[2].body[0]
    for w in (0.35, 0.41, 0.5, 0.77, 1.0):
        assert expand.channels_at(w) % 6 == 0
        assert expand.channels_at(w) <= expand.out_channels


def test_shufflenet_rejects_widths_that_do_not_split():
    with pytest.raises(ValueError, match="do not split into 3 groups"):
        create_model("s_shufflenet", num_classes=3, widths=[0.255, 1.0])
