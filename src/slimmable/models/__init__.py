"""The model zoo: every family in one file, registered by name."""

from . import (  # noqa: F401  (registers the models)
    autoslim,
    mnasnet,
    mobilenet_v1,
    mobilenet_v2,
    resnet,
    segmentation,
    shufflenet,
    small_cnn,
)
from .detection import DetectionBackbone, detection_backbone
from .features import FeatureExtractor, FeatureInfo, PadToFullWidth
from .fpn import FPN
from .kit import LayerKit, make_kit
from .registry import create_model, list_models, model_factory, register_model
from .segmentation import SegmentationNet

__all__ = [
    "FPN",
    "DetectionBackbone",
    "FeatureExtractor",
    "FeatureInfo",
    "LayerKit",
    "PadToFullWidth",
    "SegmentationNet",
    "create_model",
    "detection_backbone",
    "list_models",
    "make_kit",
    "model_factory",
    "register_model",
]
