"""Strategies: the ways to transfer a pretrained network, one registry entry each.

Importing this package registers the built-in strategies (``svm``, ``logistic``, ``head``,
``finetune``, ``full``, ``scratch``, ``pixels``, ``ensemble``); :func:`get_strategy` looks one up by name.
"""

from transferkit.strategies import linear, network, pixels  # noqa: F401 - registers the built-in strategies
from transferkit.strategies import ensemble  # noqa: F401, I001 - registered last: it combines the entries above
from transferkit.strategies.registry import (
    FitOutcome,
    FitRequest,
    FoldFit,
    Settings,
    Strategy,
    get_strategy,
    list_strategies,
    register_strategy,
)

__all__ = ["FitOutcome", "FitRequest", "FoldFit", "Settings", "Strategy", "get_strategy", "list_strategies", "register_strategy"]
