"""The model card: what a saved model is, in Markdown, next to its weights.

Hugging Face model folders carry one (``README.md`` with YAML metadata on top); a transferkit
model folder carries ``MODEL_CARD.md`` in the same format (rename it ``README.md`` to upload
the folder as a Hugging Face model repository). It says what the model was trained on (data,
classes and their counts), how (backbone, strategy and the advisor's reasons), what was measured
and on what (inner CV, a held-out split, cross-validation), whether its probabilities are
calibrated, when and with which versions, and what it is for. :func:`model_card` builds it from
the config.json that :func:`transferkit.save` writes, so the card and the model never disagree.
"""

from __future__ import annotations

import datetime
from importlib import metadata
from typing import Any

from transferkit.strategies.linear import calibration_text

CARD_NAME = "MODEL_CARD.md"
VERSIONS = ("torch", "torchvision", "timm", "scikit-learn", "numpy")


def probability_note(history: dict[str, Any] | None) -> dict[str, Any]:
    """Whether a model's probabilities are calibrated, and how (``predict --json``, the report, the card).

    Returns ``{"calibrated": bool, "method": str or None, "description": str}``.
    """
    linear = (history or {}).get("linear") or {}
    if "calibration" in linear:
        calibration = linear["calibration"] or {}
        method = calibration.get("method")
        return {"calibrated": method is not None, "method": method, "description": calibration_text(calibration)}
    if linear:  # pixels: an SVC's decision values
        description = "not calibrated: softmax of the SVM's decision values; read them as scores, not probabilities"
    else:
        description = ("not calibrated: softmax of the network's outputs (networks trained with cross-entropy are "
                       "often over-confident); read them as scores, not probabilities")
    return {"calibrated": False, "method": None, "description": description}


def measured_scores(config: dict[str, Any]) -> list[str]:
    """Each score recorded at fit time, with what it was measured on."""
    history, metrics = config.get("history") or {}, config.get("metrics") or {}
    linear, epochs = history.get("linear") or {}, history.get("history") or []
    lines = []
    if linear.get("inner_cv") and _number(linear.get("C")):
        folds = linear.get("inner_folds", "k")
        lines.append(f"inner cross-validation accuracy of the chosen C={linear['C']:g}: {max(linear['inner_cv'].values()):.4f} "
                     f"({folds}-fold, on the training images; it chose C, so it is optimistic)")
    elif epochs and history.get("best_epoch") and _number(epochs[history["best_epoch"] - 1].get("val_accuracy")):
        best = epochs[history["best_epoch"] - 1]
        lines.append(f"accuracy on the held-out validation split at the best epoch ({history['best_epoch']}): "
                     f"{best['val_accuracy']:.4f} (that split chose the epoch, so it is optimistic)")
    cv = metrics.get("cv")
    if isinstance(cv, dict) and _number(cv.get("cv_mean")):
        low, high = (list(cv.get("ci95") or []) + [None, None])[:2]
        interval = f", 95% interval {low:.4f}-{high:.4f}" if _number(low) and _number(high) else ""
        lines.append(f"cross-validated accuracy: {cv['cv_mean']:.4f} ± {cv.get('cv_std') or 0:.4f} over "
                     f"{len(cv.get('fold_scores') or [])} folds{interval} (a model per fold; this one is refitted on all data)")
    if not lines:
        lines.append("no held-out score was measured at fit time: score it with `transferkit evaluate MODEL DATA` on images it never saw")
    return lines


def model_card(config: dict[str, Any], *, written: datetime.datetime | None = None) -> str:
    """The Markdown model card of a model folder's ``config`` (its config.json as a dict)."""
    written = written or datetime.datetime.now(datetime.timezone.utc)
    classes = config.get("classes") or []
    counts = config.get("class_counts") or {}
    advice = config.get("advice") or {}
    plan = config.get("plan") or {}
    strategy = config.get("strategy")
    settings = config.get("settings") or {}
    data = config.get("data") or "not recorded (pass data=... to transferkit.save)"
    class_lines = [f"| {_cell(name)} | {counts.get(name, '-')} |" for name in classes]
    why = [f"- {reason}" for reason in advice.get("reasons") or []] or [f"- chosen by the user (`--strategy {strategy}`)"]
    versions = [f"transferkit {config.get('transferkit_version')}"] + [f"{name} {_version(name)}" for name in VERSIONS]
    front = ["---", "library_name: transferkit", "pipeline_tag: image-classification", "tags:", "- transferkit",
             f"- {strategy}", f"base_model_backbone: {config.get('backbone')}", "---"]
    body = [
        f"# Image classifier: {', '.join(str(c) for c in classes)}", "",
        f"Written by transferkit on {written:%Y-%m-%d %H:%M} UTC.", "",
        "## Data", "", f"Trained on: {data}; {sum(counts.values()) if counts else '?'} images.", "",
        "| class | training images |", "|---|---|", *class_lines, "",
        "## How it was trained", "",
        f"Backbone `{config.get('backbone')}` at {config.get('image_size')} px; strategy `{strategy}`"
        + (f", freeze {settings['freeze']}" if settings.get("freeze") is not None else "")
        + (f", class weight {settings['class_weight']}" if settings.get("class_weight") else "")
        + (f", {settings['feature_layers']} features (multi-layer)" if settings.get("feature_layers") not in (None, "bottleneck") else "")
        + (f", features averaged over {settings['symmetries']}" if settings.get("symmetries") not in (None, "none") else "") + ".",
        "", "Why this strategy:", "", *why, "",
        *([f"Plan: {_plan_text(plan)}", ""] if plan else []),
        "## Measured scores", "", *[f"- {line}" for line in measured_scores(config)], "",
        "## Probabilities", "", probability_note(config.get("history")).get("description", "") + ".", "",
        "## Intended use", "",
        f"Sorting images like the training images into {len(classes)} classes. It knows only these classes: an image of "
        "anything else still gets one of them. Check it on your own held-out images (`transferkit evaluate`) before "
        "relying on it, and look at its most confident mistakes (`transferkit report`).", "",
        "## Use", "", "```bash", "transferkit predict MODEL_DIR image.png --top-k 3", "transferkit report MODEL_DIR DATA --out report/",
        "```", "", "```python", "import transferkit", "model = transferkit.load(\"MODEL_DIR\")",
        "model.predict_proba([\"image.png\"])", "```", "",
        "## Versions", "", ", ".join(versions) + ".", "",
    ]
    return "\n".join(front + [""] + body)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plan_text(plan: dict[str, Any]) -> str:
    def shown(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    return "; ".join(f"{key}={shown(value)}" for key, value in plan.items() if isinstance(value, (str, int, float, bool)) and value != "")


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"
