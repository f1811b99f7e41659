"""Plots of results written as files (matplotlib, headless)."""

from __future__ import annotations

import os
from pathlib import Path

from transferkit.report.figures import comparison_png


def plot_comparison(comparison, path: str | os.PathLike) -> Path:
    """Bar chart of mean CV accuracy per strategy with a standard-deviation error bar; the best in colour."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(comparison_png(comparison.to_dict()))
    return path
