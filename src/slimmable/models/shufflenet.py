"""ShuffleNet v1 with 3 groups (Zhang et al., 2018) as a slimmable network (S-Net).

S-ShuffleNet (Yu et al., ICLR 2019) switches between the paper's 0.5x, 1x and 2x ShuffleNets
(38M, 138M, 524M MACs). Widths here are fractions of the widest network, as everywhere in this
package: our widths 0.25, 0.5, 1.0 are the paper's 0.5x, 1x, 2x (``FULL_SCALE = 2``).

As in the authors' code, each group of a grouped 1x1 convolution is its own conv that slims on
its own (so group ``g`` keeps its first channels at every width), the stem is three convs, and
channel counts are ``int(c * scale)`` rather than multiples of 8. Modules are named as there
(``a``/``b``/``c`` of a unit; their ``a_0`` is our ``a.0``), so their released weights load with
:func:`slimmable.load_official`. Only the S-Net exists: a channel count per group that sums to
the residual stream at every width has no universally slimmable rounding rule.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .helpers import init_weights, stage_ends, with_cfg
from .kit import LayerKit, make_kit
from .official import StateDict, convert_state_dict
from .registry import register_model

# c, n: output channels and units per stage of ShuffleNet 1x, g = 3 (the paper's Table 1);
# each stage starts with a stride-2 unit that concatenates an average-pooled shortcut.
SHUFFLENET_G3_SETTING = [(240, 4), (480, 8), (960, 4)]
STEM_CHANNELS = 24
GROUPS = 3
BOTTLENECK_DIV = 4  # a unit's bottleneck has a quarter of its output channels
FULL_SCALE = 2.0  # width 1.0 is ShuffleNet 2x

RELEASES = "https://github.com/JiahuiYu/slimmable_networks/files"
default_cfgs = {
    "s_shufflenet": {
        "input_size": (3, 224, 224),
        "paper": "Slimmable Neural Networks, ICLR 2019, Table 3 (0.5x, 1x, 2x)",
        "official_url": f"{RELEASES}/2709082/s_shufflenet_0.5_1.0_2.0.pt.zip",
        "top1_err": {1.0: 28.6, 0.5: 34.5, 0.25: 42.8},
        "paper_width_scale": FULL_SCALE,
    },
}


def _split(x: Tensor, groups: int) -> tuple[Tensor, ...]:
    if x.shape[1] % groups:
        raise ValueError(f"{x.shape[1]} channels do not split into {groups} groups")
    return torch.split(x, x.shape[1] // groups, dim=1)


class ShuffleUnit(nn.Module):
    """Grouped 1x1 (``a``, one conv per group), shuffle + 3x3 depthwise (``b``), grouped 1x1
    (``c``); identity shortcut (stride 1) or concatenated 3x3 average pool (stride 2).

    Channel arguments are lists: the channels at each width of the kit, ascending.
    """

    def __init__(
        self,
        kit: LayerKit,
        inp: Sequence[int],
        outp: Sequence[int],
        stride: int,
        groups: int = GROUPS,
        split_input: bool = True,
    ) -> None:
        super().__init__()
        self.groups = groups
        self.stride = stride
        self.residual = stride == 1
        self.split_input = split_input
        branch = list(outp) if self.residual else [o - i for o, i in zip(outp, inp, strict=True)]
        first = [o // BOTTLENECK_DIV // groups for o in outp]
        mid = [groups * f for f in first]
        last = [b // groups for b in branch]
        for name, per_group, total in (("bottleneck", first, mid), ("output", last, branch)):
            bad = [t for p, t in zip(per_group, total, strict=True) if p * groups != t or p == 0]
            if bad:
                raise ValueError(
                    f"ShuffleNet {name} channels {bad} do not split into {groups} groups; "
                    "choose widths whose channel counts divide by the groups"
                )
        a_in = max(inp) // groups if split_input else max(inp)
        self.a = nn.ModuleList(
            nn.Sequential(
                kit.conv(a_in, max(first), 1, out_channels_list=first),
                kit.bn(max(first), channels_list=first),
                nn.ReLU(inplace=True),
            )
            for _ in range(groups)
        )
        self.b = nn.Sequential(
            nn.ChannelShuffle(groups),  # torch's own: extracted networks need nothing else
            kit.conv(max(mid), max(mid), 3, stride, depthwise=True),
            kit.bn(max(mid), channels_list=mid),
        )
        self.c = nn.ModuleList(
            nn.Sequential(
                kit.conv(max(first), max(last), 1, out_channels_list=last),
                kit.bn(max(last), channels_list=last),
            )
            for _ in range(groups)
        )
        self.shortcut_pool = None if self.residual else nn.AvgPool2d(3, 2, 1)
        self.post_relu = nn.ReLU(inplace=True)
        # channels of the unit's output at each width: the branch, plus the pooled input
        pooled = [0] * len(inp) if self.residual else list(inp)
        self.out_channels = [b + p for b, p in zip(branch, pooled, strict=True)]

    def forward(self, x: Tensor) -> Tensor:
        xs = _split(x, self.groups) if self.split_input else (x,) * self.groups
        y = self.b(torch.cat([a(xi) for a, xi in zip(self.a, xs, strict=True)], 1))
        y = torch.cat([c(yi) for c, yi in zip(self.c, _split(y, self.groups), strict=True)], 1)
        if self.shortcut_pool is None:
            return self.post_relu(y + x)
        return torch.cat([self.post_relu(y), self.shortcut_pool(x)], 1)


class ShuffleNet(nn.Module):
    def __init__(
        self,
        kit: LayerKit,
        num_classes: int = 1000,
        in_chans: int = 3,
        setting: Sequence[tuple[int, int]] = SHUFFLENET_G3_SETTING,
        groups: int = GROUPS,
        scale: float = FULL_SCALE,
    ) -> None:
        super().__init__()
        if kit.widths is None:
            raise ValueError(
                "ShuffleNet exists as an S-Net only (widths=[...]); its grouped channels have no "
                "universally slimmable rounding rule"
            )
        self.kit = kit
        widths = kit.widths

        def channels(c: int) -> list[int]:
            return [int(c * scale * w + 1e-9) for w in widths]

        stem = [c // groups for c in channels(STEM_CHANNELS)]
        self.head = nn.ModuleList(
            nn.Sequential(
                kit.conv(in_chans, max(stem), 3, 2, fixed_in=True, out_channels_list=stem),
                kit.bn(max(stem), channels_list=stem),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2),
            )
            for _ in range(groups)
        )
        stream = [groups * s for s in stem]
        units: list[nn.Module] = []
        for stage, (c, n) in enumerate(setting):
            for i in range(n):
                if i == 0:  # the very first unit reads the stem whole: it is too thin to split
                    unit = ShuffleUnit(kit, stream, channels(c), 2, groups, stage > 0)
                else:
                    unit = ShuffleUnit(kit, stream, stream, 1, groups)
                units.append(unit)
                stream = unit.out_channels
        self.features = nn.Sequential(*units)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(kit.linear(max(stream), num_classes))
        init_weights(self)
        self.is_official_layout = tuple(setting) == tuple(SHUFFLENET_G3_SETTING) and (
            groups,
            scale,
            in_chans,
        ) == (GROUPS, FULL_SCALE, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.cat([head(x) for head in self.head], 1)
        return self.classifier(self.pool(self.features(x)).flatten(1))

    def channel_groups(self) -> list[list[str]]:
        """The stem and every unit's ``c`` convs write one concatenated, residual stream, so
        they share a width; the ``a`` convs of a unit share one (their output is shuffled)."""
        stream = [f"head.{g}.0" for g in range(len(self.head))]
        bottlenecks = []
        for i, unit in enumerate(self.features):
            stream += [f"features.{i}.c.{g}.0" for g in range(unit.groups)]
            bottlenecks.append([f"features.{i}.a.{g}.0" for g in range(unit.groups)])
        return [stream, *bottlenecks]

    def feature_stages(self) -> list[str]:
        """The last unit of each stage (strides 8, 16, 32). The stem's three parallel convs
        are concatenated in ``forward``, by no module, so it is no stage."""
        return stage_ends((f"features.{i}", u.stride) for i, u in enumerate(self.features))

    def official_state_dict(
        self, state_dict: StateDict, widths: Sequence[float] | None = None
    ) -> StateDict:
        return checkpoint_filter_fn(state_dict, self, widths)


_OURS = re.compile(r"(^|\.)(head|a|c)\.(\d+)(?=\.|$)")


def official_name(name: str) -> str:
    """The authors' name of one of our ShuffleNet modules: ``features.3.a.0`` -> ``...a_0``."""
    return _OURS.sub(r"\1\2_\3", name)


def checkpoint_filter_fn(
    state_dict: StateDict, model: ShuffleNet, widths: Sequence[float] | None = None
) -> StateDict:
    """The authors' S-ShuffleNet state dict as ours (``head_0``/``a_0``/``c_0`` renamed)."""
    if not model.is_official_layout:
        raise ValueError("the authors' checkpoints fit only the ImageNet ShuffleNet g=3 at 2x")
    return convert_state_dict(state_dict, model, model_name="s_shufflenet", rename=official_name)


@register_model
def s_shufflenet(
    num_classes: int = 1000,
    in_chans: int = 3,
    widths: Sequence[float] = (0.25, 0.5, 1.0),
    norm: str = "switchable",
) -> ShuffleNet:
    """S-ShuffleNet: slimmable ShuffleNet v1 (g=3) with switchable BN (Yu et al., ICLR 2019).

    Widths are fractions of ShuffleNet 2x: the default 0.25, 0.5, 1.0 are the paper's 0.5x, 1x,
    2x.
    """
    model = ShuffleNet(make_kit(widths=widths, norm=norm), num_classes, in_chans)
    return with_cfg(model, **default_cfgs["s_shufflenet"])
