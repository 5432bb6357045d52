"""Multi-scale features of any slimmable network, as timm's ``features_only`` gives them.

``create_model(name, features_only=True, out_indices=(1, 2, 3))`` returns a
:class:`FeatureExtractor`: its forward returns the feature maps of those stages, and its
``feature_info`` gives their channels (at the current width) and strides. The extractor needs
nothing from the network but the names of its stage modules (a zoo family declares them with
``feature_stages()``; for any other model, ``slimmable.convert``'s included, pass ``stages=``):
hooks on those modules collect their outputs during the network's own forward, and every module
that runs only after the last selected stage (the classifier, later stages) is dropped, as timm
drops them. Channels are measured by a forward on the ``meta`` device, never re-derived, so they
hold for uniform, nonuniform and searched widths alike.

A head reads the features in one of two ways (see ``docs/segmentation.md``):

- :class:`PadToFullWidth`: the authors' detection recipe; every map is zero-padded back to its
  channels at full width, so a plain head of fixed width reads every width;
- a slimmable neck and head (``slimmable.models.fpn``) whose channels slim with the backbone.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..profile import input_shape, meta_copy
from ..width import set_width, width_bounds, width_choices, width_modules


class _Stop(Exception):
    """Ends a probing forward at the last stage."""


class StageCallError(RuntimeError):
    """A stage module ran more or less than once in one forward."""


class FeatureInfo:
    """What each selected stage gives: module name, channels and reduction (stride).

    ``channels()`` is measured at the extractor's current width; ``full_channels()`` at its
    largest. Each method takes an optional ``idx`` (one stage) as timm's ``FeatureInfo`` does.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        names: Sequence[str],
        reductions: Sequence[int],
        full_channels: Sequence[int],
        out_indices: Sequence[int],
    ) -> None:
        self._extractor = extractor
        self._names = tuple(names)
        self._reductions = tuple(reductions)
        self._full = tuple(full_channels)
        self.out_indices = tuple(out_indices)

    def _pick(self, values: tuple, idx: int | None) -> list | int:
        return list(values) if idx is None else values[idx]

    def module_name(self, idx: int | None = None) -> list[str] | str:
        """Names of the stage modules (inside the wrapped network)."""
        return self._pick(self._names, idx)

    def reduction(self, idx: int | None = None) -> list[int] | int:
        """How many input pixels one feature pixel spans, per side (the stage's stride)."""
        return self._pick(self._reductions, idx)

    def full_channels(self, idx: int | None = None) -> list[int] | int:
        """Channels of each map at the network's largest width."""
        return self._pick(self._full, idx)

    def channels(self, idx: int | None = None) -> list[int] | int:
        """Channels of each map at the current width (measured on the meta device)."""
        return self._pick(tuple(self._extractor.measure_channels()), idx)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return (
            f"FeatureInfo(module_name={list(self._names)}, reduction={list(self._reductions)}, "
            f"full_channels={list(self._full)})"
        )


class FeatureExtractor(nn.Module):
    """``model``'s feature maps at the stages ``out_indices`` (default: all), as a list.

    ``stages`` names the module that ends each stage, in forward order (default: the family's
    ``model.feature_stages()``). ``input_size`` (a side, ``(H, W)`` or ``(C, H, W)``; default
    the model's ``default_cfg``) is one input the network takes: strides are measured on it.
    The network becomes ``self.body`` (its layers keep their names under ``body.``); modules
    that run only after the last selected stage are replaced by ``nn.Identity``.
    """

    def __init__(
        self,
        model: nn.Module,
        out_indices: Sequence[int] | None = None,
        *,
        stages: Sequence[str] | None = None,
        input_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if stages is None:
            declared = getattr(model, "feature_stages", None)
            if declared is None:
                raise ValueError(
                    f"{type(model).__name__} declares no feature stages; pass stages=[names of "
                    "the modules that end each stage], e.g. stages=['layer1', 'layer2']"
                )
            stages = declared()
        stages = list(stages)
        _check_names(model, stages)
        picked = _pick_indices(out_indices, len(stages))
        self.body = model
        self.stage_names = [stages[i] for i in picked]
        self.input_shape = input_shape(model, input_size)
        self.default_cfg = {**getattr(model, "default_cfg", {}), "input_size": self.input_shape}
        self._channels_cache: dict[tuple, list[int]] = {}
        self._drop_unused()
        sizes = self._meta_shapes(widest=True)
        height = self.input_shape[1]
        self.feature_info = FeatureInfo(
            self,
            self.stage_names,
            [max(1, round(height / s[2])) for s in sizes],
            [s[1] for s in sizes],
            picked,
        )

    # ---- construction ---------------------------------------------------------------------
    def _started_before_last_stage(self, runner: nn.Module) -> list[str]:
        """Names of ``runner.body``'s modules (a meta copy of ``self.body``) whose forward
        starts before the last stage's ends; the forward stops there, so what follows (a
        classifier that fits only the full width, say) never matters."""
        started: list[str] = []
        handles = []
        for name, m in runner.body.named_modules():

            def pre(module: nn.Module, args: tuple, name: str = name) -> None:
                started.append(name)

            handles.append(m.register_forward_pre_hook(pre))

        def stop(module: nn.Module, args: tuple, output: Tensor) -> None:
            raise _Stop

        last = runner.body.get_submodule(self.stage_names[-1])
        handles.append(last.register_forward_hook(stop))
        try:
            with torch.no_grad():
                runner.body(torch.zeros((2, *self.input_shape), device="meta"))
        except _Stop:
            return started
        finally:
            for h in handles:
                h.remove()
        raise ValueError(f"stage {self.stage_names[-1]!r} never ran in a forward")

    def _drop_unused(self) -> None:
        """Replace every module that starts only after the last stage ends (and holds none
        that starts before) by ``nn.Identity``.

        What runs is recorded at every switch of an S-Net (each runs its own private BNs) and
        at both ends of a US-Net's range.
        """
        runner = meta_copy(self)
        used: set[str] = set()
        for width in _probe_widths(runner):
            try:
                with set_width(runner, width) if width is not None else nullcontext():
                    started = self._started_before_last_stage(runner)
            except Exception as err:
                raise ValueError(
                    f"{type(self.body).__name__} does not run on an input of "
                    f"{self.input_shape}: {err}; pass input_size=(C, H, W) of an input it takes"
                ) from err
            for name in started:  # and its containers (a ModuleList is indexed, never called)
                parts = name.split(".")
                used.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        for name, _ in list(self.body.named_modules()):
            if not name or name in used:
                continue
            parent_name, _, leaf = name.rpartition(".")
            if parent_name and parent_name not in used:
                continue  # an ancestor is replaced already
            parent = self.body.get_submodule(parent_name) if parent_name else self.body
            parent._modules[leaf] = nn.Identity()

    def _meta_shapes(self, widest: bool = False) -> list[tuple[int, ...]]:
        runner = meta_copy(self)
        if widest and any(hasattr(m, "policy") for _, m in width_modules(runner)):
            set_width(runner, width_bounds(runner)[1])
        try:
            with torch.no_grad():
                outputs = runner(torch.zeros((2, *self.input_shape), device="meta"))
        except StageCallError as err:
            raise ValueError(str(err)) from None
        except Exception as err:
            raise ValueError(
                f"{type(self.body).__name__}'s forward fails once the modules after its last "
                f"feature stage ({self.stage_names[-1]}) are dropped ({err}); choose a later "
                "stage, or wrap the part of the network that ends at it"
            ) from err
        return [tuple(o.shape) for o in outputs]

    def measure_channels(self) -> list[int]:
        """Channels of each selected stage at the current width (cached per width setting)."""
        key = tuple((id(m), getattr(m, "width", None)) for _, m in width_modules(self))
        if key not in self._channels_cache:
            if len(self._channels_cache) > 64:
                self._channels_cache.clear()
            self._channels_cache[key] = [s[1] for s in self._meta_shapes()]
        return list(self._channels_cache[key])

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, x: Tensor) -> list[Tensor]:
        features: list[Tensor | None] = [None] * len(self.stage_names)
        versions = [0] * len(self.stage_names)
        calls = [0] * len(self.stage_names)
        thread = threading.get_ident()  # another thread running this model keeps its own

        def keeper(i: int):
            def keep(module: nn.Module, args: tuple, output: Tensor) -> None:
                if threading.get_ident() == thread:
                    features[i] = output
                    versions[i] = output._version
                    calls[i] += 1

            return keep

        handles = [
            self.body.get_submodule(name).register_forward_hook(keeper(i))
            for i, name in enumerate(self.stage_names)
        ]
        try:
            self.body(x)
        finally:
            for h in handles:
                h.remove()
        if calls != [1] * len(calls):
            runs = ", ".join(f"{n}: {c}" for n, c in zip(self.stage_names, calls, strict=True))
            raise StageCallError(
                f"each stage module must run exactly once per forward; they ran {runs} times"
            )
        for name, f, v in zip(self.stage_names, features, versions, strict=True):
            if f._version != v:  # type: ignore[union-attr]
                raise RuntimeError(
                    f"the output of stage {name!r} is changed in place later in the forward (by "
                    "an inplace activation?); name the module that produces the final value"
                )
        return features  # type: ignore[return-value]

    def channel_groups(self) -> list[list[str]]:
        """The wrapped network's tied layers (under ``body.``) that are still there."""
        declared = getattr(self.body, "channel_groups", None)
        if declared is None:
            return []
        live = {name for name, _ in width_modules(self)}
        groups = [[f"body.{n}" for n in group if f"body.{n}" in live] for group in declared()]
        return [g for g in groups if len(g) > 1]

    def extra_repr(self) -> str:
        return f"stages={self.stage_names}"


class PadToFullWidth(nn.Module):
    """The authors' detection recipe: each map zero-padded to its channels at full width.

    The zero channels add nothing to a convolution that reads them, so a plain head built for
    the full width computes, at a narrower width, what the same head sliced to the active
    channels would; it stays one fixed head for every width.
    """

    def __init__(self, features: FeatureExtractor) -> None:
        super().__init__()
        self.features = features
        self.channels = list(features.feature_info.full_channels())

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = self.features(x)
        return [
            F.pad(f, (0, 0, 0, 0, 0, c - f.shape[1]))
            for f, c in zip(maps, self.channels, strict=True)
        ]

    def channel_groups(self) -> list[list[str]]:
        return [[f"features.{n}" for n in g] for g in self.features.channel_groups()]

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


def _probe_widths(model: nn.Module) -> list[float | None]:
    """Widths at which every module that can run does: each switch, or a range's two ends."""
    if not any(hasattr(m, "policy") for _, m in width_modules(model)):
        return [None]
    choices = width_choices(model)
    return list(choices) if choices is not None else list(width_bounds(model))


def _check_names(model: nn.Module, stages: Sequence[str]) -> None:
    if not stages:
        raise ValueError("stages must name at least one module")
    names = [n for n, _ in model.named_modules() if n]
    known = set(names)
    for stage in stages:
        if stage not in known:
            near = difflib.get_close_matches(stage, names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"stage {stage!r} is no module of {type(model).__name__}{hint}")
    if len(set(stages)) != len(stages):
        raise ValueError(f"stages {list(stages)} name a module twice")


def _pick_indices(out_indices: Sequence[int] | None, count: int) -> list[int]:
    """``out_indices`` as ascending non-negative positions (negative count from the end)."""
    if out_indices is None:
        return list(range(count))
    if isinstance(out_indices, int) or not isinstance(out_indices, Sequence):
        raise ValueError(f"out_indices must be a list of stage positions, got {out_indices!r}")
    picked = []
    for i in out_indices:
        if isinstance(i, bool) or not isinstance(i, int) or not -count <= i < count:
            raise ValueError(
                f"out_indices {list(out_indices)}: this network has {count} stages "
                f"(indices 0..{count - 1})"
            )
        picked.append(i % count)
    if not picked or sorted(set(picked)) != picked:
        raise ValueError(
            f"out_indices must list distinct stages in increasing order, got {list(out_indices)}"
        )
    return picked


__all__ = ["FeatureExtractor", "FeatureInfo", "PadToFullWidth"]
