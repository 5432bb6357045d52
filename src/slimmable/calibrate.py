"""Post-training BN statistics ("post-statistics") for universally slimmable networks.

With the weights frozen, each US BN layer gets, per width, the cumulative moving average of the
batch statistics over a few batches (1-2k images suffice, per the US-Nets paper). Each batch is
loaded once and run at every width.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .layers.norm import USBatchNorm2d
from .width import Width, network_key, set_width, width_modules


def _inputs(batch: Tensor | Sequence) -> Tensor:
    return batch if isinstance(batch, Tensor) else batch[0]


def calibrate(
    model: nn.Module,
    batches: Iterable[Tensor | Sequence[Tensor]],
    widths: Sequence[Width],
    max_images: int | None = None,
    progress: bool = False,
) -> list[int]:
    """Compute and store BN post-statistics of ``model`` for each width in ``widths``.

    ``batches`` yields input tensors or ``(input, target)`` pairs; at most ``max_images`` inputs
    are used. Earlier statistics of these widths are replaced; other widths keep theirs.
    Returns the calibration keys written (see :func:`slimmable.width.network_key`). A model
    without US batch norm has nothing to calibrate (S-Nets keep private statistics per width;
    layer and group norms compute theirs per sample): then nothing happens and ``[]`` returns.
    """
    if not widths:
        raise ValueError("calibrate needs at least one width, e.g. widths=[0.25, 0.5, 1.0]")
    keys = [network_key(model, w) for w in widths]  # validates every width first
    norms = [m for _, m in width_modules(model) if isinstance(m, USBatchNorm2d)]
    if not norms:
        return []
    for bn in norms:
        for key in keys:
            bn.reset_calibration(key)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for bn in norms:
            bn.collecting = True
        with torch.no_grad():
            bar = tqdm(batches, desc="calibrate", unit="batch", disable=not progress, leave=False)
            for batch in bar:
                x = _inputs(batch)
                if max_images is not None:
                    x = x[: max_images - seen]
                if len(x) == 0:
                    break
                x = x.to(device, non_blocking=True)
                for w in widths:
                    with set_width(model, w):
                        model(x)
                seen += len(x)
                if max_images is not None and seen >= max_images:
                    break
    finally:
        for bn in norms:
            bn.collecting = False
        model.train(was_training)
    if seen == 0:
        raise ValueError("calibration got no images: the data loader is empty")
    if not all(
        torch.isfinite(bn.calib_mean).all() and torch.isfinite(bn.calib_var).all() for bn in norms
    ):
        for bn in norms:  # store nothing rather than statistics that are not numbers
            for key in keys:
                bn.reset_calibration(key)
        raise ValueError(
            "calibration produced NaN or inf statistics: the images hold NaN / inf values "
            "(or the weights do); check the data"
        )
    return keys


def calibrated_widths(model: nn.Module) -> list[float]:
    """Uniform widths whose statistics are stored in every US BN layer of ``model``."""
    norms = [m for _, m in width_modules(model) if isinstance(m, USBatchNorm2d)]
    if not norms:
        return []
    common = set.intersection(*(set(bn.calibrated_keys()) for bn in norms))
    return sorted(k / 1_000_000 for k in common if k > 0)


def is_calibrated(model: nn.Module, width: Width) -> bool:
    """Whether every US BN layer of ``model`` holds statistics for ``width`` (uniform or map)."""
    key = network_key(model, width)
    norms = [m for _, m in width_modules(model) if isinstance(m, USBatchNorm2d)]
    return all(key in bn.calibrated_keys() for bn in norms)
