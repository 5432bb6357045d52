"""Data parallel training under ``torchrun``: process group, DDP wrapper, reductions, signals.

Everything that talks to other ranks lives here, so the loop in :mod:`.engine` only calls
small functions that are no-ops in a single process:

- :func:`init_world` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)
  and joins the process group (NCCL on CUDA, gloo on CPU).
- :func:`wrap` puts the model in ``DistributedDataParallel`` with ``broadcast_buffers=False``:
  US batch-norm calibration buffers change shape as widths are calibrated, which DDP's
  per-forward buffer broadcast cannot follow. Calibration and evaluation run on the
  unwrapped module.
- :func:`width_sync` skips the gradient all-reduce (``no_sync`` around forward and backward)
  for every width of a step but the last: one synchronisation per optimizer step however many
  widths it trains.
- :func:`calibrate_sharded` lets each rank calibrate on its share of the calibration batches
  and then combines the per-width cumulative moving averages exactly (they are means over
  batches: weight each rank's by its batch count), which equals one process calibrating on
  all of those batches, however many ranks and batches there are (a rank may get none).
- :func:`merge_bn_statistics` combines BN statistics over ranks through the BN layers' own
  ``merge_statistics`` methods.
- :func:`reduce_eval` sums hits and losses over the ranks' shards of the test set.
- :class:`StopSignal` turns SIGTERM/SIGINT into a flag the loop checks after each step; all
  ranks agree on it (an all-reduce of one integer) so they stop at the same step.
"""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from types import FrameType

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Subset

from ..calibrate import calibrate
from ..compile import CompiledSlimmable
from ..data.loader import CalibrationBatches
from ..layers import SwitchableBatchNorm2d, USBatchNorm2d
from ..width import Width, network_key

# Exit status of a run stopped by a signal: 128 + signal number, as a shell reports a process
# killed by it (SIGTERM: 143, SIGINT: 130); job scripts requeue on it and resume.
STOP_EXIT_BASE = 128


@dataclass
class World:
    """Where this process sits in a data-parallel job; one process by default."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")  # noqa: RUF009 (immutable default)

    @property
    def is_main(self) -> bool:
        """Whether this process logs, plots and writes files."""
        return self.rank == 0


def is_distributed(world: World) -> bool:
    return world.world_size > 1 and dist.is_available() and dist.is_initialized()


def init_world(device: torch.device) -> World:
    """This process's :class:`World`: torchrun's rank and size, or one process.

    Under torchrun (``WORLD_SIZE`` > 1) it joins the default process group and, on CUDA,
    uses the GPU ``LOCAL_RANK``.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(rank=rank, world_size=size, device=device)


def shutdown(world: World, clean: bool = True) -> None:
    """Leave the process group (after the last collective).

    After a clean run the ranks first meet at a barrier, so none leaves while another still
    talks to it. Objects that still hold the group (a DDP wrapper in a reference cycle) are
    collected while the interpreter is fully alive: gloo's threads torn down during interpreter
    exit abort the process ("terminate called without an active exception").
    """
    if is_distributed(world):
        if clean:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def wrap(model: nn.Module, world: World) -> nn.Module:
    """``model`` in DDP when distributed, else ``model`` itself.

    S-Nets with switchable BN leave the other widths' BN parameters unused in the last
    width's backward, so DDP must look for unused parameters there (their gradients,
    accumulated under ``no_sync``, are still all-reduced).
    """
    if not is_distributed(world):
        return model
    unused = any(isinstance(m, SwitchableBatchNorm2d) for m in model.modules())
    ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(
        model, device_ids=ids, broadcast_buffers=False, find_unused_parameters=unused
    )


def unwrap_ddp(net: nn.Module) -> DistributedDataParallel | None:
    """The DDP module inside ``net`` (itself, or under ``torch.compile``), else ``None``."""
    inner = net.compiled if isinstance(net, CompiledSlimmable) else net
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile's OptimizedModule
    return inner if isinstance(inner, DistributedDataParallel) else None


def width_sync(net: nn.Module, last: bool) -> AbstractContextManager:
    """Context for one width's forward *and* backward: gradients are all-reduced only on the
    ``last`` width of a step.

    DDP decides in forward whether the following backward all-reduces, so both must run
    inside ``no_sync`` for the widths before the last; the last width's all-reduce then
    carries the gradients accumulated over all of them.
    """
    ddp = unwrap_ddp(net)
    return nullcontext() if last or ddp is None else ddp.no_sync()


def merge_bn_statistics(model: nn.Module, world: World, calibrated: Sequence[int] = ()) -> None:
    """Combine every BN layer's statistics over the ranks (before evaluating or saving).

    Running statistics become the ranks' mean; the calibrated statistics of the width keys
    ``calibrated`` the mean over all ranks' calibration batches. Each BN layer does it with
    its own ``merge_statistics``; plain torch BN layers average their running statistics.
    """
    if not is_distributed(world):
        return
    handled: set[int] = set()
    for m in model.modules():
        if isinstance(m, SwitchableBatchNorm2d):
            m.merge_statistics(dist.all_reduce)
            handled.update(id(bn) for bn in m.bn)
        elif isinstance(m, USBatchNorm2d):
            m.merge_statistics(dist.all_reduce, calibrated)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            if id(m) in handled:  # a private BN of a switchable one: merged above
                continue
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf.div_(world.world_size)


def any_rank(flag: bool, world: World) -> bool:
    """Whether ``flag`` holds on any rank (one tiny all-reduce)."""
    if not is_distributed(world):
        return flag
    t = torch.tensor([int(flag)], device=world.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def calibrate_sharded(
    model: nn.Module, batches: CalibrationBatches, widths: Sequence[Width], world: World
) -> None:
    """Calibrate ``widths`` on ``batches`` split between the ranks: the statistics one process
    calibrating on all of them stores, whatever the number of ranks and batches.

    Rank ``r`` calibrates batches ``r, r + N, ...``; a rank past the last batch calibrates
    none. The per-width cumulative averages are then combined weighted by batch counts.
    """
    if not is_distributed(world):
        calibrate(model, batches, widths)
        return
    keys = [network_key(model, w) for w in widths]
    mine = batches.shard(world.rank, world.world_size)
    if len(mine):
        calibrate(model, mine, widths)
    else:  # no batch here: forget stale statistics, so this rank adds nothing
        for bn in (m for m in model.modules() if isinstance(m, USBatchNorm2d)):
            for key in keys:
                bn.reset_calibration(key)
    for bn in (m for m in model.modules() if isinstance(m, USBatchNorm2d)):
        bn.merge_statistics(dist.all_reduce, keys)


def eval_shard(dataset: Dataset, world: World) -> Dataset:
    """This rank's share of the test set: items ``rank, rank + N, ...`` (every item once)."""
    if world.world_size <= 1:
        return dataset
    return Subset(dataset, range(world.rank, len(dataset), world.world_size))  # type: ignore[arg-type]


def reduce_step(losses: Tensor, stop: bool, world: World) -> tuple[Tensor, bool]:
    """Step losses averaged over ranks, and whether any rank was asked to stop: one all-reduce."""
    if not is_distributed(world):
        return losses, stop
    packed = torch.cat([losses.float(), losses.new_tensor([float(stop)], dtype=torch.float32)])
    dist.all_reduce(packed)
    return packed[:-1] / world.world_size, bool(packed[-1].item() > 0)


def reduce_eval(results: list[dict], seen: int, world: World) -> list[dict]:
    """Per-width metrics of all ranks' shards, from each rank's metrics over ``seen`` images.

    Segmentation rows carry their confusion matrix: the ranks' matrices are summed and the
    scores recomputed from the sum, which is exact (a mean of per-shard mIoUs is not).
    """
    if not is_distributed(world):
        return results
    if results and "confusion" in results[0]:
        from ..segmentation import scores

        confusions = torch.tensor([r["confusion"] for r in results], dtype=torch.float64)
        losses = torch.tensor([[r["loss"] * seen, float(seen)] for r in results])
        dist.all_reduce(confusions)
        dist.all_reduce(losses)
        summed = [c.long() for c in confusions]
        return [
            {**r, **scores(c), "confusion": c.tolist(), "loss": (l[0] / l[1]).item()}
            for r, c, l in zip(results, summed, losses, strict=True)
        ]
    keys = ("top1", "top5", "loss")
    sums = torch.tensor(
        [[r[k] * seen for k in keys] for r in results] + [[float(seen)] * 3], dtype=torch.float64
    )
    dist.all_reduce(sums)
    total = sums[-1, 0].item()
    return [
        {**r, **{k: sums[i, j].item() / total for j, k in enumerate(keys)}}
        for i, r in enumerate(results)
    ]


class Stopped(Exception):
    """Raised inside :meth:`StopSignal.raising` when SIGTERM / SIGINT arrives."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class StopSignal:
    """Catch SIGTERM and SIGINT inside the block: set :attr:`signum` instead of dying.

    The loop finishes the current step, writes a checkpoint and returns; a second signal of
    the same kind falls through to the previous handler (a hard stop). Inside
    :meth:`raising` (calibration and evaluation, which have no steps to finish) a signal
    raises :class:`Stopped` at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._raising = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and not self._raising:  # asked twice: stop now
            previous = self._previous.get(signum)
            signal.signal(signum, previous if callable(previous) else signal.SIG_DFL)  # type: ignore[arg-type]
            signal.raise_signal(signum)
            return
        self.signum = signum
        if self._raising:
            self._raising = False  # once: the handler of the Stopped may take its time
            raise Stopped(signum)

    @contextmanager
    def raising(self) -> Iterator[None]:
        """A signal inside the block (or one that came before) raises :class:`Stopped`."""
        if self.signum is not None:
            raise Stopped(self.signum)
        self._raising = True
        try:
            yield
        finally:
            self._raising = False

    @contextmanager
    def installed(self) -> Iterator[StopSignal]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self  # signals reach only the main thread; nothing to install
            return
        for s in self.SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, h in self._previous.items():
                signal.signal(s, h)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""
