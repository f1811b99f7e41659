"""Plots of results (matplotlib, headless)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402


def plot_comparison(comparison, path: str | os.PathLike) -> Path:
    """Bar chart of mean CV accuracy per strategy with a standard-deviation error bar; the best in colour."""
    results = comparison.results
    names = [r.strategy for r in results]
    means = [r.mean for r in results]
    stds = [r.std for r in results]
    best = comparison.best.strategy
    colours = ["tab:orange" if name == best else "tab:gray" for name in names]
    figure, axes = plt.subplots(figsize=(1.2 * len(names) + 2.5, 3.6))
    bars = axes.bar(names, means, yerr=stds, capsize=4, color=colours)
    for bar, mean in zip(bars, means):
        axes.text(bar.get_x() + bar.get_width() / 2, mean + 0.01, f"{mean:.3f}", ha="center", va="bottom", fontsize=8)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("accuracy (mean ± std over folds)")
    axes.set_title(f"{comparison.cv}-fold CV, n={comparison.n}; best: {best}")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
