"""Training: S-Net Algorithm 1, the sandwich rule, in-place distillation and the baselines."""

from ..config import Config, config_from_dict, load_config, save_config
from .distributed import World
from .engine import TrainResult, build_model, train
from .losses import cross_entropy, soft_cross_entropy
from .optim import Schedule, build_optimizer, build_schedule, param_groups
from .sampling import WidthSampler

__all__ = [
    "Config",
    "Schedule",
    "TrainResult",
    "WidthSampler",
    "World",
    "build_model",
    "build_optimizer",
    "build_schedule",
    "config_from_dict",
    "cross_entropy",
    "load_config",
    "param_groups",
    "save_config",
    "soft_cross_entropy",
    "train",
]
