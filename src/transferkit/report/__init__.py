"""Reports: plots and tables of results."""

from transferkit.report.plots import plot_comparison

__all__ = ["plot_comparison"]
