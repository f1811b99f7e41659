"""transferkit: turn labelled images into the best classifier a pretrained network allows.

Only the version and the exceptions are imported with the package; every other name of the
public API (``__all__``) is loaded on first use (PEP 562), so that ``transferkit info``, an
exported model's predictor and ``import transferkit`` itself start without torch, timm or
scikit-learn. ``dir(transferkit)`` lists the whole public API all the same.
"""

from transferkit._version import __version__
from transferkit.errors import (
    BackboneError,
    ConfigError,
    DataError,
    ModelFileError,
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

_LAZY = {
    "AdviceThresholds": ("transferkit.advise", "AdviceThresholds"),
    "BottleneckFeatures": ("transferkit.strategies.features", "BottleneckFeatures"),
    "ImageClassifier": ("transferkit.estimator", "ImageClassifier"),
    "NotFittedError": ("transferkit.errors", "NotFittedError"),  # subclasses scikit-learn's: made on first use
    "get_strategy": ("transferkit.strategies", "get_strategy"),
    "keep_freed_memory": ("transferkit.training.allocator", "keep_freed_memory"),
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


def __dir__() -> list[str]:
    # The lazy names too: tab completion and dir() show the public API before its first use.
    return sorted(set(globals()) | set(__all__))
