"""Losses of slimmable training: label-smoothed cross-entropy and in-place distillation."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy with the hard labels (optionally label-smoothed), averaged over the batch."""
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


def soft_cross_entropy(logits: Tensor, soft_target: Tensor) -> Tensor:
    """``-sum(p * log_softmax(logits))`` averaged over the batch; ``p`` is a distribution.

    In-place distillation (US-Nets): ``p`` is the largest width's ``softmax(logits).detach()``,
    so the narrow widths learn from the wide one without sending gradients back into it.
    """
    return -(soft_target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
