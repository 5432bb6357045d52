"""The model zoo: every family in one file, registered by name."""

from . import autoslim, mnasnet, mobilenet_v1, mobilenet_v2, resnet, shufflenet, small_cnn  # noqa: F401  (registers the models)
from .kit import LayerKit, make_kit
from .registry import create_model, list_models, model_factory, register_model

__all__ = ["LayerKit", "create_model", "list_models", "make_kit", "model_factory", "register_model"]
