"""Building blocks: layers that run on a prefix of their channels, exactly like torch's own."""

from .base import WidthMixin, make_policy
from .channels import make_divisible, scale_channels
from .conv import SlimmableConv2d, USConv2d
from .layout import ChannelLayout, ChannelSegment
from .linear import SlimmableLinear, USLinear
from .norm import (
    SlimmableGroupNorm,
    SlimmableLayerNorm,
    SwitchableBatchNorm2d,
    USBatchNorm2d,
    describe_key,
    width_key,
)
from .slicing import Frozen, SliceMemo, freeze, is_frozen
from .width_policy import WidthList, WidthPolicy, WidthRange

__all__ = [
    "ChannelLayout",
    "ChannelSegment",
    "Frozen",
    "SliceMemo",
    "SlimmableConv2d",
    "SlimmableGroupNorm",
    "SlimmableLayerNorm",
    "SlimmableLinear",
    "SwitchableBatchNorm2d",
    "USBatchNorm2d",
    "USConv2d",
    "USLinear",
    "WidthList",
    "WidthMixin",
    "WidthPolicy",
    "WidthRange",
    "describe_key",
    "freeze",
    "is_frozen",
    "make_divisible",
    "make_policy",
    "scale_channels",
    "width_key",
]
