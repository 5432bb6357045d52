"""Width specifications: the one reader of "which widths" for every command and the Python API.

A specification is any of (several may be given, e.g. one per command-line word):

- a width, ``0.5``, or a list, ``0.25,0.5,1`` (commas or spaces);
- a grid ``lo:hi:step``, inclusive: ``0.25:1:0.025`` is 31 widths;
- a nonuniform width, a ``{layer: width}`` map (``"*"`` for the other layers), as inline JSON
  or a ``.json`` / ``.yaml`` file; a file or JSON list may hold several widths and maps;
- an AutoSlim search result (``slimmable search`` output): the configuration of every target,
  or of one with ``FILE@TARGET`` (``autoslim.json@50%``).

Widths keep the order given; repeats are dropped. Whether a width suits a model is checked
where it is used (``set_width`` names what the model allows).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .width import Width

# What parse_widths reads: text, a width, a map, or a sequence of those.
WidthItem = str | float | Mapping[str, float]
WidthSpec = WidthItem | Sequence[WidthItem]
SPEC_HELP = (
    "widths: 0.25,0.5,1 or a grid lo:hi:step (0.25:1:0.025), a {layer: width} JSON map "
    "(inline or a .json/.yaml file), or a `slimmable search` result (FILE or FILE@TARGET)"
)
_FILE_SUFFIXES = (".json", ".yaml", ".yml")


def parse_widths(spec: WidthSpec) -> list[Width]:
    """Every width ``spec`` names, in order, without repeats (see the module docstring)."""
    items: list[Any] = [spec] if isinstance(spec, str | int | float | Mapping) else list(spec)
    widths: list[Width] = []
    for item in items:
        for width in _read(item):
            if not any(_same(width, w) for w in widths):
                widths.append(width)
    if not widths:
        raise ValueError("no widths given; e.g. --widths 0.25,0.5,1.0")
    return widths


def parse_width(spec: WidthSpec) -> Width:
    """The single width ``spec`` names (a number, a map, or a search result of one target)."""
    widths = parse_widths(spec)
    if len(widths) != 1:
        raise ValueError(
            f"expected one width, got {len(widths)}; give one number or map (for a search "
            "result of several targets: FILE@TARGET)"
        )
    return widths[0]


def _same(a: Width, b: Width) -> bool:
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return isinstance(a, Mapping) and isinstance(b, Mapping) and dict(a) == dict(b)
    return a == b


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: {value!r} is not a width (a number such as 0.5)")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where}: a width must be a positive number, got {value}")
    return float(value)


def _value(value: Any, where: str) -> list[Width]:
    """Widths from a parsed JSON / YAML value."""
    if isinstance(value, Mapping):
        if value.get("format") == "slimmable-search":
            from .search.result import SearchResult

            return [r.width_map for r in SearchResult.from_dict(dict(value)).results]
        if "width" in value and len(value) <= 2:  # a record {"width": ..., ...}
            return _value(value["width"], where)
        return [{str(k): _number(v, f"{where}, layer {k!r}") for k, v in value.items()}]
    if isinstance(value, list | tuple):
        return [w for item in value for w in _value(item, where)]
    return [_number(value, where)]


def _read(item: Any) -> list[Width]:
    if not isinstance(item, str):
        return _value(item, "widths")
    text = item.strip()
    if text.startswith(("{", "[")):
        try:
            return _value(json.loads(text), "widths")
        except json.JSONDecodeError as err:
            raise ValueError(
                f"widths {text[:40]!r} is not valid JSON ({err.msg}); quote it in the shell"
            ) from None
    path, _, target = text.rpartition("@") if "@" in text else (text, "", "")
    if Path(path).is_file() or path.endswith(_FILE_SUFFIXES):
        return _read_file(Path(path), target or None)
    widths: list[Width] = []
    for part in text.replace(" ", ",").split(","):
        if part:
            widths += _grid(part) if ":" in part else [_plain(part)]
    return widths


def _plain(part: str) -> float:
    try:
        value = float(part)
    except ValueError:
        raise ValueError(
            f"cannot read widths {part!r}: not a comma-separated list of numbers (0.25,0.5,1.0), "
            "a grid lo:hi:step, JSON or a file"
        ) from None
    return round(_number(value, "widths"), 6)


def _grid(part: str) -> list[float]:
    try:
        lo, hi, step = (float(v) for v in part.split(":"))
        if not (step > 0 and hi >= lo > 0 and math.isfinite(hi)):
            raise ValueError
    except ValueError:
        raise ValueError(
            f"cannot read widths {part!r}; a grid is lo:hi:step with 0 < lo <= hi and step > 0, "
            "such as 0.25:1.0:0.025"
        ) from None
    count = math.floor((hi - lo) / step + 1e-6)
    return [round(lo + i * step, 6) for i in range(count + 1)]


def _read_file(path: Path, target: str | None) -> list[Width]:
    if not path.is_file():
        raise FileNotFoundError(f"widths file {path} does not exist")
    import yaml

    try:
        data = yaml.safe_load(path.read_text())  # JSON is YAML
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ValueError(f"{where}: not valid JSON or YAML; give a width map or list") from None
    if isinstance(data, Mapping) and data.get("format") == "slimmable-search":
        from .search.result import read_search

        found = read_search(path)
        if target is not None:
            return [found.width_map(target)]
        return [r.width_map for r in found.results]
    if target is not None:
        raise ValueError(f"{path} is not a search result; FILE@TARGET picks a search target")
    return _value(data, str(path))


def as_width(value: Any) -> Width:
    """``value`` checked as one width: a positive number or a ``{layer: width}`` map.

    Rejects what Python would silently turn into a number (``True``, ``"abc"``).
    """
    if isinstance(value, Mapping):
        return {str(k): _number(v, f"width of {k!r}") for k, v in value.items()}
    if isinstance(value, str):
        raise ValueError(
            f"a width is a number or a {{layer: width}} map, not the string {value!r}; "
            "use slimmable.parse_widths to read text"
        )
    return _number(value, "width")


__all__ = ["SPEC_HELP", "WidthSpec", "as_width", "parse_width", "parse_widths"]
