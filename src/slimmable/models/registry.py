"""Model registry: every network is a factory function registered by name."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: make ``fn`` available to :func:`create_model` under its own name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names, sorted, optionally filtered by a glob ``pattern``."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_factory(name: str) -> Callable[..., nn.Module]:
    """The factory registered as ``name``; ``ValueError`` with the closest names otherwise."""
    try:
        return _MODELS[name]
    except KeyError:
        near = difflib.get_close_matches(name, list(_MODELS), n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else "; see slimmable.list_models()"
        raise ValueError(f"unknown model {name!r}{hint}") from None


def create_model(
    name: str,
    num_classes: int = 1000,
    *,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the registered model ``name`` (``widths=`` for S-Nets, ``width_range=`` for US).

    ``features_only=True`` returns the network as a backbone, as timm does: a
    :class:`~slimmable.models.features.FeatureExtractor` whose forward gives the feature maps of
    the stages ``out_indices`` (default: all), with ``feature_info`` for their channels and
    strides.
    """
    factory = model_factory(name)
    for key in ("num_classes", "in_chans"):
        value = num_classes if key == "num_classes" else kwargs.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a whole number of at least 1, got {value!r}")
    model = factory(num_classes=num_classes, **kwargs)
    if not features_only:
        if out_indices is not None:
            raise ValueError("out_indices selects feature stages: pass features_only=True too")
        return model
    from .features import FeatureExtractor

    return FeatureExtractor(model, out_indices)
