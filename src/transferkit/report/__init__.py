"""Look at a fitted model: the HTML report, its plots, and class activation heatmaps.

``write_report`` (model on labelled data), ``write_comparison_report`` (``compare``),
``activation_maps`` / ``overlay`` (Grad-CAM at a stage fine enough for the input size), ``plot_comparison`` (the
compare bar chart as a file).
"""

__all__ = ["activation_maps", "overlay", "plot_comparison", "write_comparison_report", "write_explanations", "write_report"]


def __getattr__(name: str):
    # The report and heatmaps need torch, Jinja2 and pytorch-grad-cam, the plots matplotlib:
    # loaded on first use only, so the terminal tables (report.tables) import none of them.
    if name == "plot_comparison":
        from transferkit.report.plots import plot_comparison

        return plot_comparison
    if name in ("write_report", "write_comparison_report"):
        from transferkit.report import build

        return getattr(build, name)
    if name in ("activation_maps", "overlay"):
        from transferkit.report import cam

        return getattr(cam, name)
    if name == "write_explanations":
        from transferkit.report.explain import write_explanations

        return write_explanations
    raise AttributeError(f"module 'transferkit.report' has no attribute {name!r}")
