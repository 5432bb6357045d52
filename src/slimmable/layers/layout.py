"""Where the active channels of a concatenated input lie among a layer's full input channels.

A layer normally reads the first ``c`` of its input channels. After ``torch.cat`` along the
channels (DenseNet, Inception, U-Net skips) each part keeps its own first channels, so at a
smaller width the active channels of the concatenation are a prefix of every part: a layer that
reads it must gather those positions from its weights. A :class:`ChannelLayout` lists the parts
(their offset and size at full width) and, for each, the layer whose output channels it follows;
the indices of the active channels are computed from those layers' current widths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ChannelSegment:
    """One part of a concatenation: ``size`` channels at ``offset`` (at full width).

    Its active channels are the first ``size * producer.active_channels() // producer_size``
    (the part slims in proportion to the layer that produces its channels); with no producer the
    part never slims.
    """

    offset: int
    size: int
    producer: nn.Module | None = None
    producer_size: int = 1

    def count(self, producer_channels: int | None = None) -> int:
        """Active channels of this part, given its producer's active channels (default: now)."""
        if self.producer is None:
            return self.size
        if producer_channels is None:
            producer_channels = self.producer.active_channels()  # type: ignore[operator]
        return self.size * producer_channels // self.producer_size


class ChannelLayout:
    """The parts of a concatenated channel dimension and the active indices at each width."""

    def __init__(self, segments: Sequence[ChannelSegment]) -> None:
        if len(segments) < 2:
            raise ValueError("a channel layout describes a concatenation of at least two parts")
        self.segments = tuple(segments)
        self.size = sum(s.size for s in segments)
        self._indices: dict[tuple[int, ...], Tensor] = {}

    def counts(self) -> tuple[int, ...]:
        """Active channels of every part at the producers' current widths."""
        return tuple(s.count() for s in self.segments)

    def counts_at(self, width: float) -> tuple[int, ...]:
        """Active channels of every part when every producer runs at ``width``."""
        return tuple(
            s.count(None if s.producer is None else s.producer.channels_at(width))  # type: ignore[operator]
            for s in self.segments
        )

    def indices(
        self,
        channels: int,
        device: torch.device | None = None,
        counts: tuple[int, ...] | None = None,
    ) -> Tensor | None:
        """Positions (among the full channels) of the ``channels`` active input channels, or
        ``None`` when they are the first ``channels`` (a plain prefix slice then serves)."""
        counts = self.counts() if counts is None else counts
        if sum(counts) != channels:
            raise ValueError(
                f"the input has {channels} channels but its parts are active at {list(counts)} "
                f"(sum {sum(counts)}); the layers that produce the concatenated parts and this "
                "layer disagree about the width"
            )
        key = (counts, device)
        if key not in self._indices:
            pairs = list(zip(self.segments, counts, strict=True))
            prefix = all(n == s.size for s, n in pairs[:-1])
            parts = [torch.arange(s.offset, s.offset + n) for s, n in pairs]
            self._indices[key] = None if prefix else torch.cat(parts).to(device)
        return self._indices[key]

    def __deepcopy__(self, memo: dict) -> ChannelLayout:
        import copy

        segments = [
            ChannelSegment(s.offset, s.size, copy.deepcopy(s.producer, memo), s.producer_size)
            for s in self.segments
        ]
        return ChannelLayout(segments)

    def __repr__(self) -> str:
        return "ChannelLayout(" + " + ".join(str(s.size) for s in self.segments) + ")"


def gather(t: Tensor, dim: int, channels: int, index: Tensor | None) -> Tensor:
    """``t`` restricted to the active channels along ``dim``: a prefix view, or a gathered copy."""
    if index is None:
        return t.narrow(dim, 0, channels)
    return t.index_select(dim, index)


__all__ = ["ChannelLayout", "ChannelSegment", "gather"]
