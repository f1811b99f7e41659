"""The small-data loop: label issues, near-duplicates, outliers, a learning curve, and what to label next.

Pure parts take arrays (``label_issues``, ``curve``, ``outliers``, ``suggest``); ``oof`` is the
one seam that chooses the model scoring the images; ``run`` sequences an audit; ``page`` draws it.
"""

from transferkit.audit.curve import CurvePrediction, fit_power_law, power_law, predict_accuracy
from transferkit.audit.label_issues import LabelIssues, find_label_issues
from transferkit.audit.outliers import find_outliers, knn_distances
from transferkit.audit.suggest import margin_uncertainty, rank_for_labelling

__all__ = [
    "CurvePrediction", "LabelIssues", "find_label_issues", "find_outliers", "fit_power_law", "knn_distances",
    "margin_uncertainty", "power_law", "predict_accuracy", "rank_for_labelling",
]
