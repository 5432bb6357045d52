"""Batch normalization for networks that run at many widths.

- :class:`SwitchableBatchNorm2d` (S-Nets): one private ``nn.BatchNorm2d`` per width.
- :class:`USBatchNorm2d` (US-Nets): one shared affine, sliced; training normalizes with batch
  statistics; after training, :func:`slimmable.calibrate` stores post-statistics per width
  (cumulative moving average over a few batches) in buffers that travel in ``state_dict()``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as torch_module

from .base import is_compiling
from .channels import scale_channels
from .layout import ChannelLayout, gather
from .slicing import SliceMemo, owned_copy
from .width_policy import WidthList

FULL_WIDTH_KEY = 1_000_000


def width_key(width: float) -> int:
    """Integer key of a uniform width in the calibration buffers (micro-width units)."""
    return round(float(width) * 1_000_000)


def describe_key(key: int) -> str:
    """Readable form of a calibration key: the width, or ``nonuniform#<hash>``."""
    return f"{key / 1_000_000:g}" if key > 0 else f"nonuniform#{-key:x}"


# torch's registries of global module hooks (dicts, updated in place); ``None`` if absent.
_GLOBAL_HOOKS = tuple(
    getattr(torch_module, name, None)
    for name in (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
)


def _plain_eval_call(bn: nn.Module, x: Tensor) -> bool:
    """Whether ``bn(x)`` is exactly ``F.batch_norm`` with its running statistics.

    True for a plain ``nn.BatchNorm2d`` in eval mode with running statistics, a 4-D input and
    no hooks (its own or global ones; a registry this torch lacks counts as hooked).
    """
    a, b, c, d = _GLOBAL_HOOKS
    return (
        type(bn) is nn.BatchNorm2d
        and not bn.training
        and bn.track_running_stats
        and bn._buffers.get("running_mean") is not None
        and x.dim() == 4
        and not (bn._forward_hooks or bn._forward_pre_hooks)
        and not (bn._backward_hooks or bn._backward_pre_hooks)
        and not (a is None or b is None or c is None or d is None or a or b or c or d)
    )


class SwitchableBatchNorm2d(nn.Module):
    """Switchable batch normalization: a private ``nn.BatchNorm2d`` for every width.

    The private BN of a width is chosen by the layer's ``width``; when the input's channel count
    says otherwise (a nonuniform network) the BN with that many channels is used.
    """

    def __init__(
        self,
        num_features: int,
        widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
        *,
        divisor: int = 8,
        ratio: int = 1,
        channels_list: Sequence[int] | None = None,
        fixed: bool = False,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.policy = WidthList(widths)
        self.width = self.policy.hi
        self.num_features = num_features
        if channels_list is None:
            channels_list = [
                num_features if fixed else scale_channels(num_features, w, divisor, ratio)
                for w in self.policy.widths
            ]
        if len(channels_list) != len(self.policy.widths):
            raise ValueError("channels_list must give one channel count per width")
        self.channels_list = tuple(int(c) for c in channels_list)
        self.bn = nn.ModuleList(
            nn.BatchNorm2d(c, eps, momentum, affine, device=device, dtype=dtype)
            for c in self.channels_list
        )
        self._active: dict[tuple[float, int], str] = {}  # (width, channels) -> index in bn
        self.input_layout: ChannelLayout | None = None  # set for a concatenated input

    def input_channels(self, x: Tensor) -> int:
        """How many of this layer's channels ``x`` carries."""
        return x.shape[1]

    def _width_index(self, i: int) -> Tensor | None:
        """Where the private BN of width ``i`` sits among the full channels (None: a prefix)."""
        layout = self.input_layout
        if layout is None:
            return None
        counts = layout.counts_at(self.policy.widths[i])
        return layout.indices(self.channels_list[i], counts=counts)

    def load_dense(self, dense: nn.BatchNorm2d) -> None:
        """Give every private BN the statistics and affine of ``dense``, a BN of the full width,
        restricted to that width's channels (what a converted dense network starts with)."""
        if dense.num_features != self.num_features:
            raise ValueError(f"expected a BN of {self.num_features} channels, got {dense}")
        with torch.no_grad():
            for i, bn in enumerate(self.bn):
                index, c = self._width_index(i), self.channels_list[i]
                for name in ("weight", "bias", "running_mean", "running_var"):
                    source, target = getattr(dense, name), getattr(bn, name)
                    if source is not None and target is not None:
                        target.copy_(gather(source, 0, c, index))
                if dense.num_batches_tracked is not None and bn.num_batches_tracked is not None:
                    bn.num_batches_tracked.copy_(dense.num_batches_tracked)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A plain nn.BatchNorm2d's state (the network before conversion) fills every width.
        names = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        if prefix + "running_mean" in state_dict and prefix + "bn.0.running_mean" not in state_dict:
            plain = {n: state_dict.pop(prefix + n) for n in names if prefix + n in state_dict}
            for i, c in enumerate(self.channels_list):
                index = self._width_index(i)
                for name, value in plain.items():
                    part = value if name == "num_batches_tracked" else gather(value, 0, c, index)
                    state_dict[f"{prefix}bn.{i}.{name}"] = part
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def active_index(self, channels: int) -> int:
        """Index of the private BN that normalizes ``channels`` channels at this width."""
        i = self.policy.index(self.width)
        if self.channels_list[i] == channels:
            return i
        if channels in self.channels_list:
            return self.channels_list.index(channels)
        raise ValueError(
            f"SwitchableBatchNorm2d has private BNs for {list(self.channels_list)} channels, "
            f"got an input of {channels}; build the layer with the widths the network runs at"
        )

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        if is_compiling():  # a graph per width of the list: each has its own BN
            return self.bn[self.active_index(channels)](x)
        name = self._active.get((self.width, channels))
        if name is None:
            name = str(self.active_index(channels))  # raises for channels it has no BN for
            self._active[(self.width, channels)] = name
        bn = self._modules["bn"]._modules[name]  # self.bn[i], without the attribute lookups
        if self.training or not _plain_eval_call(bn, x):
            return bn(x)
        # Exactly what bn(x) computes in eval mode, minus a second module call per layer.
        params, buffers = bn._parameters, bn._buffers
        return F.batch_norm(
            x,
            buffers["running_mean"],
            buffers["running_var"],
            params["weight"],
            params["bias"],
            False,
            0.0,
            bn.eps,
        )

    def merge_statistics(self, reduce: Callable[[Tensor], object]) -> None:
        """Average the running statistics of every private BN with this layer's copies in other
        processes (data-parallel ranks). ``reduce(t)`` sums ``t`` in place over the copies
        (``torch.distributed.all_reduce``); every copy must call it."""
        stats = [b for bn in self.bn for b in (bn.running_mean, bn.running_var) if b is not None]
        if not stats:
            return
        packed = torch.cat([torch.cat(stats), stats[0].new_ones(1)])
        reduce(packed)
        packed = packed[:-1] / packed[-1]
        for buf, value in zip(stats, packed.split([b.numel() for b in stats]), strict=True):
            buf.copy_(value)

    def to_dense(self, in_channels: int) -> nn.BatchNorm2d:
        """A copy of the private ``nn.BatchNorm2d`` that normalizes ``in_channels`` channels now."""
        return copy.deepcopy(self.bn[self.active_index(in_channels)])

    def extra_repr(self) -> str:
        return f"{self.num_features}, {self.policy!r}, channels={list(self.channels_list)}"


def _batch_norm_into(
    x: Tensor,
    rows: tuple[Tensor, Tensor],
    c: int,
    index: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float,
    eps: float,
) -> Tensor:
    """Training-mode batch norm whose running ``rows`` (mean, var) are updated in place at the
    first ``c`` channels, or at ``index`` (a concatenation's active channels)."""
    if index is None:
        return F.batch_norm(x, rows[0][:c], rows[1][:c], weight, bias, True, momentum, eps)
    mean, var = rows[0][index], rows[1][index]
    y = F.batch_norm(x, mean, var, weight, bias, True, momentum, eps)
    with torch.no_grad():
        rows[0][index], rows[1][index] = mean, var
    return y


class USBatchNorm2d(nn.BatchNorm2d):
    """Batch normalization of a universally slimmable network.

    The affine weight and bias are shared and sliced to the active channels. In training mode the
    layer normalizes with batch statistics (and, like ``nn.BatchNorm2d``, tracks shared running
    statistics, which fit no width well: the naive baseline uses them). In eval mode it uses the
    post-statistics calibrated for the current width; a width never calibrated is an error, or
    falls back to the shared running statistics when ``uncalibrated == "running"``.

    Calibrated statistics live in the buffers ``calib_keys`` (``K``), ``calib_mean`` and
    ``calib_var`` (``K x num_features``) and ``calib_batches`` (``K``), one row per width key.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        *,
        uncalibrated: str = "error",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, True, device, dtype)
        self.uncalibrated = uncalibrated
        self.stats_key = FULL_WIDTH_KEY
        self.collecting = False
        factory = {"device": device, "dtype": dtype}
        self.register_buffer("calib_keys", torch.zeros(0, dtype=torch.long, device=device))
        self.register_buffer("calib_mean", torch.zeros(0, num_features, **factory))
        self.register_buffer("calib_var", torch.ones(0, num_features, **factory))
        self.register_buffer("calib_batches", torch.zeros(0, dtype=torch.long, device=device))
        self.input_layout: ChannelLayout | None = None
        self._eval_cache = SliceMemo()

    @property
    def uncalibrated(self) -> str:
        return self._uncalibrated

    @uncalibrated.setter
    def uncalibrated(self, policy: str) -> None:
        if policy not in ("error", "running"):
            raise ValueError(f"uncalibrated must be 'error' or 'running', got {policy!r}")
        self._uncalibrated = policy

    # ---- calibrated statistics ---------------------------------------------------------------
    def calibrated_keys(self) -> list[int]:
        return [int(k) for k in self.calib_keys.tolist()]

    def _slot(self, key: int) -> int | None:
        hits = (self.calib_keys == key).nonzero()
        return int(hits[0, 0]) if len(hits) else None

    def _new_slot(self, key: int) -> int:
        like = self.calib_mean
        self.calib_keys = torch.cat([self.calib_keys, self.calib_keys.new_tensor([key])])
        self.calib_mean = torch.cat([like, like.new_zeros(1, self.num_features)])
        self.calib_var = torch.cat([self.calib_var, like.new_ones(1, self.num_features)])
        self.calib_batches = torch.cat([self.calib_batches, self.calib_batches.new_zeros(1)])
        return len(self.calib_keys) - 1

    def reset_calibration(self, key: int | None = None) -> None:
        """Forget the statistics of one width key (all of them when ``key`` is ``None``)."""
        keep = (
            torch.zeros_like(self.calib_keys, dtype=torch.bool)
            if key is None
            else self.calib_keys != key
        )
        self.calib_keys = self.calib_keys[keep]
        self.calib_mean = self.calib_mean[keep]
        self.calib_var = self.calib_var[keep]
        self.calib_batches = self.calib_batches[keep]

    def merge_statistics(
        self, reduce: Callable[[Tensor], object], keys: Sequence[int] = ()
    ) -> None:
        """Combine this layer's statistics with its copies in other processes, exactly.

        ``reduce(t)`` sums ``t`` in place over the copies (``torch.distributed.all_reduce``);
        every copy must call this with the same ``keys``. The shared running statistics become
        the copies' mean. The calibrated statistics of each width key in ``keys`` become the
        mean over all the copies' calibration batches (a copy's weighted by its batch count; a
        copy that saw no batch of a key adds nothing), which is what one process calibrating on
        all of those batches stores.
        """
        slots = [self._slot(k) for k in keys]
        slots = [self._new_slot(k) if s is None else s for k, s in zip(keys, slots, strict=True)]
        parts = [self.running_mean, self.running_var, self.running_mean.new_ones(1)]
        for slot in slots:
            count = self.calib_batches[slot : slot + 1].to(self.calib_mean.dtype)
            parts += [self.calib_mean[slot] * count, self.calib_var[slot] * count, count]
        packed = torch.cat(parts)
        reduce(packed)
        c = self.num_features
        copies = packed[2 * c]
        self.running_mean.copy_(packed[:c] / copies)
        self.running_var.copy_(packed[c : 2 * c] / copies)
        for i, slot in enumerate(slots):
            at = 2 * c + 1 + i * (2 * c + 1)
            count = packed[at + 2 * c]
            self.calib_mean[slot] = packed[at : at + c] / count.clamp_min(1)
            self.calib_var[slot] = packed[at + c : at + 2 * c] / count.clamp_min(1)
            self.calib_batches[slot] = count.round().long()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, *args):
        # The number of calibrated widths is data, not architecture: take the checkpoint's.
        names = ("calib_keys", "calib_mean", "calib_var", "calib_batches")
        plain = all(prefix + name not in state_dict for name in names)
        for name in names:
            incoming = state_dict.get(prefix + name)
            own = getattr(self, name)
            if incoming is not None and incoming.shape != own.shape:
                setattr(self, name, own.new_empty(incoming.shape))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, *args)
        if plain and prefix + "running_mean" in state_dict:
            # A plain nn.BatchNorm2d's state: its statistics are those of the full width.
            missing[:] = [k for k in missing if k not in {prefix + n for n in names}]
            self.calibrate_full_width_from_running()

    def calibrate_full_width_from_running(self) -> None:
        """Store the running statistics as the full width's calibrated ones (and no others).

        What a BN converted from a trained dense network starts with: the dense network's
        statistics are exactly right for the full width, and no other width has any yet.
        """
        self.reset_calibration()
        slot = self._new_slot(FULL_WIDTH_KEY)
        with torch.no_grad():
            self.calib_mean[slot] = self.running_mean
            self.calib_var[slot] = self.running_var
            self.calib_batches[slot] = self.num_batches_tracked

    # ---- forward -----------------------------------------------------------------------------
    def input_channels(self, x: Tensor) -> int:
        """How many of this layer's channels ``x`` carries."""
        return x.shape[1]

    def _index(self, c: int, device: torch.device) -> Tensor | None:
        layout = self.input_layout
        return None if layout is None else layout.indices(c, device)

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        if c > self.num_features:
            raise ValueError(f"USBatchNorm2d has {self.num_features} channels, got {c}")
        if not (self.training or self.collecting or torch.is_grad_enabled()):
            return self._inference_forward(x, c)
        index = self._index(c, x.device)
        weight, bias = self._affine(c, index)
        if self.collecting:  # post-statistics: cumulative moving average over batches
            slot = self._slot(self.stats_key)
            if slot is None:
                slot = self._new_slot(self.stats_key)
            seen = int(self.calib_batches[slot])
            self.calib_batches[slot] += 1
            rows = (self.calib_mean[slot], self.calib_var[slot])
            return _batch_norm_into(x, rows, c, index, weight, bias, 1.0 / (seen + 1), self.eps)
        if self.training:
            if len(self.calib_keys) and not is_compiling():
                self.reset_calibration()  # the weights are about to change: stale statistics go
            self.num_batches_tracked += 1
            momentum = self.momentum
            if momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
            rows = (self.running_mean, self.running_var)
            return _batch_norm_into(x, rows, c, index, weight, bias, momentum, self.eps)
        mean, var = self.eval_statistics(c)
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)

    def _affine(self, c: int, index: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        if not self.affine:
            return None, None
        return gather(self.weight, 0, c, index), gather(self.bias, 0, c, index)

    def _inference_forward(self, x: Tensor, c: int) -> Tensor:
        index = self._index(c, x.device)
        weight, bias = self.weight, self.bias
        if index is not None:  # gathered copies of a concatenation's channels: never memoized
            mean, var = self.eval_statistics(c, index)
            w, b = self._affine(c, index)
            return F.batch_norm(x, mean, var, w, b, False, 0.0, self.eps)
        # Views of the current tensors (finding the width's row is what costs), memoized while
        # those are the same objects at the same storage: they cannot go stale.
        buffers = self._buffers
        sources = (buffers["calib_mean"], buffers["calib_var"], buffers["running_mean"])
        if weight is not None:
            sources += (weight, bias)
        key = (self.stats_key, c, self._uncalibrated)
        w, b, mean, var = self._eval_cache.get(key, sources, self._eval_tensors, c)
        return F.batch_norm(x, mean, var, w, b, False, 0.0, self.eps)

    def _eval_tensors(self, c: int) -> tuple:
        return (*self._affine(c, None), *self.eval_statistics(c))

    def eval_statistics(self, channels: int, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(mean, var)`` used in eval mode at the current width for this many channels
        (at ``index`` among the full channels, for a concatenated input)."""
        slot = self._slot(self.stats_key)
        if slot is not None:
            mean, var = self.calib_mean[slot], self.calib_var[slot]
            return gather(mean, 0, channels, index), gather(var, 0, channels, index)
        if self.uncalibrated == "running":
            mean, var = self.running_mean, self.running_var
            return gather(mean, 0, channels, index), gather(var, 0, channels, index)
        done = ", ".join(describe_key(k) for k in self.calibrated_keys()) or "none"
        raise RuntimeError(
            f"width {describe_key(self.stats_key)} has no calibrated BN statistics "
            f"(calibrated: {done}); run slimmable.calibrate(model, batches, widths=[...]) or "
            "`slimmable calibrate CKPT --widths ...` first"
        )

    def to_dense(self, in_channels: int) -> nn.BatchNorm2d:
        """A plain ``nn.BatchNorm2d`` for ``in_channels`` channels that normalizes, in eval
        mode, exactly as this layer does now: sliced affine, statistics of the current width
        (see :meth:`eval_statistics`; an uncalibrated width raises).
        """
        if in_channels > self.num_features:
            raise ValueError(f"USBatchNorm2d has {self.num_features} channels, got {in_channels}")
        index = self._index(in_channels, self.calib_mean.device)
        mean, var = self.eval_statistics(in_channels, index)
        dense = nn.BatchNorm2d(
            in_channels, self.eps, self.momentum, self.affine, True, device="meta"
        )
        if self.affine:
            weight, bias = self._affine(in_channels, index)
            dense.weight = owned_copy(weight, self.weight.requires_grad)  # type: ignore[arg-type]
            dense.bias = owned_copy(bias, self.bias.requires_grad)  # type: ignore[arg-type]
        dense.running_mean = mean.detach().clone()
        dense.running_var = var.detach().clone()
        slot = self._slot(self.stats_key)
        seen = self.calib_batches[slot] if slot is not None else self.num_batches_tracked
        dense.num_batches_tracked = seen.detach().clone()
        return dense

    def extra_repr(self) -> str:
        keys = self.calibrated_keys()
        if self.input_layout is not None:
            return f"{super().extra_repr()}, input_layout={self.input_layout!r}, calibrated=..."
        shown = ", ".join(describe_key(k) for k in keys[:6]) + (", ..." if len(keys) > 6 else "")
        return f"{super().extra_repr()}, calibrated=[{shown}]"


class SlimmableLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the channels in the last dimension (channels-last blocks, e.g.
    ConvNeXt): normalizes however many channels run, with the leading slice of its affine."""

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)
        if len(self.normalized_shape) != 1:
            raise ValueError("SlimmableLayerNorm normalizes one (channel) dimension")
        self.input_layout: ChannelLayout | None = None
        self._memo: SliceMemo | None = None  # while frozen (slimmable.freeze)

    def input_channels(self, x: Tensor) -> int:
        return x.shape[-1]

    def _affine(self, c: int) -> tuple[Tensor | None, Tensor | None]:
        """The affine's slices for ``c`` active channels (gathered, for a concatenated input)."""
        if c > self.normalized_shape[0]:
            raise ValueError(f"{self} got {c} channels")
        layout = self.input_layout
        weight, bias = self.weight, self.bias
        index = None
        if layout is not None:  # the index lives where the affine does
            some = weight if weight is not None else bias
            index = layout.indices(c, None if some is None else some.device)
        return (
            None if weight is None else gather(weight, 0, c, index),
            None if bias is None else gather(bias, 0, c, index),
        )

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[-1]
        memo = self._memo
        if memo is not None and not torch.is_grad_enabled():
            weight, bias = memo.layer_slices(self, c, self._affine)
        else:
            weight, bias = self._affine(c)
        return F.layer_norm(x, (c,), weight, bias, self.eps)

    def to_dense(self, in_channels: int) -> nn.LayerNorm:
        """A plain ``nn.LayerNorm`` over ``in_channels`` channels, with copied affine."""
        weight, bias = self._affine(in_channels)
        dense = nn.LayerNorm(
            in_channels, self.eps, weight is not None, bias is not None, device="meta"
        )
        if weight is not None:
            dense.weight = owned_copy(weight, self.weight.requires_grad)
        if bias is not None:
            dense.bias = owned_copy(bias, self.bias.requires_grad)
        return dense


class SlimmableGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` whose groups keep their size: a smaller width runs the first groups.

    With ``num_groups`` groups of ``num_channels / num_groups`` channels, ``c`` active channels
    form ``c / (num_channels / num_groups)`` groups (``c`` must fill whole groups), so each
    group is normalized exactly as in the full network. One group (a layer norm over C, H, W)
    stays one group.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.input_layout = None  # concatenated inputs are not supported

    def input_channels(self, x: Tensor) -> int:
        return x.shape[1]

    def active_groups(self, channels: int) -> int:
        """Groups that ``channels`` active channels form."""
        if self.num_groups == 1:
            return 1
        per = self.num_channels // self.num_groups
        if channels % per or channels > self.num_channels:
            raise ValueError(
                f"{self} got {channels} channels, which do not fill whole groups of {per}"
            )
        return channels // per

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        weight, bias = self.weight, self.bias
        weight = None if weight is None else weight[:c]
        bias = None if bias is None else bias[:c]
        return F.group_norm(x, self.active_groups(c), weight, bias, self.eps)

    def to_dense(self, in_channels: int) -> nn.GroupNorm:
        """A plain ``nn.GroupNorm`` over ``in_channels`` channels, with copied affine."""
        dense = nn.GroupNorm(
            self.active_groups(in_channels), in_channels, self.eps, self.affine, device="meta"
        )
        if self.affine:
            dense.weight = owned_copy(self.weight[:in_channels], self.weight.requires_grad)
            dense.bias = owned_copy(self.bias[:in_channels], self.bias.requires_grad)
        return dense
