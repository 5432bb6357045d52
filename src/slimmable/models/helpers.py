"""What the model families share: default configs and residual channel ties."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any, TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


def with_cfg(model: M, **cfg: Any) -> M:
    """Attach a timm-style ``default_cfg`` (input size, paper, authors' release) to ``model``."""
    model.default_cfg = {"input_size": (3, 224, 224), **cfg}
    return model


def init_weights(model: nn.Module) -> None:
    """The initialization of the papers' code: convs normal with std sqrt(2 / fan_out), BN
    scale 1 and shift 0, classifier normal with std 0.01 and zero bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def residual_groups(stream: Iterable[tuple[str, bool]]) -> list[list[str]]:
    """Groups of convs whose outputs are summed, from ``(conv name, starts a new stream)``.

    Walk the layers that write the residual stream in order: a layer that starts a stream (a
    stem, a block without identity shortcut) opens a group; a residual block's output conv joins
    the group of the stream it adds to. A block's projection shortcut and its output conv are
    both listed, the shortcut first, with ``True`` then ``False``. Groups of one are dropped.
    """
    groups: list[list[str]] = []
    for name, new in stream:
        if new or not groups:
            groups.append([name])
        else:
            groups[-1].append(name)
    return [g for g in groups if len(g) > 1]


def stage_ends(blocks: Iterable[tuple[str, int]]) -> list[str]:
    """The feature stages of a chain of blocks, from ``(block name, stride)`` in forward order.

    A stage ends at the last block before a strided one, and at the last block: each stage is
    then the deepest output at one resolution, as timm's ``feature_info`` lists them.
    """
    blocks = list(blocks)
    ends = [name for (name, _), (_, stride) in itertools.pairwise(blocks) if stride > 1]
    return [*ends, blocks[-1][0]] if blocks else []


__all__ = ["init_weights", "residual_groups", "stage_ends", "with_cfg"]
