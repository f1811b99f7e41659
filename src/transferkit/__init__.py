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
from transferkit.estimator import ImageClassifier
from transferkit.persistence import load_model as load
from transferkit.persistence import save_model as save

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
