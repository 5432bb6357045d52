"""AutoSlim: one-shot search for the number of channels of every layer of a slimmable network."""

from ..profile import MacsCounter, count_macs
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
from .result import SearchResult, TargetResult, load_search, read_search

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
    "get_channels",
    "load_search",
    "read_search",
    "set_channels",
]
