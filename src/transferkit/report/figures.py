"""The report's figures (matplotlib, headless): confusion matrices, curves, the advisor's measurements.

Each function draws one figure and returns it as PNG bytes, so that the caller decides where
it goes (a file next to report.html, and an inline copy in the page).
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def confusion_matrix_png(matrix: Sequence[Sequence[int]], classes: Sequence[str], *, normalise: bool) -> bytes:
    """scikit-learn's ConfusionMatrixDisplay of counts, or of rows normalised to recall."""
    from sklearn.metrics import ConfusionMatrixDisplay

    values = np.asarray(matrix, dtype=np.float64)
    if normalise:
        totals = values.sum(axis=1, keepdims=True)
        values = np.divide(values, totals, out=np.zeros_like(values), where=totals > 0)
    side = 1.6 + 0.9 * len(classes)
    figure, axes = plt.subplots(figsize=(side + 1.2, side))
    display = ConfusionMatrixDisplay(values if normalise else values.astype(int), display_labels=list(classes))
    display.plot(ax=axes, cmap="Blues", colorbar=True, values_format=".2f" if normalise else "d", xticks_rotation=45)
    axes.set_title("row-normalised (recall per class)" if normalise else "counts")
    return _png(figure)


def training_curves_png(history: Sequence[dict[str, Any]]) -> bytes | None:
    """Loss and accuracy per epoch, training and validation; None without a history (svm/logistic)."""
    if not history:
        return None
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(9, 3.4))
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        for split, style in (("train", "-o"), ("val", "--s")):
            values = [row.get(f"{split}_{metric}") for row in history]
            if any(v is not None for v in values):
                axes.plot(epochs, [np.nan if v is None else v for v in values], style, label=f"{split}", markersize=3)
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.legend()
        axes.grid(alpha=0.3)
    figure.suptitle("training and validation curves")
    return _png(figure)


def stage_bars_png(values: dict[str, float], *, title: str, ylabel: str) -> bytes | None:
    """One bar per backbone stage (domain shift or LogME); None when there are no values."""
    if not values:
        return None
    figure, axes = plt.subplots(figsize=(1.0 + 0.6 * len(values), 3.0))
    axes.bar(list(values), list(values.values()), color="tab:blue")
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.tick_params(axis="x", rotation=45)
    return _png(figure)


def comparison_png(comparison: dict[str, Any]) -> bytes:
    """Mean CV accuracy per strategy with a standard-deviation error bar; the best in colour."""
    results = comparison["results"]
    names = [r["strategy"] for r in results]
    means = [r["cv_mean"] for r in results]
    stds = [r["cv_std"] for r in results]
    colours = ["tab:orange" if name == comparison["best"] else "tab:gray" for name in names]
    figure, axes = plt.subplots(figsize=(1.2 * len(names) + 2.5, 3.6))
    bars = axes.bar(names, means, yerr=stds, capsize=4, color=colours)
    for bar, mean in zip(bars, means):
        axes.text(bar.get_x() + bar.get_width() / 2, mean + 0.01, f"{mean:.3f}", ha="center", va="bottom", fontsize=8)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("accuracy (mean ± std over folds)")
    axes.set_title(f"{comparison['cv']}-fold CV, n={comparison['n']}; best: {comparison['best']}")
    return _png(figure)


def image_png(pixels: np.ndarray, *, size: int | None = None) -> bytes:
    """A uint8 RGB array as PNG, optionally enlarged (nearest neighbour) to ``size`` pixels wide."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    if size is not None and image.width < size:
        image = image.resize((size, size * image.height // image.width), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png(figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
