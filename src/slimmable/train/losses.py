"""Losses of slimmable training: label-smoothed cross-entropy and in-place distillation."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy with the hard labels (optionally label-smoothed), averaged over the batch."""
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


def soft_target(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """The teacher's distribution ``softmax(logits / T)``, detached: no gradient flows back."""
    logits = logits.detach()
    return (logits if temperature == 1.0 else logits / temperature).softmax(dim=1)


def soft_cross_entropy(logits: Tensor, soft_target: Tensor, temperature: float = 1.0) -> Tensor:
    """``-sum(p * log_softmax(logits / T))`` averaged over the batch, times ``T**2``.

    In-place distillation (US-Nets): ``p`` is the largest width's :func:`soft_target`, so the
    narrow widths learn from the wide one without sending gradients back into it. A
    temperature ``T > 1`` softens both sides (Hinton et al., 2015); the ``T**2`` keeps the
    gradients' scale independent of ``T``.
    """
    if temperature == 1.0:
        return -(soft_target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    log_p = F.log_softmax(logits / temperature, dim=1)
    return -(soft_target * log_p).sum(dim=1).mean() * temperature**2
