"""A feature pyramid neck (Lin et al., 2017) from injected layers: slimmable or plain torch.

Built from a :class:`~slimmable.models.kit.LayerKit` (``FPN.slimmable(kit, ...)``), its channels
slim with the backbone's width (the laterals are summed, so they share one width: see
:meth:`FPN.channel_groups`); with ``fixed_out=True`` its inputs slim and its outputs stay whole
for a head of fixed width. Built from torch's layers (``FPN.plain(...)``) it is what a head reads
behind :class:`~slimmable.models.features.PadToFullWidth`, the authors' detection recipe.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .kit import LayerKit

# (in_channels, out_channels, kernel_size) -> a convolution with "same" padding
ConvFactory = Callable[[int, int, int], nn.Module]
NormFactory = Callable[[int], nn.Module]


def plain_conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    """Torch's ``nn.Conv2d`` with bias and "same" padding (the FPN paper's convolutions)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


class FPN(nn.Module):
    """Top-down feature pyramid over backbone maps ordered fine to coarse.

    A 1x1 lateral (+ norm) maps each level to ``channels``; from the coarsest level down, the
    merged map is upsampled (nearest) and added to the next lateral; each level listed in
    ``outputs`` (default: all) gets a 3x3 conv (+ norm + ReLU when a norm is given).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        conv: ConvFactory = plain_conv,
        norm: NormFactory | None = None,
        outputs: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.outputs = list(range(len(in_channels)) if outputs is None else outputs)
        if not self.outputs or any(not 0 <= i < len(in_channels) for i in self.outputs):
            raise ValueError(f"FPN outputs {self.outputs} must index its {len(in_channels)} levels")

        def block(cin: int, kernel: int, act: bool) -> nn.Sequential:
            layers = [conv(cin, channels, kernel)]
            if norm is not None:
                layers.append(norm(channels))
                if act:
                    layers.append(nn.ReLU(inplace=True))
            return nn.Sequential(*layers)

        self.laterals = nn.ModuleList(block(c, 1, act=False) for c in in_channels)
        self.smooth = nn.ModuleList(block(channels, 3, act=True) for _ in self.outputs)
        self.channels = channels

    @classmethod
    def slimmable(
        cls,
        kit: LayerKit,
        in_channels: Sequence[int],
        channels: int,
        *,
        fixed_out: bool = False,
        norm: bool = True,
        outputs: Sequence[int] | None = None,
    ) -> FPN:
        """An FPN of the kit's layers: its channels slim with the width (``fixed_out``: only
        the inputs do, and every output keeps ``channels``)."""
        conv = functools.partial(_kit_conv, kit, fixed_out=fixed_out)
        bn = functools.partial(kit.bn, fixed=fixed_out) if norm else None
        return cls(in_channels, channels, conv, bn, outputs)

    @classmethod
    def plain(
        cls, in_channels: Sequence[int], channels: int, outputs: Sequence[int] | None = None
    ) -> FPN:
        """An FPN of torch's layers without norm (as torchvision's and Detectron's)."""
        return cls(in_channels, channels, plain_conv, None, outputs)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.laterals):
            raise ValueError(f"FPN takes {len(self.laterals)} feature maps, got {len(features)}")
        x = self.laterals[-1](features[-1])
        merged = [x]
        for lateral, f in zip(reversed(self.laterals[:-1]), reversed(features[:-1]), strict=True):
            x = lateral(f) + F.interpolate(x, size=f.shape[-2:], mode="nearest")
            merged.append(x)
        merged.reverse()
        return [smooth(merged[i]) for i, smooth in zip(self.outputs, self.smooth, strict=True)]

    def channel_groups(self) -> list[list[str]]:
        """The laterals are summed: their convs share one width."""
        return [[f"laterals.{i}.0" for i in range(len(self.laterals))]]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, outputs={self.outputs}"


def _kit_conv(kit: LayerKit, cin: int, cout: int, kernel: int, *, fixed_out: bool) -> nn.Module:
    return kit.conv(cin, cout, kernel, fixed_out=fixed_out)


__all__ = ["FPN", "plain_conv"]
