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
from transferkit.advise import AdviceThresholds
from transferkit.estimator import ImageClassifier
from transferkit.persistence import load_model as load
from transferkit.persistence import save_model as save
from transferkit.strategies import get_strategy, list_strategies, register_strategy
from transferkit.strategies.features import BottleneckFeatures
from transferkit.training.runtime import keep_freed_memory

__all__ = [
    "AdviceThresholds",
    "BackboneError",
    "BottleneckFeatures",
    "ConfigError",
    "DataError",
    "ImageClassifier",
    "ModelFileError",
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
