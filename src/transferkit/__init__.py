"""transferkit: turn labelled images into the best classifier a pretrained network allows."""

from transferkit._version import __version__
from transferkit.errors import (
    BackboneError,
    ConfigError,
    DataError,
    ModelFileError,
    NotFittedError,
    TransferkitError,
)

__all__ = [
    "AdviceThresholds",
    "BackboneError",
    "BottleneckFeatures",
    "ConfigError",
    "DataError",
    "ImageClassifier",
    "ModelFileError",
    "OnnxClassifier",
    "NotFittedError",
    "TransferkitError",
    "get_strategy",
    "keep_freed_memory",
    "list_strategies",
    "load",
    "register_strategy",
    "save",
    "__version__",
]

# The estimator imports torch. It is loaded on first use (PEP 562), so that the parts that need
# no torch (an exported ONNX model's predictor, the data readers, the CLI's start) stay light.
_LAZY = {
    "AdviceThresholds": ("transferkit.advise", "AdviceThresholds"),
    "BottleneckFeatures": ("transferkit.strategies.features", "BottleneckFeatures"),
    "ImageClassifier": ("transferkit.estimator", "ImageClassifier"),
    "get_strategy": ("transferkit.strategies", "get_strategy"),
    "keep_freed_memory": ("transferkit.training.runtime", "keep_freed_memory"),
    "list_strategies": ("transferkit.strategies", "list_strategies"),
    "load": ("transferkit.persistence", "load_model"),
    "OnnxClassifier": ("transferkit.export.predictor", "OnnxClassifier"),
    "register_strategy": ("transferkit.strategies", "register_strategy"),
    "save": ("transferkit.persistence", "save_model"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'transferkit' has no attribute {name!r}")
