"""Metrics and cross-validation (thin over scikit-learn)."""

from transferkit.evaluation.metrics import classification_metrics

__all__ = ["classification_metrics"]
