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
from .slicing import SliceCache, copied_prefix, stamp
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
        self._eval_cache = SliceCache()

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

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The number of calibrated widths is data, not architecture: take the checkpoint's.
        for name in ("calib_keys", "calib_mean", "calib_var", "calib_batches"):
            incoming = state_dict.get(prefix + name)
            own = getattr(self, name)
            if incoming is not None and incoming.shape != own.shape:
                setattr(self, name, own.new_empty(incoming.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        if not (self.training or self.collecting or torch.is_grad_enabled()):
            return self._inference_forward(x, c)
        if c > self.num_features:
            raise ValueError(f"USBatchNorm2d has {self.num_features} channels, got {c}")
        weight = self.weight[:c] if self.affine else None
        bias = self.bias[:c] if self.affine else None
        if self.collecting:  # post-statistics: cumulative moving average over batches
            slot = self._slot(self.stats_key)
            if slot is None:
                slot = self._new_slot(self.stats_key)
            seen = int(self.calib_batches[slot])
            self.calib_batches[slot] += 1
            mean, var = self.calib_mean[slot, :c], self.calib_var[slot, :c]
            return F.batch_norm(x, mean, var, weight, bias, True, 1.0 / (seen + 1), self.eps)
        if self.training:
            self.num_batches_tracked += 1
            momentum = self.momentum
            if momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
            mean, var = self.running_mean[:c], self.running_var[:c]
            return F.batch_norm(x, mean, var, weight, bias, True, momentum, self.eps)
        mean, var = self.eval_statistics(c)
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)

    def _inference_forward(self, x: Tensor, c: int) -> Tensor:
        # The slices of this width, memoized while the tensors they come from are unchanged.
        # (Direct dict reads: nn.Module attribute lookup would cost more than the BN itself.)
        params, buffers = self._parameters, self._buffers
        sources = stamp(
            params["weight"],
            params["bias"],
            buffers["calib_mean"],
            buffers["calib_var"],
            buffers["running_mean"],
        )
        key = (self.stats_key, c, self._uncalibrated)
        weight, bias, mean, var = self._eval_cache.get(key, sources, self._eval_tensors, c)
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)

    def _eval_tensors(self, c: int) -> tuple:
        if c > self.num_features:
            raise ValueError(f"USBatchNorm2d has {self.num_features} channels, got {c}")
        weight = self.weight[:c] if self.affine else None
        bias = self.bias[:c] if self.affine else None
        return (weight, bias, *self.eval_statistics(c))

    def eval_statistics(self, channels: int) -> tuple[Tensor, Tensor]:
        """``(mean, var)`` used in eval mode at the current width for this many channels."""
        slot = self._slot(self.stats_key)
        if slot is not None:
            return self.calib_mean[slot, :channels], self.calib_var[slot, :channels]
        if self.uncalibrated == "running":
            return self.running_mean[:channels], self.running_var[:channels]
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
        mean, var = self.eval_statistics(in_channels)
        dense = nn.BatchNorm2d(
            in_channels, self.eps, self.momentum, self.affine, True, device="meta"
        )
        if self.affine:
            dense.weight = copied_prefix(self.weight, (in_channels,))
            dense.bias = copied_prefix(self.bias, (in_channels,))
        dense.running_mean = mean.detach().clone()
        dense.running_var = var.detach().clone()
        slot = self._slot(self.stats_key)
        seen = self.calib_batches[slot] if slot is not None else self.num_batches_tracked
        dense.num_batches_tracked = seen.detach().clone()
        return dense

    def extra_repr(self) -> str:
        keys = self.calibrated_keys()
        shown = ", ".join(describe_key(k) for k in keys[:6]) + (", ..." if len(keys) > 6 else "")
        return f"{super().extra_repr()}, calibrated=[{shown}]"
