"""slimmable: networks trained once that run at many widths.

Slimmable networks (switchable BN), universally slimmable networks (any width, sandwich rule,
in-place distillation, post-training BN calibration) and AutoSlim channel search, for PyTorch.
"""

from .calibrate import calibrate, calibrated_widths, is_calibrated
from .compile import compile_slimmable
from .converter import ConversionError, convert
from .evaluate import evaluate
from .export import extract_subnet
from .latency import measure_latency
from .layers import (
    SlimmableConv2d,
    SlimmableLinear,
    SwitchableBatchNorm2d,
    USBatchNorm2d,
    USConv2d,
    USLinear,
    freeze,
    make_divisible,
)
from .models import create_model, list_models, register_model
from .models.official import load_official
from .profile import count_macs, profile
from .run import load_model, open_run
from .search import autoslim, load_search, read_search, set_channels
from .select import select_width
from .train import train
from .width import (
    channel_groups,
    get_width,
    set_uncalibrated,
    set_width,
    width_bounds,
    width_choices,
    width_knobs,
)
from .widthspec import parse_widths

__version__ = "0.1.0"

__all__ = [
    "ConversionError",
    "SlimmableConv2d",
    "SlimmableLinear",
    "SwitchableBatchNorm2d",
    "USBatchNorm2d",
    "USConv2d",
    "USLinear",
    "__version__",
    "autoslim",
    "calibrate",
    "calibrated_widths",
    "channel_groups",
    "compile_slimmable",
    "convert",
    "count_macs",
    "create_model",
    "evaluate",
    "extract_subnet",
    "freeze",
    "get_width",
    "is_calibrated",
    "list_models",
    "load_model",
    "load_official",
    "load_search",
    "make_divisible",
    "measure_latency",
    "open_run",
    "parse_widths",
    "profile",
    "read_search",
    "register_model",
    "select_width",
    "set_channels",
    "set_uncalibrated",
    "set_width",
    "train",
    "width_bounds",
    "width_choices",
    "width_knobs",
]
