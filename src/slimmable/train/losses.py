"""Losses of slimmable training: label-smoothed cross-entropy and in-place distillation.

They live with the tasks that choose them (:mod:`slimmable.tasks`); this module keeps their
training-side names.
"""

from ..tasks import cross_entropy, soft_cross_entropy, soft_target

__all__ = ["cross_entropy", "soft_cross_entropy", "soft_target"]
