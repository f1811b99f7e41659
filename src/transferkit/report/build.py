"""Build the HTML report of a fitted model on labelled data, and of a strategy comparison.

One folder: ``report.html`` (self-contained: CSS inline, every figure embedded as a data URI,
so the single file can be mailed or attached) plus each figure as a PNG and ``report.json``
with the numbers. The page is rendered by Jinja2 with autoescaping on, so class names and file
names, which come from the user's folders, are always shown as text, never run as markup.
"""

from __future__ import annotations

from collections import Counter

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transferkit.errors import ConfigError, MissingExtraError

TOP_MISTAKES = 12
TOP_NOVEL = 8
"""How many of the most novel images (least like the training images) the report shows."""
THUMBNAIL_PX = 160


@dataclass(frozen=True)
class Figure:
    """One PNG of the report: its file name, a caption, and the bytes."""

    name: str
    caption: str
    png: bytes = field(repr=False)

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass(frozen=True)
class NovelImage:
    """One of the images least like the training images: its novelty and what the model said."""

    rank: int
    source: str
    true_label: str
    predicted: str
    probability: float
    novelty: float
    unknown: bool
    thumbnail: Figure


@dataclass(frozen=True)
class Mistake:
    """A confidently wrong prediction: the image, what it is, what the model said, and why."""

    rank: int
    source: str
    true_label: str
    predicted: str
    probability: float
    thumbnail: Figure
    heatmap: Figure
    note: str = ""
    """Where the heatmap comes from (stage and grid), or why there is none."""


def write_report(
    classifier,
    images,
    out_dir: str | os.PathLike,
    *,
    data_name: str,
    model_name: str = "",
    config: dict[str, Any] | None = None,
    advice: dict[str, Any] | None = None,
    positive: Sequence[str] | None = None,
    top_mistakes: int = TOP_MISTAKES,
    progress: bool = True,
    card: str | os.PathLike | None = None,
) -> Path:
    """Score ``classifier`` on labelled ``images`` and write ``report.html`` with its figures to ``out_dir``.

    Parameters
    ----------
    classifier : ImageClassifier
        Fitted (e.g. ``transferkit.load(folder)``).
    images : ImageSet
        Labelled images (``transferkit.data.resolve_data(DATA)``).
    data_name : str
        How the data was named (``elpv:test`` also adds ELPV's binary defective view).
    config : dict, optional
        The model folder's config.json: training history, settings and the advisor's measurements.
    advice : dict, optional
        ``transferkit advise --json`` output; its measurements (and race, with ``--measure``)
        take the place of those in ``config``.
    positive : sequence of str, optional
        Classes that form the positive side of a binary view (the rest are negative).
    top_mistakes : int
        How many of the most confident mistakes to show, each with a heatmap.
    card : path, optional
        The model's ``MODEL_CARD.md``, linked from the page.

    Returns
    -------
    Path
        The written ``report.html``.
    """
    from transferkit.card import probability_note
    from transferkit.data.builtin import binary_metrics_if_builtin
    from transferkit.data import load_pixels, train_test_overlap
    from transferkit.data.near_copies import near_copies_of_training
    from transferkit.evaluation import classification_metrics
    from transferkit.evaluation.novelty import novelty_summary
    if images.labels is None:
        raise ConfigError("a report needs labelled images (a class folder, a CSV with labels, or a built-in name).")
    if top_mistakes < 0:
        raise ConfigError(f"top_mistakes expected a non-negative integer. Received: {top_mistakes}")
    classes = [str(c) for c in classifier.classes_]
    unknown = sorted(set(positive or ()) - set(classes))
    if unknown:
        raise ConfigError(f"positive classes must be among the model's classes {classes}. Received: {unknown}")
    config = config or {}
    advice = advice or config.get("advice") or {}

    with _Steps(progress, total=5) as steps:
        steps.next("decoding and predicting")
        pixels = load_pixels(images, classifier.image_size_, cache_dir=classifier.cache_dir, progress=progress)
        probabilities, novelty = classifier.predict_proba(pixels, return_novelty=True)
        predicted_index = probabilities.argmax(axis=1)
        predictions = np.asarray(classifier.classes_).astype(str)[predicted_index]
        labels = np.asarray(images.labels).astype(str)

        steps.next("metrics and plots")
        # The same calls as `transferkit evaluate`, so the numbers are equal to its --json.
        unknown = Counter(label for label in labels if label not in set(classes))  # scored as errors, as evaluate does
        metrics = classification_metrics(labels, predictions, classes + sorted(unknown))
        metrics["unknown_classes"] = dict(sorted(unknown.items()))
        metrics["train_test_overlap"] = train_test_overlap(getattr(classifier, "training_digests_", None), images)
        metrics["train_test_near_duplicates"] = near_copies_of_training(classifier, [images.source_name(i) for i in range(len(images))], pixels)
        metrics.update(binary_metrics_if_builtin(data_name, labels, predictions))
        if positive:
            metrics.update(binary_metrics(labels, predictions, positive))
        novel = _most_novel(classifier, images, pixels, probabilities, labels, novelty)
        metrics["novelty"] = novelty_summary(getattr(classifier, "novelty_", None), novelty)
        history = (config.get("history") or getattr(classifier, "history_", {}) or {}).get("history") or []
        figures = _figures(metrics, classes, history, advice)

        steps.next("finding the most confident mistakes")
        mistakes = _confident_mistakes(classifier, images, pixels, probabilities, labels, top_mistakes, steps)

        steps.next("writing report.html")
        out = Path(out_dir)
        summary = {
            "model": model_name, "data": data_name, "backbone": getattr(classifier, "backbone", ""),
            "strategy": (getattr(classifier, "settings_", None) or {}).get("strategy"),
            "image_size": int(classifier.image_size_), "metrics": metrics,
            "mistakes": [{"rank": m.rank, "source": m.source, "true": m.true_label, "predicted": m.predicted,
                          "probability": m.probability, "heatmap": m.note} for m in mistakes],
            "most_novel": [{"rank": n.rank, "source": n.source, "true": n.true_label, "predicted": n.predicted,
                            "probability": n.probability, "novelty": n.novelty, "unknown": n.unknown} for n in novel],
            "advice": advice or None,
            "probabilities": probability_note(getattr(classifier, "history_", None) or config.get("history")),
            "model_card": None if card is None else os.path.relpath(Path(card).absolute(), Path(out_dir).absolute()),
        }
        scale = colour_scale_figure()
        # an auto model's own search stays on the page when --advice brings a race from `advise --measure`
        search = search_trials(advice if advice.get("trials") else config.get("advice") or {})
        all_figures = figures + [scale] + [f for m in mistakes for f in (m.thumbnail, m.heatmap)] + [n.thumbnail for n in novel]
        return _write(out, "model.html.j2", all_figures, summary,
                      {"summary": summary, "metrics": metrics, "figures": figures, "mistakes": mistakes, "novel": novel, "advice": advice,
                       "search": search, "history": history, "positive": list(positive or []), "scale": scale})


def search_trials(advice: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidates of an ``auto`` fit's search (``advice["trials"]``, as config.json stores them),
    each with ``winner`` True for the one chosen. Empty when there was no search.

    ``advice["chosen"]`` names the winner; advice saved before it existed is matched on the
    settings the winner handed to the recommendation (the first measured trial that has them).
    """
    trials = [dict(trial) for trial in advice.get("trials") or []]
    chosen = advice.get("chosen")
    if chosen is None:
        keys = ("strategy", "image_size", "class_weight", "symmetries", "feature_layers", "freeze")
        chosen = next((i for i, trial in enumerate(trials)
                       if trial.get("accuracy") is not None and all(trial.get(k) == advice.get(k) for k in keys)), None)
    for index, trial in enumerate(trials):
        trial["winner"] = index == chosen
    return trials


def _figures(metrics: dict[str, Any], classes: list[str], history: list, advice: dict[str, Any]) -> list[Figure]:
    """Confusion matrices, and the curves and per-stage bars where there is something to plot."""
    from transferkit.report.figures import confusion_matrix_png, stage_bars_png, training_curves_png

    shift = (advice.get("domain_shift") or {}).get("stages") or {}
    figures = [
        Figure("confusion_counts.png", "confusion matrix (counts)", confusion_matrix_png(metrics["confusion_matrix"], classes, normalise=False)),
        Figure("confusion_normalised.png", "confusion matrix (rows normalised)", confusion_matrix_png(metrics["confusion_matrix"], classes, normalise=True)),
    ]
    optional = [("training_curves.png", "training and validation curves", training_curves_png(history)),
                ("domain_shift.png", "domain shift per stage", stage_bars_png(shift, title="domain shift per stage (BatchNorm statistics)", ylabel="symmetric KL"))]
    for backbone, scores in (advice.get("transferability") or {}).items():
        optional.append((f"logme_{_safe(backbone)}.png", f"LogME per stage ({backbone})",
                         stage_bars_png(scores.get("stages") or {}, title=f"LogME per stage, {backbone}", ylabel="LogME")))
    figures += [Figure(name, caption, png) for name, caption, png in optional if png is not None]
    return figures


def _most_novel(classifier, images, pixels, probabilities, labels, novelty: np.ndarray | None) -> list[NovelImage]:
    """The :data:`TOP_NOVEL` images with the highest novelty, most novel first (none without a score)."""
    from transferkit.report.figures import image_png

    if novelty is None:
        return []
    predicted = probabilities.argmax(axis=1)
    flags = classifier.novelty_.unknown(novelty)
    chosen = np.argsort(-novelty, kind="stable")[:TOP_NOVEL]
    return [NovelImage(rank=rank, source=images.source_name(int(index)), true_label=labels[index],
                       predicted=str(classifier.classes_[predicted[index]]), probability=float(probabilities[index, predicted[index]]),
                       novelty=float(novelty[index]), unknown=bool(flags[index]),
                       thumbnail=Figure(f"novel_{rank:02d}.png", "image", image_png(np.asarray(pixels[index]), size=THUMBNAIL_PX)))
            for rank, index in enumerate(chosen, start=1)]


def _confident_mistakes(classifier, images, pixels, probabilities, labels, top_mistakes: int, steps) -> list[Mistake]:
    """The ``top_mistakes`` wrong predictions made with the highest probability, each with a heatmap."""
    from transferkit.report.cam import heatmaps, overlay
    from transferkit.report.figures import image_png

    predicted_index = probabilities.argmax(axis=1)
    predictions = np.asarray(classifier.classes_).astype(str)[predicted_index]
    wrong = np.flatnonzero(predictions != labels)
    confidence = probabilities[wrong, predicted_index[wrong]]
    chosen = wrong[np.argsort(-confidence, kind="stable")[:top_mistakes]]

    steps.next(f"heatmaps of {len(chosen)} mistakes")
    chosen_pixels = np.asarray(pixels[chosen])
    try:
        found = heatmaps(classifier.model_, chosen_pixels, classifier.preprocessing_, predicted_index[chosen])
        maps = [heatmap if useful else None for heatmap, useful in zip(found.maps, found.useful)]
        notes = [found.describe(i) for i in range(len(chosen))]
    except ConfigError:  # no convolutional stages (strategy pixels): the thumbnail stands alone
        maps, notes = [None] * len(chosen), ["no heatmap: this model has no convolutional stages"] * len(chosen)
    mistakes = [
        Mistake(
            rank=rank,
            source=images.source_name(int(index)),
            true_label=labels[index],
            predicted=str(predictions[index]),
            probability=float(probabilities[index, predicted_index[index]]),
            thumbnail=Figure(f"mistake_{rank:02d}.png", "image", image_png(image, size=THUMBNAIL_PX)),
            heatmap=Figure(f"mistake_{rank:02d}_heatmap.png", "heatmap" if heatmap is not None else "no useful heatmap",
                           image_png(_no_map(image) if heatmap is None else overlay(image, heatmap), size=THUMBNAIL_PX)),
            note=note,
        )
        for rank, (index, image, heatmap, note) in enumerate(zip(chosen, chosen_pixels, maps, notes), start=1)
    ]
    return mistakes


def _no_map(image: np.ndarray) -> np.ndarray:
    """The image greyed out: the place of a heatmap that shows nothing (never a flat tint)."""
    grey = image.astype(np.float32).mean(axis=2, keepdims=True).repeat(3, axis=2)
    return (grey * 0.5 + 64).astype(np.uint8)


def colour_scale_figure() -> Figure:
    """The heatmaps' colour scale, high evidence at the top."""
    from transferkit.report.cam import colour_scale
    from transferkit.report.figures import image_png

    return Figure("heatmap_scale.png", "heatmap colour scale: red = strong evidence for the predicted class, blue = none",
                  image_png(colour_scale(120, 14)))


def write_comparison_report(comparison: dict[str, Any], out_dir: str | os.PathLike, *, data_name: str) -> Path:
    """``report.html`` of ``transferkit compare``: the CV table and the bar chart with error bars."""
    from transferkit.report.figures import comparison_png

    chart = Figure("compare.png", "mean CV accuracy per strategy (error bar: std over folds)", comparison_png(comparison))
    summary = {"data": data_name, "comparison": comparison}
    return _write(Path(out_dir), "compare.html.j2", [chart], summary, {"summary": summary, "comparison": comparison, "chart": chart})


def binary_metrics(labels: Sequence[str], predictions: Sequence[str], positive: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy and F1 of "one of ``positive``" against the rest."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    truth = np.isin(np.asarray(labels).astype(str), list(positive))
    guess = np.isin(np.asarray(predictions).astype(str), list(positive))
    return {
        "binary_positive": [str(p) for p in positive],
        "binary_accuracy": float(accuracy_score(truth, guess)),
        "binary_balanced_accuracy": float(balanced_accuracy_score(truth, guess)),
        "binary_f1": float(f1_score(truth, guess, zero_division=0)),
    }


def _write(out: Path, template: str, figures: list[Figure], summary: dict[str, Any], context: dict[str, Any]) -> Path:
    """Write the figures, ``report.json`` (listing the figures under ``files``) and ``report.html``;
    then remove the figures an earlier report wrote to ``out`` that this one does not."""
    out.mkdir(parents=True, exist_ok=True)
    earlier = _earlier_figures(out)
    for figure in figures:
        (out / figure.name).write_bytes(figure.png)
    names = sorted(figure.name for figure in figures)
    (out / "report.json").write_text(json.dumps({**summary, "files": names}, indent=2, default=str))
    html = _environment().get_template(template).render(**context)
    path = out / "report.html"
    path.write_text(html, encoding="utf-8")
    for name in sorted(earlier - set(names)):
        (out / name).unlink(missing_ok=True)
    return path


def _earlier_figures(out: Path) -> set[str]:
    """The PNGs the report in ``out`` (if any) wrote: its ``report.json``'s ``files``, or, for one written
    before that list existed, its mistakes' images. Only plain ``.png`` names in ``out``: never a user's file."""
    try:
        earlier = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(earlier, dict):
        return set()
    names = earlier.get("files")
    if not isinstance(names, list):
        ranks = [m.get("rank") for m in earlier.get("mistakes") or [] if isinstance(m, dict)]
        names = [name for rank in ranks if isinstance(rank, int) for name in (f"mistake_{rank:02d}.png", f"mistake_{rank:02d}_heatmap.png")]
    return {name for name in names if isinstance(name, str) and name.endswith(".png") and Path(name).name == name
            and not name.startswith(".")}


def _environment():
    try:
        import jinja2
    except ImportError as exc:  # pragma: no cover - the dev and report extras install it
        raise MissingExtraError("reports need Jinja2; install it with: pip install 'transferkit[report]'") from exc
    # autoescape=True for every template: user-supplied strings are data, never markup.
    environment = jinja2.Environment(loader=jinja2.PackageLoader("transferkit.report", "templates"), autoescape=True,
                                     undefined=jinja2.ChainableUndefined)
    environment.filters["number"] = lambda value, digits=4: "-" if value is None else f"{value:.{digits}f}"
    return environment


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


class _Steps:
    """A rich progress bar over the report's steps (stderr; nothing when ``show`` is False)."""

    def __init__(self, show: bool, total: int) -> None:
        self.show, self.total = show, total

    def __enter__(self) -> _Steps:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("report: {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                  console=Console(stderr=True, emoji=False), disable=not self.show, transient=False)
        self._progress.__enter__()
        self._task = self._progress.add_task("starting", total=self.total)
        self._started = False
        return self

    def next(self, description: str) -> None:
        if self._started:
            self._progress.advance(self._task)
        self._started = True
        self._progress.update(self._task, description=description)

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self._progress.update(self._task, completed=self.total, description="done")
        self._progress.__exit__(*exc)
