"""Classification metrics as one JSON-ready dict (scikit-learn does the arithmetic).

Averages over classes (balanced accuracy, macro-F1) run over the classes *present* in the
true labels: a class with no image in the data has no recall to average, and counting it as 0
would turn a perfect result on 3 of 4 classes into a macro-F1 of 0.75. The absent classes are
named (``absent_classes``). Every accuracy comes with its yardstick, the majority-class rate:
the accuracy of always answering the largest class.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support

IMBALANCE_NOTE_RATIO = 3.0
"""Largest / smallest class at which a fit notes the imbalance (the advisor's rule, same default)."""


def balanced_accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    """Mean recall over the classes present in ``y_true`` (N,) for predictions ``y_pred`` (N,).

    A class predicted but absent from ``y_true`` has no recall and is left out, silently: a small
    held-out part often lacks a rare class."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(np.asarray(y_true), np.asarray(y_pred)))


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, confusion matrix, per-class scores, absent classes.

    ``confusion_matrix[i][j]`` counts images of ``classes[i]`` predicted as ``classes[j]``.
    Balanced accuracy and macro-F1 average over the classes with images in ``y_true``;
    ``absent_classes`` lists those of ``classes`` without any.

    Examples
    --------
    >>> m = classification_metrics(["a", "b", "c"], ["a", "b", "c"], ["a", "b", "c", "d"])
    >>> m["macro_f1"], m["absent_classes"]
    (1.0, ['d'])
    """
    y_true = np.asarray(y_true).astype(str)
    y_pred = np.asarray(y_pred).astype(str)
    labels = [str(c) for c in classes]
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = support > 0
    rate, majority = majority_class_rate(y_true)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "majority_class_rate": rate,
        "majority_class": majority,
        "absent_classes": [label for label, n in zip(labels, support) if n == 0],
        "n": int(len(y_true)),
        "classes": labels,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
    }


def _counts(labels: Sequence[str] | Mapping[str, int]) -> Mapping[str, int]:
    return labels if isinstance(labels, Mapping) else Counter(str(label) for label in labels)


def majority_class_rate(labels: Sequence[str] | Mapping[str, int]) -> tuple[float, str | None]:
    """The share of the largest class (what always answering it scores) and that class.

    ``labels``: one label per image, or images per class.
    """
    counts = _counts(labels)
    if not counts:
        return 0.0, None
    label, n = max(sorted(counts.items()), key=lambda item: item[1])
    return n / sum(counts.values()), label


def imbalance_note(labels: Sequence[str] | Mapping[str, int]) -> str | None:
    """A sentence on class imbalance when largest / smallest >= :data:`IMBALANCE_NOTE_RATIO`, else None."""
    counts = _counts(labels)
    if len(counts) < 2:
        return None
    (big, n_big), (small, n_small) = max(counts.items(), key=lambda i: i[1]), min(counts.items(), key=lambda i: i[1])
    if n_big / n_small < IMBALANCE_NOTE_RATIO:
        return None
    rate, _ = majority_class_rate(counts)
    return (
        f"the classes are imbalanced ({big!r} {n_big} vs {small!r} {n_small} images, {n_big / n_small:.1f}x): "
        f"always answering {big!r} scores {rate:.4f}, so read accuracy against that and the balanced accuracy; "
        "--class-weight balanced weights the classes"
    )
