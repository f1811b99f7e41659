"""Measuring predictions (metrics) and where independent jobs run (joblib backends): pure helpers
at the bottom of the layers, importing nothing else of transferkit's but its errors. Choosing
between ways to fit is the selection wing's (:mod:`transferkit.selection`)."""

from transferkit.evaluation.metrics import classification_metrics

__all__ = ["classification_metrics"]
