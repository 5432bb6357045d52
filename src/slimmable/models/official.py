"""Loading the checkpoints the papers' authors released (github.com/JiahuiYu/slimmable_networks).

Their files are plain state dicts (often under ``"model"``, keys prefixed ``module.`` by
DataParallel). Our zoo names its modules as their code does, so most keys map to themselves;
what differs is declared per family, beside the model, in a ``checkpoint_filter_fn``:

- a key rename (ShuffleNet's ``a_0`` -> ``a.0``);
- S-Nets: a BN the authors share across widths (MobileNet v2's last one) fills every private BN;
- US-Nets: their ``USBatchNorm2d`` keeps one ``bn.{i}`` of running statistics per width of the
  ``width_mult_list`` they calibrated; these become our calibrated statistics for those widths.

Loading is strict: a key missing from the checkpoint, a key the model has no place for, or a
tensor of the wrong shape is an error naming the keys.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..layers.norm import SwitchableBatchNorm2d, USBatchNorm2d, width_key

StateDict = dict[str, Tensor]
_SHOWN = 4


def read_official(source: str | os.PathLike | Mapping[str, Tensor]) -> StateDict:
    """The authors' state dict from a file or a mapping: unwrapped from ``{"model": ...}``,
    without DataParallel's ``module.`` prefix. A ``.zip`` holding one ``.pt`` (their release
    format on GitHub) is read directly; files load with ``weights_only=True``."""
    if isinstance(source, Mapping):
        raw: object = source
    else:
        raw = _load_file(Path(source))
    for wrapper in ("model", "state_dict"):
        if isinstance(raw, Mapping) and isinstance(raw.get(wrapper), Mapping):
            raw = raw[wrapper]
    if not isinstance(raw, Mapping) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise ValueError("an official checkpoint must be a state dict of tensors")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in raw.items()}


def _load_file(path: Path) -> object:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; download the authors' file first")
    data: str | Path | io.BytesIO = path
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            inner = [n for n in names if n.endswith((".pt", ".pth")) and not n.startswith("__")]
            if len(inner) == 1 and not any(n.endswith("data.pkl") for n in names):
                data = io.BytesIO(zf.read(inner[0]))  # a zip around a .pt, not torch's own zip
    try:
        return torch.load(data, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged or foreign file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"cannot read {path} as a PyTorch state dict ({first}); if it holds more than "
            "weights (an optimizer, meters), save its 'model' entry alone and load that"
        ) from None


def _listing(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


class _Taker:
    """Hands out the checkpoint's tensors, recording what is missing, mis-shaped or left over."""

    def __init__(self, official: StateDict) -> None:
        self.official = official
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.misshaped: list[str] = []

    def has(self, key: str) -> bool:
        return key in self.official

    def take(self, key: str, shape: Sequence[int] | None) -> Tensor | None:
        tensor = self.official.get(key)
        if tensor is None:
            if key not in self.missing:
                self.missing.append(key)
            return None
        self.used.add(key)
        if shape is not None and tuple(tensor.shape) != tuple(shape):
            self.misshaped.append(f"{key} {list(tensor.shape)} (model: {list(shape)})")
            return None
        return tensor

    def check(self, model_name: str) -> None:
        unexpected = sorted(set(self.official) - self.used)
        problems = []
        if self.missing:
            problems.append(f"missing keys {_listing(self.missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_listing(unexpected)}")
        if self.misshaped:
            problems.append(f"mis-shaped {_listing(self.misshaped)}")
        if problems:
            raise ValueError(
                f"the official checkpoint does not fit {model_name}: {'; '.join(problems)}; "
                "build the model with the widths and num_classes the checkpoint was trained with"
            )


def us_bn_channels(model: nn.Module, widths: Sequence[float]) -> dict[str, list[int]]:
    """Channels each US BN normalizes at each width, traced on a meta copy of ``model``."""
    from ..profile import input_shape, meta_copy  # profile imports the models package
    from ..width import set_width

    runner = meta_copy(model)
    seen: dict[str, list[int]] = {}
    handles = [
        m.register_forward_pre_hook(
            lambda m, inputs, name=name: seen.setdefault(name, []).append(inputs[0].shape[1])
        )
        for name, m in runner.named_modules()
        if isinstance(m, USBatchNorm2d)
    ]
    x = torch.zeros((1, *input_shape(model)), device="meta")
    with torch.no_grad():
        for w in widths:
            with set_width(runner, w):
                runner(x)
    for h in handles:
        h.remove()
    return seen


def _us_widths(
    taker: _Taker, prefix: str, widths: Sequence[float] | None, cfg_widths: Sequence[float]
) -> list[float]:
    """Widths of the checkpoint's ``bn.{i}`` statistics (their ``width_mult_list``)."""
    found = {
        int(m.group(1))
        for k in taker.official
        if (m := re.match(rf"{re.escape(prefix)}bn\.(\d+)\.", k))
    }
    n = len(found)
    if widths is not None:
        if n != len(widths):
            raise ValueError(
                f"the checkpoint holds BN statistics of {n} widths at {prefix}bn.*, "
                f"but widths= lists {len(widths)}"
            )
        return [float(w) for w in widths]
    if n == len(cfg_widths):
        return [float(w) for w in cfg_widths]
    if n == 2:  # saved during training: their width_mult_list is the range's two ends
        return [float(cfg_widths[0]), float(cfg_widths[-1])]
    raise ValueError(
        f"the checkpoint holds BN statistics of {n} widths at {prefix}bn.*; pass the "
        "width_mult_list it was calibrated with: load_official(model, path, widths=[...])"
    )


def convert_state_dict(
    official: StateDict,
    model: nn.Module,
    *,
    model_name: str,
    rename: Callable[[str], str] = lambda key: key,
    shared_bn: Collection[str] = (),
    us_widths: Sequence[float] | None = None,
    us_cfg_widths: Sequence[float] = (),
) -> StateDict:
    """Our state dict for ``model`` from the authors' ``official`` one (strict).

    ``rename`` maps one of our module paths to theirs. ``shared_bn`` names our switchable BNs
    that their code keeps as one plain BN. US BN statistics are read for ``us_widths`` (default:
    inferred from how many ``bn.{i}`` the checkpoint has, ``us_cfg_widths`` being the authors'
    calibrated list).
    """
    taker = _Taker(official)
    ours = model.state_dict()
    out: StateDict = {}
    modules = dict(model.named_modules())
    us_names = [n for n, m in modules.items() if isinstance(m, USBatchNorm2d)]
    widths: list[float] = []
    channels: dict[str, list[int]] = {}
    if us_names:
        widths = _us_widths(taker, rename(us_names[0]) + ".", us_widths, us_cfg_widths)
        channels = us_bn_channels(model, widths)
    elif us_widths is not None:
        raise ValueError(
            f"widths= names the calibrated widths of a US-Net checkpoint; {model_name} keeps "
            "a BN per width of its own list, so leave widths out"
        )
    done: set[str] = set()
    for key in ours:
        module_name, _, leaf = key.rpartition(".")
        if module_name in done:
            continue
        module = modules[module_name]
        if isinstance(module, USBatchNorm2d):
            done.add(module_name)
            out.update(
                _us_bn(
                    taker,
                    module,
                    module_name,
                    rename(module_name),
                    widths,
                    channels.get(module_name, []),
                )
            )
            continue
        private = re.fullmatch(r"(.+)\.bn\.\d+", module_name)  # a switchable BN's private BN
        owner = private.group(1) if private else ""
        if owner in shared_bn and isinstance(modules.get(owner), SwitchableBatchNorm2d):
            source = f"{rename(owner)}.{leaf}"
        else:
            source = f"{rename(module_name)}.{leaf}"
        tensor = taker.take(source, ours[key].shape)
        if tensor is not None:
            out[key] = tensor.detach().clone().to(ours[key].dtype)
    taker.check(model_name)
    return out


def _us_bn(
    taker: _Taker,
    bn: USBatchNorm2d,
    name: str,
    prefix: str,
    widths: Sequence[float],
    channels: Sequence[int],
) -> StateDict:
    """Our US BN's tensors: shared affine plus one calibrated row per width of the checkpoint."""
    c = bn.num_features
    out: StateDict = {}
    for leaf in ("weight", "bias"):
        t = taker.take(f"{prefix}.{leaf}", (c,))
        if t is not None:
            out[f"{name}.{leaf}"] = t.detach().clone().to(bn.weight.dtype)
    k = len(widths)
    mean = torch.zeros(k, c, dtype=bn.running_mean.dtype)
    var = torch.ones(k, c, dtype=bn.running_var.dtype)
    batches = torch.zeros(k, dtype=torch.long)
    if taker.has(f"{prefix}.running_mean"):  # a plain BN of theirs: one set of statistics
        stats = [
            taker.take(f"{prefix}.{leaf}", shape)
            for leaf, shape in (
                ("running_mean", (c,)),
                ("running_var", (c,)),
                ("num_batches_tracked", ()),
            )
        ]
        if all(s is not None for s in stats):
            mean[:], var[:], batches[:] = stats[0], stats[1], stats[2]
    else:
        for i, cw in enumerate(channels):
            stats = [
                taker.take(f"{prefix}.bn.{i}.{leaf}", shape)
                for leaf, shape in (
                    ("running_mean", (cw,)),
                    ("running_var", (cw,)),
                    ("num_batches_tracked", ()),
                )
            ]
            if all(s is not None for s in stats):
                mean[i, :cw], var[i, :cw], batches[i] = stats[0], stats[1], stats[2]
    widest = max(range(k), key=lambda i: widths[i]) if k else None
    out[f"{name}.calib_keys"] = torch.tensor([width_key(w) for w in widths], dtype=torch.long)
    out[f"{name}.calib_mean"] = mean
    out[f"{name}.calib_var"] = var
    out[f"{name}.calib_batches"] = batches
    # The shared running statistics (used only by uncalibrated="running"): the widest width's.
    out[f"{name}.running_mean"] = mean[widest].clone() if widest is not None else torch.zeros(c)
    out[f"{name}.running_var"] = var[widest].clone() if widest is not None else torch.ones(c)
    out[f"{name}.num_batches_tracked"] = (
        batches[widest].clone() if widest is not None else torch.tensor(0)
    )
    return out


def load_official(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, Tensor],
    *,
    widths: Sequence[float] | None = None,
) -> nn.Module:
    """Load the authors' released weights into a zoo model, strictly, and return the model.

    ``source`` is a path (``.pt``, or the ``.pt.zip`` of their release) or a state dict keyed as
    their code names it. For US-Nets, ``widths`` is the ``width_mult_list`` their BN statistics
    were calibrated for (default: their released list, recognized by its length); those widths
    are then calibrated in our model.
    """
    convert = getattr(model, "official_state_dict", None)
    if convert is None:
        raise ValueError(
            f"{type(model).__name__} has no mapping for the authors' checkpoints; they exist for "
            "s_mobilenet_v1, s_mobilenet_v2, s_shufflenet, s_resnet50 (101, 152), "
            "us_mobilenet_v1, us_mobilenet_v2"
        )
    state = convert(read_official(source), widths=widths)
    model.load_state_dict(state, strict=True)
    return model


__all__ = ["convert_state_dict", "load_official", "read_official", "us_bn_channels"]
