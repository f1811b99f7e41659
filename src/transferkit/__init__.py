"""transferkit: turn labelled images into the best classifier a pretrained network allows."""

__version__ = "0.1.0"

from transferkit.errors import (  # noqa: E402 - __version__ first: persistence reads it
    BackboneError,
    ConfigError,
    DataError,
    ModelFileError,
    NotFittedError,
    TransferkitError,
)

__all__ = [
    "BackboneError",
    "ConfigError",
    "DataError",
    "ImageClassifier",
    "ModelFileError",
    "NotFittedError",
    "TransferkitError",
    "load",
    "save",
    "__version__",
]

# The estimator imports torch. It is loaded on first use (PEP 562), so that the parts that need
# no torch (an exported ONNX model's predictor, the data readers, the CLI's start) stay light.
_LAZY = {
    "ImageClassifier": ("transferkit.estimator", "ImageClassifier"),
    "load": ("transferkit.persistence", "load_model"),
    "save": ("transferkit.persistence", "save_model"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'transferkit' has no attribute {name!r}")
