"""AutoSlim: one-shot search for the number of channels of every layer of a slimmable network."""

from .autoslim import METRICS, autoslim
from .channels import (
    ChannelGroup,
    channel_choices,
    channel_groups,
    channels_to_width,
    get_channels,
    set_channels,
)
from .evaluate import batch_statistics
from .macs import MacsCounter, count_macs
from .result import (
    SearchResult,
    TargetResult,
    format_macs,
    load_search,
    parse_macs,
    read_search,
)

__all__ = [
    "METRICS",
    "ChannelGroup",
    "MacsCounter",
    "SearchResult",
    "TargetResult",
    "autoslim",
    "batch_statistics",
    "channel_choices",
    "channel_groups",
    "channels_to_width",
    "count_macs",
    "format_macs",
    "get_channels",
    "load_search",
    "parse_macs",
    "read_search",
    "set_channels",
]
