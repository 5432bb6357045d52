"""Building blocks: layers that run on a prefix of their channels, exactly like torch's own."""

from .base import WidthMixin, make_policy
from .channels import make_divisible, scale_channels
from .conv import SlimmableConv2d, USConv2d
from .linear import SlimmableLinear, USLinear
from .norm import SwitchableBatchNorm2d, USBatchNorm2d, describe_key, width_key
from .slicing import SliceCache
from .width_policy import WidthList, WidthPolicy, WidthRange

__all__ = [
    "SliceCache",
    "SlimmableConv2d",
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
    "make_divisible",
    "make_policy",
    "scale_channels",
    "width_key",
]
