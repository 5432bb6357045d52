"""What an AutoSlim search found, as a JSON file other tools read directly.

Per MACs target, the file holds the channels of every knob layer and the equivalent width map
(``{layer: width}``), which :func:`slimmable.set_width`, ``extract_subnet``, ``profile`` and
``slimmable eval --widths`` take as a nonuniform width, and which the ``autoslim_*`` models take
(``channels=``) to build a network at exactly those channels. Layout (docs/autoslim.md shows a
real one)::

    {"format": "slimmable-search", "version": 1, "model": name, "model_kwargs": {...},
     "input_size": [C, H, W], "divisor": 8, "metric": "accuracy", "per_mac": false,
     "num_images": int, "full_macs": int, "min_macs": int, "groups": [[layer, ...], ...],
     "results": [{"target": "150M", "target_macs": int, "macs": int, "channels": {layer: int},
                  "width_map": {layer: float}, "val_accuracy": float, "val_loss": float,
                  "step": int}, ...],
     "trace": [{"step": 0, "layers": [], "channels": {layer: int}, "macs": int, ...},
               {"step": 1, "layers": [layer, ...], "channels": int, "macs": int, ...}, ...],
     "scored_on": {"split": "holdout", "images": int, "seed": int}}
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..units import format_count, parse_macs

FORMAT = "slimmable-search"
VERSION = 1


@dataclass
class TargetResult:
    """The configuration recorded when the search first met one MACs target."""

    target: str
    target_macs: int
    macs: int
    channels: dict[str, int]
    width_map: dict[str, float]
    val_accuracy: float
    val_loss: float
    step: int


@dataclass
class SearchResult:
    """An AutoSlim search: a configuration per MACs target, and the greedy path that led there."""

    model: str | None
    model_kwargs: dict[str, Any]
    input_size: list[int]
    divisor: int
    metric: str
    per_mac: bool
    num_images: int
    full_macs: int
    min_macs: int
    groups: list[list[str]]
    results: list[TargetResult]
    trace: list[dict[str, Any]] = field(default_factory=list)
    scored_on: dict[str, Any] = field(default_factory=dict)  # which images scored the trials

    def result(self, target: str | int | float | None = None) -> TargetResult:
        """The result for ``target`` (as given to the search, or as MACs); the only one if None."""
        if target is None:
            if len(self.results) == 1:
                return self.results[0]
            raise ValueError(
                f"this search has results for targets {self._targets()}; pick one with target="
            )
        for r in self.results:
            if str(target) == r.target:
                return r
        macs = parse_macs(target, self.full_macs)
        for r in self.results:
            if r.target_macs == macs:
                return r
        raise ValueError(f"this search has no result for target {target}; it has {self._targets()}")

    def _targets(self) -> str:
        return ", ".join(f"{r.target} ({format_count(r.macs)} MACs)" for r in self.results)

    def width_map(self, target: str | int | float | None = None) -> dict[str, float]:
        """``{layer: width}`` of a target's configuration, for ``set_width`` and friends."""
        return dict(self.result(target).width_map)

    def channels(self, target: str | int | float | None = None) -> dict[str, int]:
        """``{layer: output channels}`` of a target's configuration (``autoslim_*`` models)."""
        return dict(self.result(target).channels)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchResult:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not an AutoSlim search result (run `slimmable search` to make one)")
        if data.get("version") != VERSION:
            raise ValueError(
                f"search result version {data.get('version')} is not supported (need {VERSION})"
            )
        fields = {k: v for k, v in data.items() if k not in ("format", "version")}
        fields["results"] = [TargetResult(**r) for r in fields.get("results", [])]
        return cls(**fields)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result as JSON, atomically (a crash leaves the old file or the new one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=1)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def read_search(path: str | os.PathLike) -> SearchResult:
    """Read a search result written by :func:`slimmable.autoslim` or ``slimmable search``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no search result at {path}; run `slimmable search` first")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not JSON ({err}); pick a `slimmable search` output") from None
    try:
        return SearchResult.from_dict(data)
    except TypeError as err:
        raise ValueError(f"{path} is a damaged search result ({err})") from None
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def load_search(path: str | os.PathLike, target: str | int | float | None = None) -> dict:
    """The width map (``{layer: width}``) the search at ``path`` found for ``target``.

    ``target`` is a target as given to the search (``"150M"``, ``"50%"``) or its MACs; it may
    be omitted when the search had one target. The map goes straight to ``set_width``.
    """
    return read_search(path).width_map(target)
