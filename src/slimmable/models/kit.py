"""Layer kits: which layers a model family is built from.

One architecture file builds every variant (S-Net, US-Net, naive shared-BN baseline) by asking a
kit for its convolutions, linears and norms, as torchvision injects ``norm_layer``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ..layers import (
    SlimmableConv2d,
    SlimmableLinear,
    SwitchableBatchNorm2d,
    USBatchNorm2d,
    USConv2d,
    USLinear,
    make_policy,
)

NORMS = ("switchable", "us", "shared")


@dataclass(frozen=True)
class LayerKit:
    """Factory of slimmable layers for one model.

    - ``widths`` (S-Nets) with ``norm="switchable"``: private BN per width;
    - ``width_range`` (US-Nets) with ``norm="us"``: shared affine, calibrated statistics;
    - ``norm="shared"``: one BN for all widths, the naive baseline of the S-Net paper.
    """

    widths: tuple[float, ...] | None = None
    width_range: tuple[float, float] | None = None
    norm: str = "switchable"
    divisor: int = 8

    def __post_init__(self) -> None:
        make_policy(self.widths, self.width_range)  # validates
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.norm == "switchable" and self.widths is None:
            raise ValueError("switchable BN needs widths=[...]; US models use norm='us'")

    @property
    def _width_kwargs(self) -> dict:
        if self.widths is not None:
            return {"widths": self.widths}
        return {"width_range": self.width_range}

    def conv(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        bias: bool = False,
        *,
        depthwise: bool = False,
        fixed_in: bool = False,
        fixed_out: bool = False,
        ratio: int = 1,
        out_channels_list: Sequence[int] | None = None,
    ) -> nn.Module:
        """A slimmable ``Conv2d`` (``padding`` defaults to ``kernel_size // 2``).

        ``out_channels_list`` (S-Nets only) gives the output channels of each width explicitly,
        for families whose channels are not ``make_divisible(C * w)`` (ShuffleNet).
        """
        cls = SlimmableConv2d if self.widths is not None else USConv2d
        return cls(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            kernel_size // 2 if padding is None else padding,
            groups=groups,
            bias=bias,
            depthwise=depthwise,
            fixed_in=fixed_in,
            fixed_out=fixed_out,
            divisor=self.divisor,
            ratio=ratio,
            out_channels_list=out_channels_list,
            **self._width_kwargs,
        )

    def linear(
        self, in_features: int, out_features: int, bias: bool = True, *, fixed_out: bool = True
    ) -> nn.Module:
        """A slimmable ``Linear``; the classifier's outputs never slim (``fixed_out``)."""
        cls = SlimmableLinear if self.widths is not None else USLinear
        return cls(
            in_features,
            out_features,
            bias,
            fixed_out=fixed_out,
            divisor=self.divisor,
            **self._width_kwargs,
        )

    def bn(
        self,
        num_features: int,
        *,
        ratio: int = 1,
        fixed: bool = False,
        channels_list: Sequence[int] | None = None,
    ) -> nn.Module:
        """The kit's batch norm for a layer of ``num_features`` channels at full width.

        ``channels_list`` matches a conv's ``out_channels_list`` (switchable BN only; the other
        norms read their channels from the input).
        """
        if self.norm == "switchable":
            assert self.widths is not None
            return SwitchableBatchNorm2d(
                num_features,
                self.widths,
                divisor=self.divisor,
                ratio=ratio,
                fixed=fixed,
                channels_list=channels_list,
            )
        return USBatchNorm2d(
            num_features, uncalibrated="running" if self.norm == "shared" else "error"
        )


def make_kit(
    widths: Sequence[float] | None = None,
    width_range: Sequence[float] | None = None,
    norm: str | None = None,
    divisor: int = 8,
) -> LayerKit:
    """A kit from a model factory's keyword arguments (``norm`` follows the kind by default)."""
    if norm is None:
        norm = "switchable" if widths is not None else "us"
    return LayerKit(
        widths=None if widths is None else tuple(sorted(float(w) for w in widths)),
        width_range=None if width_range is None else (float(width_range[0]), float(width_range[1])),
        norm=norm,
        divisor=divisor,
    )
