"""The audit's HTML page: report.html's style (its base template), thumbnails of each finding inline."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from transferkit.audit.run import AuditResult
from transferkit.data import ImageSet
from transferkit.errors import ConfigError

SHOWN = 48
"""Findings of each kind drawn on the page (all are in the JSON)."""
_SIDE = 128


def _png(pixels: np.ndarray) -> str:
    image = Image.fromarray(np.asarray(pixels)).resize((_SIDE, _SIDE), Image.NEAREST if pixels.shape[0] < _SIDE else Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _curve_png(curve: dict[str, Any] | None) -> str | None:
    if not curve:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from transferkit.audit.curve import power_law

    sizes, accuracies = np.array(curve["n_images"], float), np.array(curve["accuracy"], float)
    targets = [p["n_images"] for p in curve["predicted"]]
    grid = np.geomspace(sizes.min(), max(targets), 100)
    figure, axis = plt.subplots(figsize=(6, 3.6), dpi=100)
    axis.plot(sizes, accuracies, "o", label="measured")
    params = curve["params"]
    axis.plot(grid, power_law(grid, params["a"], params["b"], params["c"]), "-", label="power law")
    for p in curve["predicted"]:
        axis.errorbar([p["n_images"]], [p["accuracy"]], yerr=[[p["accuracy"] - p["low"]], [p["high"] - p["accuracy"]]], fmt="s",
                      color="C2", capsize=4)
    axis.set_xscale("log")
    axis.set_xlabel("training images")
    axis.set_ylabel("accuracy")
    axis.legend(loc="lower right")
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_audit_page(result: AuditResult, images: ImageSet, pixels: np.ndarray, out_dir: str | Path, *, data_name: str) -> Path:
    """Write ``audit.html`` (one self-contained file) into ``out_dir``; returns its path."""
    try:
        import jinja2
    except ImportError as exc:  # pragma: no cover - the report extra installs it
        raise ConfigError("the audit page needs Jinja2; install it with: pip install 'transferkit[report]'") from exc
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    row = {images.source_name(i): i for i in range(len(images))}
    environment = jinja2.Environment(
        loader=jinja2.ChoiceLoader([jinja2.PackageLoader("transferkit.audit", "templates"), jinja2.PackageLoader("transferkit.report", "templates")]),
        autoescape=True, undefined=jinja2.ChainableUndefined,
    )
    environment.filters["number"] = lambda value, digits=4: "-" if value is None else f"{value:.{digits}f}"
    html = environment.get_template("audit.html.j2").render(
        data=data_name, result=result.to_dict(), curve_png=_curve_png(result.learning_curve),
        label_issues=[{**item, "png": _png(pixels[row[item["path"]]])} for item in result.label_issues[:SHOWN]],
        outliers=[{**item, "png": _png(pixels[row[item["path"]]])} for item in result.outliers[:SHOWN]],
        near_duplicates=[{**group, "pngs": [_png(pixels[row[p]]) for p in group["paths"][:6]]} for group in result.near_duplicates[:SHOWN]],
    )
    path = out / "audit.html"
    path.write_text(html, encoding="utf-8")
    return path
