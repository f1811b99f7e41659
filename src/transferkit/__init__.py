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
from transferkit.estimator import ImageClassifier  # noqa: E402
from transferkit.advise.rules import AdviceThresholds  # noqa: E402 - after the estimator: advise/ uses it
from transferkit.strategies.features import BottleneckFeatures  # noqa: E402
from transferkit.persistence import load_model as load  # noqa: E402
from transferkit.persistence import save_model as save  # noqa: E402

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
    "load",
    "save",
    "__version__",
]
