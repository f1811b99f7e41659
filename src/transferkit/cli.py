"""The ``transferkit`` command line: thin typer commands over the library.

Each command parses options, calls the library, and prints. Errors are caught once, in
:func:`_user_errors`, and printed without a traceback: a user error
(:class:`~transferkit.errors.TransferkitError`, or an ``OSError`` such as a full disk) exits 1,
bad usage (click's own errors, :class:`~transferkit.errors.ConfigError`) exits 2, Ctrl-C exits
130 and says how to resume. ``transferkit --debug ...`` shows the traceback instead. Every
console prints user text literally (``markup=False``): a class named ``[/x]`` is just a name. Every table is a
:func:`~transferkit.report.tables.fold_table`, so no cell is cut on a narrow terminal.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import click
import numpy as np
import typer
from rich.console import Console
from typer.core import TyperCommand
from rich.text import Text

from transferkit.defaults import DEFAULTS
from transferkit.errors import ConfigError, TransferkitError
from transferkit.lines import Wrapped

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Turn a folder of labelled images into the best classifier a pretrained network allows.",
    pretty_exceptions_enable=False,
)
class _Command(TyperCommand):
    """Every command's help, as Unix tools print it: ``DATA`` rather than ``{data}`` in the usage
    line, flags without a ``<bool>`` value, and the registered strategies filled in where a help
    text names them (``{strategies}``: "svm | logistic | ..."; ``{strategy_list}``: "svm,logistic,...").

    The strategy names are read when the help is shown, not when this module is imported: the
    registry imports torch, and a command's start must not wait for it (``transferkit info``).
    A new strategy is listed without an edit here.
    """

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        params = self.get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""  # typer would show "<bool>" for a flag that takes no value
        if any("{strateg" in (getattr(item, "help", None) or "") or "_help_template" in item.__dict__ for item in [self, *params]):
            from transferkit.strategies import list_strategies

            names = list_strategies()
            fill = {"strategies": " | ".join(names), "strategy_list": ",".join(names)}
            for item in [self, *params]:
                template = item.__dict__.setdefault("_help_template", getattr(item, "help", None))
                if template:
                    item.help = template.format(**fill)
        super().format_help(ctx, formatter)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), piece) for piece in super().collect_usage_pieces(ctx)]


out = Console(emoji=False, markup=False, highlight=False)
err = Console(stderr=True, emoji=False, markup=False, highlight=False)
_debug = False  # --debug: let tracebacks through


def _print_version(value: bool) -> None:
    if value:
        from transferkit._version import __version__

        out.print(f"transferkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error (for a bug report, with `transferkit info`).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Turn a folder of labelled images into the best classifier a pretrained network allows."""
    global _debug
    _debug = debug or os.environ.get("TRANSFERKIT_DEBUG") == "1"
    if not _main_rank():
        out.quiet = True  # under torchrun every rank runs the command; rank 0 prints the results
    warnings.showwarning = _show_warning  # the program's own entry point: one line per warning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err.print(Text("warning: ", style="yellow") + _literal(str(message)))


def _literal(text: str) -> Text:
    """User text as rich Text, printable whatever bytes a file name held (no markup parsed)."""
    return Text(text.encode("utf-8", "backslashreplace").decode("utf-8"))


# typer 0.2x vendors its own click: its exceptions are not click's.
_PASS_THROUGH = (
    typer.exceptions.TyperException, typer.exceptions.Exit, typer.exceptions.Abort,
    click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort,
)  # fmt: skip


@contextlib.contextmanager
def _user_errors(*, resume_hint: Path | None = None) -> Iterator[None]:
    try:
        yield
    except _PASS_THROUGH:
        raise  # typer's usage errors (exit 2) and exits pass through
    except ConfigError as exc:
        if _debug:
            raise
        err.print(Text("error: ", style="bold red") + _literal(_cli_words(str(exc))))
        raise typer.Exit(2) from None
    except TransferkitError as exc:
        if _debug:
            raise
        err.print(Text("error: ", style="bold red") + _literal(_cli_words(str(exc))))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        if resume_hint is not None and (resume_hint / "checkpoint.pt").is_file():
            hint = f"the last checkpoint is in {resume_hint}: rerun the same command with --resume to continue."
        else:
            hint = "nothing was written."
        err.print(Text("interrupted; ", style="bold yellow") + _literal(hint))
        raise typer.Exit(130) from None
    except OSError as exc:
        if _debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        err.print(Text("error: ", style="bold red") + _literal(f"{exc.strerror or exc}{where}"))
        raise typer.Exit(1) from None
    except Exception as exc:  # noqa: BLE001 - the edge of the program: no traceback without --debug
        if _debug:
            raise
        err.print(
            Text("error: ", style="bold red")
            + _literal(f"unexpected {type(exc).__name__}: {exc}. Rerun with `transferkit --debug ...` for the traceback.")
        )
        raise typer.Exit(1) from None


LIBRARY_NAMES = {"augment": "--presets"}
"""Library parameters a command exposes under another flag (augment-preview's --presets), where the command has that flag."""


def _cli_words(message: str) -> str:
    """A library message in the words of the command line that is running.

    ``pass skip_bad=True (--skip-bad)`` becomes ``pass --skip-bad``, and ``ImageClassifier:
    class_weight expected ... Received: class_weight='balance'`` becomes ``--class-weight
    expected ... Received: --class-weight balance``, for the parameters this command has as flags.
    """
    message = re.sub(r"\b\w+=True \((--[\w-]+)\)", r"\1", message)
    # typer 0.2x runs its own vendored click: the running command's context lives there
    try:
        from typer._click import globals as typer_click  # typer 0.2x's vendored click (pinned in constraints-ci.txt)
    except ImportError:  # older typer uses click itself
        typer_click = None
    contexts = (getattr(module, "get_current_context", None) for module in (typer_click, click))
    ctx = next((found for getter in contexts if getter and (found := getter(silent=True)) is not None), None)
    if ctx is None:
        return message
    flags = {param.name.lower(): param.opts[0] for param in ctx.command.params if param.opts and param.opts[0].startswith("--")}
    for name, flag in LIBRARY_NAMES.items():
        if flag in flags.values():
            flags.setdefault(name, flag)
    match = re.match(r"^(?:\w+: )?(\w+) expected (.*?)\. Received: \1=(.*?)(\. Did you mean .*)?$", message, re.S)
    if match and match.group(1).lower() in flags:
        flag, value = flags[match.group(1).lower()], match.group(3)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        return f"{flag} expected {match.group(2)}. Received: {flag} {value}{match.group(4) or ''}"
    return message


def _main_rank() -> bool:
    """Whether this process writes files and prints results: always, except on ranks 1+ under torchrun.

    Read from torchrun's environment (as :func:`transferkit.training.runtime.is_main_process`
    does before the process group exists), so that no command imports torch for it.
    """
    return int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1 or int(os.environ.get("RANK", "0") or 0) == 0


def _check_jobs(jobs: int) -> None:
    if jobs != 1 and not (int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1):
        raise typer.BadParameter(
            f"under torchrun the ranks already share the work; joblib workers would each join the process group. "
            f"Use --jobs 1. Received: --jobs {jobs}", param_hint="--jobs",
        )


def _or_auto(value: Any) -> Any:
    """An option left unset on the command line means "auto": let the advisor or a default decide."""
    return "auto" if value is None else value


def _write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None or not _main_rank():
        return
    if path == STDOUT:
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    from transferkit.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))
    err.print(_literal(f"wrote {path}"))


@contextlib.contextmanager
def _results_to(json_path: Path | None) -> Iterator[None]:
    """With ``--json -`` stdout carries the JSON alone: tables and result lines go quiet, so it
    parses (``transferkit evaluate M D --json - | jq``); messages stay on stderr."""
    quiet = out.quiet
    out.quiet = quiet or json_path == STDOUT
    try:
        yield
    finally:
        out.quiet = quiet


def _check_model_dir(model_dir: Path) -> None:
    """Before torch is imported: MODEL_DIR is a folder (load_model checks the rest)."""
    if model_dir.suffix != ".onnx" and not model_dir.is_dir():
        from transferkit.errors import ModelFileError

        raise ModelFileError(f"no model folder at {model_dir}; expected a folder written by `transferkit fit --out`.")


def _resolve_data(data: str, skip_bad: bool = False):
    """DATA as an ImageSet, checked before torch is imported (a wrong path fails in well under a second)."""
    from transferkit.data import resolve_data

    return resolve_data(data, skip_bad=skip_bad)


def _decode_kept(images, size: int, *, skip_bad: bool, cache_dir, quiet: bool):
    """Pixels of ``images`` at ``size`` and the images kept: with ``skip_bad`` unreadable files are
    left out and listed on stderr (also with --quiet: never a file dropped unmentioned)."""
    from transferkit.data import decode_images

    decoded = decode_images(images, size, skip_bad=skip_bad, cache_dir=cache_dir, progress=not quiet)
    skipped = list(images.skipped) + list(decoded.skipped)
    _list_skipped(skipped)
    return decoded.pixels, images.subset(decoded.indices), skipped


def _list_skipped(skipped: list) -> None:
    """Name the files left out (the first 20; all are in --json) on stderr: never a file dropped unmentioned."""
    if not skipped:
        return
    err.print(_literal(f"skipped {len(skipped)} file(s):"))
    for item in skipped[:20]:
        err.print(_literal(f"  {item.path}: {item.reason}"))
    if len(skipped) > 20:
        err.print(_literal(f"  ... and {len(skipped) - 20} more (all in --json)"))


def _check_output_file(path: Path | None, option: str) -> None:
    """Before any work: ``path`` can be written (not a folder; its folder exists or can be made)."""
    if path is None:
        return
    if path.is_dir():
        raise typer.BadParameter(f"expected a file name. Received: a folder, {path}", param_hint=option)
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise typer.BadParameter(f"cannot write {path}: {parent} is not a writable folder.", param_hint=option)


def _check_fit_options(strategy: str, freeze: int | None, batch_size: int, c: float | None) -> None:
    """Option combinations the library would only reject (or ignore) after minutes of work."""
    if c is not None and not (math.isfinite(c) and c > 0):
        raise typer.BadParameter(f"expected a finite number > 0. Received: {c}", param_hint="--C")
    if batch_size < 1:
        raise typer.BadParameter(f"expected a positive integer. Received: {batch_size}", param_hint="--batch-size")
    if batch_size < 2 and strategy in ("auto", "finetune", "full", "scratch"):
        raise typer.BadParameter(
            f"expected at least 2 for --strategy {strategy}: training BatchNorm layers needs 2+ images per batch. "
            f"Received: {batch_size}",
            param_hint="--batch-size",
        )
    if freeze is not None and strategy not in ("auto", "finetune"):
        raise typer.BadParameter(
            f"--freeze applies to --strategy finetune (or auto) only; {strategy} would ignore it. Received: --freeze {freeze}",
            param_hint="--freeze",
        )


def _peak_memory_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


DataArg = Annotated[str, typer.Argument(metavar="DATA", help="Folder (one sub-folder per class), CSV (path,label), or a built-in name: elpv, elpv:train, elpv:test.")]
ModelArg = Annotated[Path, typer.Argument(metavar="MODEL_DIR", help="Model folder written by `transferkit fit --out`.")]
ReportOpt = Annotated[Optional[Path], typer.Option("--report", help="Also write report.html with plots and heatmaps to this folder.")]
STDOUT = Path("-")

# One table of the options several commands share. Each command declares them from here (the
# same flag, help and default everywhere), and tests/test_cli.py walks every command against
# SHARED_OPTIONS and DATA_OPTIONS: an option added to one command and not to its siblings fails.
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad", help="Leave unreadable images out (each is listed, also with --quiet) instead of stopping.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress output (results, warnings and skipped files still print).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto | fp32 | bf16 | fp16. auto: training measures bf16 against fp32 where the CPU runs it natively; predictions are fp32 on a CPU (the ONNX file's answers).")]
CacheOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="Cache folder for decoded images and features (default ~/.cache/transferkit or $TRANSFERKIT_CACHE).")]
JobsOpt = Annotated[int, typer.Option("--jobs", help="Run independent (strategy, fold) jobs in parallel through joblib; -1: one per core. Each job uses $TRANSFERKIT_JOB_THREADS torch threads (default 1), so any N gives the same table.")]
BackendOpt = Annotated[Optional[str], typer.Option("--backend", help="joblib backend for --jobs: loky (this machine, default), threading (one job at a time, in this process), dask (the scheduler in $DASK_SCHEDULER_ADDRESS) or ray ($RAY_ADDRESS).")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", allow_dash=True, help="Also write the results as JSON to this file; '-' prints the JSON instead of the tables (stdout parses as JSON).")]
UnknownThresholdOpt = Annotated[Optional[float], typer.Option("--unknown-threshold", help="Flag images whose novelty (how unlike the training images they are: cosine distance to the nearest training image) is above this as unknown; default: the threshold calibrated at fit time (5 % of held-out training images flagged).")]
BudgetOpt = Annotated[str, typer.Option("--budget-minutes", help="strategy auto: the whole fit (probe, candidate search incl. a trained network, final fit) within this many minutes on this machine; candidates that would not fit are skipped, saying so. auto: 10; none: no bound.")]

SHARED_OPTIONS: dict[str, Any] = {
    "--skip-bad": SkipBadOpt, "--quiet": QuietOpt, "--device": DeviceOpt, "--precision": PrecisionOpt, "--cache-dir": CacheOpt,
    "--jobs": JobsOpt, "--backend": BackendOpt, "--json": JsonOpt, "--budget-minutes": BudgetOpt,
    "--unknown-threshold": UnknownThresholdOpt,
}
"""Flag -> its one declaration; every command that has the flag declares it from here."""
DATA_OPTIONS = ("--skip-bad", "--quiet", "--device", "--precision", "--cache-dir")
"""What every command that reads images takes, as ``fit`` does (``serve`` reads uploads: no --skip-bad, no cache)."""
COMMAND_DATA_OPTIONS: dict[str, tuple[str, ...]] = {
    "fit": DATA_OPTIONS, "predict": DATA_OPTIONS, "evaluate": DATA_OPTIONS, "report": DATA_OPTIONS,
    "audit": DATA_OPTIONS, "suggest": DATA_OPTIONS,
    "serve": ("--quiet", "--device", "--precision"),
}


# long: typer declares each of its ~30 options as a parameter, one line each
@app.command(cls=_Command)
def fit(
    data: DataArg,
    out_dir: Annotated[Path, typer.Option("--out", help="Model folder to write (model.safetensors + config.json + checkpoint).")],
    backbone: Annotated[str, typer.Option(help="Registered backbone (see `transferkit models`) or any timm model name.")] = DEFAULTS["backbone"],
    strategy: Annotated[str, typer.Option(help="auto (measure the data, follow the playbook) | {strategies}.")] = "auto",
    freeze: Annotated[Optional[int], typer.Option(help="finetune: freeze the stem and the first N stages (default 3); ensemble: its network is finetune with N, full without.")] = None,
    epochs: Annotated[int, typer.Option(help="Network strategies: maximum epochs; early stopping may end sooner (the fit says when and why). --strategy auto sizes the network's epochs to --budget-minutes instead (up to 30).")] = DEFAULTS["epochs"],
    lr: Annotated[float, typer.Option(help="Learning rate of the new head (pretrained layers: lr x backbone-lr-factor).")] = DEFAULTS["lr"],
    backbone_lr_factor: Annotated[str, typer.Option(help="Pretrained layers train at lr times this. auto: 0.1 (the playbook's 10x smaller), measured against 1 by a short pilot under --strategy auto.")] = "auto",
    image_size: Annotated[Optional[int], typer.Option(help="Square image side in pixels (default: the backbone's).")] = None,
    augment: Annotated[str, typer.Option(help="Network strategies: a preset (none | light | standard | strong) or a composition of hflip, vflip, rot90, rotate, translate, scale, color, e.g. 'rotate,translate' (no flips). auto: with --strategy auto, the flips and 90-degree turns the held-out images look alike under (the symmetry test); else standard.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per training step.")] = DEFAULTS["batch_size"],
    val_fraction: Annotated[float, typer.Option(help="Stratified hold-out share for early stopping.")] = DEFAULTS["val_fraction"],
    patience: Annotated[int, typer.Option(help="Epochs without better validation loss before stopping.")] = DEFAULTS["patience"],
    regularization: Annotated[str, typer.Option(help="Network strategies: none | light (stochastic depth, a weight average kept if it validates better) | strong (also mixup/cutmix, random erasing). auto: with --strategy auto a pilot keeps the strongest within the noise of the best; else none.")] = DEFAULTS["regularization"],
    sampling: Annotated[str, typer.Option(help="Network strategies: shuffle (each image once per epoch) | balanced (rare classes drawn more often). auto: shuffle, unless auto's pilot measures balanced draws better on imbalanced classes.")] = DEFAULTS["sampling"],
    class_weight: Annotated[Optional[str], typer.Option(help="'balanced' to weight classes by inverse frequency; 'none' for equal weights (default: the advisor's choice with --strategy auto, else none).")] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same model.")] = DEFAULTS["seed"],
    c: Annotated[Optional[float], typer.Option("--C", help="svm/logistic: regularisation (default: chosen by inner CV).")] = None,
    feature_views: Annotated[int, typer.Option(help="svm/logistic: augmented views per training image.")] = DEFAULTS["feature_views"],
    prefix_views: Annotated[int, typer.Option(help="head/finetune: compute the frozen stages once for this many augmented views per image and train only the rest on the cached activations (0: plain loop).")] = DEFAULTS["prefix_views"],
    head_init: Annotated[str, typer.Option(help="head/finetune/full: start the new head at random (random) or from a linear probe on the network's own features (probe: LP-FT).")] = DEFAULTS["head_init"],
    budget_minutes: BudgetOpt = "auto",
    symmetries: Annotated[str, typer.Option(help="svm/logistic (and ensemble's svm): average features over image flips (and turns by 90 degrees) at fit and predict (auto: measured | none | flips | dihedral: flips and 90-degree turns).")] = "auto",
    feature_layers: Annotated[str, typer.Option(help="svm/logistic (and ensemble's svm): the features read (auto: measured | bottleneck: the layer before the classifier | stages: that plus every stage's pooled output, for data far from ImageNet).")] = "auto",
    weights: Annotated[Optional[Path], typer.Option(help="Local pretrained weights file (.safetensors or .pth).")] = None,
    init: Annotated[Optional[Path], typer.Option("--init", help="Start from a saved model: its backbone, strategy and image size; a network warm-starts from its weights (new head rows for new classes), a feature strategy reuses its cached features. DATA holds the same classes or more.")] = None,
    skip_bad: SkipBadOpt = False,
    cache_dir: CacheOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted fit from the checkpoint in --out.")] = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    cv: Annotated[Optional[int], typer.Option("--cv", help="First report K-fold cross-validated scores, then refit on all data.")] = None,
    jobs: JobsOpt = 1,
    backend: BackendOpt = None,
    json_path: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Fit a classifier on DATA and save it to --out."""
    _check_fit_options(strategy, freeze, batch_size, c)
    _check_jobs(jobs)
    _check_output_file(json_path, "--json")
    with _user_errors(resume_hint=out_dir), _results_to(json_path):
        images = _resolve_data(data, skip_bad)  # before torch is imported: a wrong path fails at once
        from transferkit.card import CARD_NAME, probability_note
        from transferkit.estimator import ImageClassifier
        from transferkit.evaluation.metrics import imbalance_note
        from transferkit.persistence import check_output_folder, save_model

        check_output_folder(out_dir)  # before any work: a bad --out must not cost a whole fit
        replacing = (out_dir / "config.json").is_file() and not resume
        classifier = ImageClassifier(
            backbone=backbone,
            strategy=strategy,
            freeze=_or_auto(freeze),
            epochs=epochs,
            lr=lr,
            backbone_lr_factor=_positive_or_auto(backbone_lr_factor, "--backbone-lr-factor"),
            image_size=_or_auto(image_size),
            augment=augment,
            batch_size=batch_size,
            val_fraction=val_fraction,
            patience=patience,
            class_weight=_or_auto(class_weight),
            regularization=regularization,
            sampling=sampling,
            seed=seed,
            C=_or_auto(c),
            feature_views=feature_views,
            prefix_views=prefix_views,
            head_init=head_init,
            budget_minutes=_budget_minutes(budget_minutes),
            symmetries=symmetries,
            feature_layers=feature_layers,
            weights=str(weights) if weights else None,
            skip_bad=skip_bad,
            cache_dir=str(cache_dir) if cache_dir else None,
            checkpoint_dir=str(out_dir),
            resume=resume,
            device=device,
            precision=precision,
            verbose=not quiet,
        )
        if init is not None:
            _check_model_dir(init)
            from transferkit.persistence import init_params

            classifier.set_params(**init_params(init, list(images.classes)))
            err.print(_literal(f"starting from {init}: {classifier.strategy} on {classifier.backbone} at {classifier.image_size} px"))
        auto = classifier.strategy == "auto"
        cv_report = _cross_validate_before_fit(classifier, images, cv, jobs, backend) if cv and not auto else None
        classifier.fit(images)
        if cv and auto:  # auto's candidate is known only after its search
            cv_report = _cross_validate_before_fit(classifier, images, cv, jobs, backend)
        history = classifier.history_["history"]
        metrics = {"validation_accuracy": classifier.validation_score_, "validation": classifier.validation_}
        if cv_report is not None:
            metrics["cv"] = cv_report
        save_model(classifier, out_dir, metrics=metrics, data=data)
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
            "estimated_fit_seconds": None if classifier.estimated_fit_seconds_ is None else round(classifier.estimated_fit_seconds_, 1),
            "peak_memory_mb": round(_peak_memory_mb(), 1),
            "probabilities": probability_note(classifier.history_),
            "model_card": str(out_dir / CARD_NAME),
            "precision": {key: classifier.history_.get(f"precision{suffix}") for key, suffix in
                          (("chosen", ""), ("why", "_why"), ("measured", "_measured"))},
            "skipped": [vars(s) for s in classifier.skipped_],
            "cv": cv_report,
            "class_counts": classifier.class_counts_,
            "imbalance_note": imbalance_note(classifier.class_counts_),
            "history": history,
        }
        val = _describe_validation(classifier.validation_)
        if classifier.advice_ is not None and classifier.advice_.search is not None and quiet:
            # Without --quiet the estimator has already printed the choice and its reasons.
            for line in classifier.advice_.recommendation.explanation(classifier.advice_.search.chosen.candidate.label):
                out.print(Wrapped.prose(line[4:], first="  - ") if line.startswith("  - ") else _literal(line))
        if quiet and report["imbalance_note"]:
            err.print(_literal(f"note: {report['imbalance_note']}"))  # without --quiet the estimator printed it
        if quiet:  # without --quiet the estimator has listed them
            _list_skipped(classifier.skipped_)
        out.print(_literal(f"fitted {report['strategy']} on {data}: {val}; {report['fit_seconds']} s; peak memory {report['peak_memory_mb']:.0f} MB"))
        written = "replaced the model in" if replacing else "model written to"
        out.print(_literal(f"{written} {out_dir} (model card: {out_dir / CARD_NAME})"))
        _write_json(json_path, report)


def _describe_validation(validation: dict[str, Any] | None) -> str:
    """The fit's own score, named by what it is, next to the majority-class rate."""
    if validation is None:
        return "no validation score (C given, or --val-fraction 0)"
    balanced = "" if validation["balanced_accuracy"] is None else f", balanced accuracy {validation['balanced_accuracy']:.4f}"
    what = "inner-CV accuracy of the chosen C" if validation["kind"] == "inner CV" else "held-out split accuracy"
    return f"{what} {validation['accuracy']:.4f} (majority-class rate {validation['majority_class_rate']:.4f}{balanced})"


def _cross_validate_before_fit(classifier, data, cv: int, jobs: int = 1, backend: str | None = None) -> dict[str, Any]:
    """``fit --cv``: the classifier's candidate on every fold, through the selection engine. With
    ``--strategy auto`` (fitted first) the candidate auto chose, on the same images it chose on."""
    from transferkit.data import decode_images, duplicate_groups, resolve_data
    from transferkit.evaluation.metrics import majority_class_rate
    from transferkit.selection.candidates import candidate_from_params
    from transferkit.selection.compare import cross_validate, cv_result

    images = resolve_data(data, skip_bad=classifier.skip_bad)
    params = {**classifier.get_params(), "verbose": False, "checkpoint_dir": None, "resume": False}
    search = classifier.advice_.search if getattr(classifier, "advice_", None) is not None else None
    candidate = search.chosen.candidate if search is not None else candidate_from_params(params, "fit --cv")
    usable = decode_images(images, candidate.image_size, skip_bad=classifier.skip_bad, cache_dir=classifier.cache_dir,
                           progress=classifier.verbose)
    images = images.subset(usable.indices)  # what the fit reads: unreadable files left out with --skip-bad
    base = {**params, **dict(candidate.params)}
    engine, trials, _ = cross_validate(images, [candidate], cv=cv, base=base, on_fold=_print_fold, n_jobs=jobs, backend=backend)
    result = cv_result(trials[0], engine)
    low, high = result.ci95
    rate, _ = majority_class_rate(images.labels)
    balanced = float(np.mean([fold.balanced_accuracy for fold in result.folds]))
    after = ("; auto chose it on these images, so the figure is optimistic" if search is not None else "; refitting on all data")
    out.print(f"{cv}-fold CV accuracy of {candidate.label} {result.mean:.4f} ± {result.std:.4f} (95% Wilson interval "
              f"{low:.4f}-{high:.4f}; majority-class rate {rate:.4f}, balanced accuracy {balanced:.4f}){after}")
    report = result.to_dict()
    report["candidate"] = candidate.to_dict()
    report["majority_class_rate"] = rate
    groups = duplicate_groups(images)
    report["grouped_copies"] = 0 if groups is None else int(len(groups) - len(np.unique(groups)))
    return report


def _print_fold(strategy: str, score) -> None:
    err.print(f"  {strategy} fold {score.fold}: accuracy {score.accuracy:.4f}, balanced {score.balanced_accuracy:.4f}  ({score.fit_seconds:.0f} s)")


def _default_size(backbone: str) -> int:
    from transferkit.backbones import get_backbone_spec

    return get_backbone_spec(backbone).preprocessing.input_size


@app.command(cls=_Command)
def compare(
    data: DataArg,
    strategies: Annotated[str, typer.Option(help="Comma-separated, any of: {strategy_list}; all: every registered strategy (the ones auto races).")] = "all",
    cv: Annotated[int, typer.Option("--cv", help="Stratified K-fold cross-validation (grouped when the CSV has a group column).")] = 5,
    repeats: Annotated[int, typer.Option(help="Repeat the K folds with new shuffles.")] = 1,
    jobs: JobsOpt = 1,
    backend: BackendOpt = None,
    backbone: Annotated[str, typer.Option(help="Backbone for every strategy.")] = "efficientnet_lite0",
    image_size: Annotated[Optional[int], typer.Option(help="Override every strategy's image size.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Override every network strategy's epochs.")] = None,
    seed: Annotated[int, typer.Option(help="Folds and training seed.")] = 0,
    weights: Annotated[Optional[Path], typer.Option(help="Local pretrained weights file.")] = None,
    cache_dir: CacheOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Refit the best strategy on all data and save it here.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Bar chart PNG (default: next to --json or --out).")] = None,
    json_path: JsonOpt = None,
    report_dir: Annotated[Optional[Path], typer.Option("--report", help="Also write report.html (CV table, bar chart with error bars) to this folder.")] = None,
) -> None:
    """Cross-validate several strategies on the same folds and rank them."""
    _check_jobs(jobs)
    _check_output_file(json_path, "--json")
    _check_output_file(plot, "--plot")
    with _user_errors(), _results_to(json_path):
        images = _resolve_data(data)  # before torch is imported: a wrong path fails at once
        from transferkit.data import describe_conflicts, label_conflicts
        from transferkit.estimator import ImageClassifier
        from transferkit.selection.candidates import strategy_params
        from transferkit.selection.compare import compare_strategies, parse_strategies
        from transferkit.evaluation.metrics import imbalance_note, majority_class_rate
        from transferkit.persistence import check_output_folder, save_model
        from transferkit.report import plot_comparison
        from transferkit.report.tables import comparison_table

        if out_dir is not None:
            check_output_folder(out_dir)
        names = parse_strategies(strategies)
        base = {"backbone": backbone, "seed": seed, "weights": str(weights) if weights else None,
                "cache_dir": str(cache_dir) if cache_dir else None, "device": device, "precision": precision}
        overrides = {k: v for k, v in {"image_size": image_size, "epochs": epochs}.items() if v is not None}
        err.print(_literal(f"comparing {', '.join(names)} with {cv}-fold CV x {repeats} on {images.describe()}"))
        conflicts = label_conflicts(images)
        if conflicts:
            warnings.warn(describe_conflicts(images, conflicts), stacklevel=1)
        comparison = compare_strategies(images, names, cv=cv, repeats=repeats, base=base, overrides=overrides, on_fold=_print_fold,
                                        n_jobs=jobs, backend=backend)
        out.print(comparison_table(comparison, data))
        best = comparison.best.strategy
        rate, majority = majority_class_rate(images.labels)
        out.print(_literal(f"best: {best} (* above): {comparison.reason}"))
        out.print(_literal(f"CV accuracies against the majority-class rate {rate:.4f} (always {majority!r}); "
                           f"{comparison.seconds:.0f} s in all"))
        note = imbalance_note(images.labels)
        if note is not None:
            err.print(_literal(f"note: {note}"))
        report = comparison.to_dict()
        report["majority_class_rate"] = rate
        plot = plot or (json_path.with_suffix(".png") if json_path else (out_dir / "compare.png" if out_dir else None))
        if out_dir is not None:  # before the plot: the model folder is swapped in whole
            params = strategy_params(best, base, overrides)
            classifier = ImageClassifier(**params, verbose=True).fit(images)
            save_model(classifier, out_dir, metrics={"cv": comparison.best.to_dict()}, data=data)
            out.print(_literal(f"best model ({best}) refitted on all data and written to {out_dir}"))
            report["model"] = str(out_dir)
        if plot is not None and _main_rank():
            plot_comparison(comparison, plot)
            err.print(_literal(f"wrote {plot}"))
            report["plot"] = str(plot)
        if report_dir is not None and _main_rank():
            from transferkit.report.build import write_comparison_report

            out.print(f"wrote {write_comparison_report(comparison.to_dict(), report_dir, data_name=data)}")
        _write_json(json_path, report)


@app.command(cls=_Command)
def advise(
    data: DataArg,
    backbone: Annotated[Optional[list[str]], typer.Option(help="Candidate backbone (repeat for several; default: every one with offline weights).")] = None,
    max_images: Annotated[Optional[int], typer.Option(help="Measure on a stratified sample of about this many images (default: all).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Measure (and race) at this image size instead of each backbone's and strategy's own.")] = None,
    threshold: Annotated[Optional[list[str]], typer.Option(help="Change a rule's threshold, NAME=VALUE (repeatable), e.g. small_data=500. See AdviceThresholds.")] = None,
    measure: Annotated[bool, typer.Option("--measure", help="Also race, under CV, every strategy `fit --strategy auto` would race on DATA (svm, logistic, pixels on small sets, the trained network) and say whether the measurement agrees with the rule.")] = False,
    budget_minutes: BudgetOpt = "auto",
    epochs: Annotated[int, typer.Option(help="Epochs of the planned fit (for the --budget-minutes estimate).")] = 10,
    race_images: Annotated[int, typer.Option(help="--measure: race on a stratified sample of about this many images.")] = 600,
    race_cv: Annotated[int, typer.Option(help="--measure: folds (= successive-halving rounds) of the race.")] = 3,
    jobs: JobsOpt = 1,
    backend: BackendOpt = None,
    race_epochs: Annotated[Optional[int], typer.Option(help="--measure: epochs of every network strategy (default: compare's per-strategy defaults).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Local pretrained weights file (with exactly one --backbone).")] = None,
    cache_dir: CacheOpt = None,
    device: DeviceOpt = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the samples and folds.")] = 0,
    json_path: JsonOpt = None,
) -> None:
    """Recommend how to train on DATA (strategy, backbone, freeze depth, learning rate, augmentation, image size), and why."""
    _check_jobs(jobs)
    _check_output_file(json_path, "--json")
    with _user_errors(), _results_to(json_path):
        images = _resolve_data(data)  # before torch is imported: a wrong path fails at once
        from transferkit.advise import advise as advise_data
        from transferkit.selection.auto import auto_strategies
        from transferkit.selection.race import race_strategies
        from transferkit.report.tables import race_table

        err.print(_literal(f"measuring {images.describe()}"))
        advice = advise_data(images, backbones=backbone, max_images=max_images, image_size=image_size, thresholds=_thresholds(threshold),
                             weights_path=weights, device=device, seed=seed, epochs=epochs,
                             budget_seconds=_budget_seconds(_budget_minutes(budget_minutes)))
        report = advice.to_dict()
        _print_advice(advice)
        if measure:
            rec = advice.recommendation
            err.print(f"racing strategies on about {min(race_images, len(images))} of the {len(images)} images, "
                      f"{race_cv} folds (successive halving)")
            base = {"backbone": rec.backbone, "seed": seed, "weights": str(weights) if weights else None,
                    "cache_dir": str(cache_dir) if cache_dir else None, "device": device, "class_weight": rec.class_weight or "none"}
            race = race_strategies(
                images, rec.strategy, candidates=auto_strategies(advice.facts, rec), cv=race_cv, max_images=race_images, base=base,
                advised_params={"freeze": rec.freeze} if rec.strategy == "finetune" else {},
                overrides={k: v for k, v in {"epochs": race_epochs, "image_size": image_size}.items() if v},
                on_fold=_print_fold, n_jobs=jobs, backend=backend,
            )
            out.print(race_table(race))
            out.print(Wrapped.prose(race.verdict()))
            report["race"] = race.to_dict()
        _write_json(json_path, report)


def _budget_minutes(text: str) -> float | str | None:
    """``--budget-minutes``: a positive number, ``auto`` (the default budget) or ``none`` (no bound)."""
    if text.strip().lower() == "none":
        return None
    return _positive_or_auto(text, "--budget-minutes", "a positive number of minutes, auto or none")


def _budget_seconds(minutes: float | str | None) -> float | None:
    """``--budget-minutes`` in seconds: auto is fit's default budget (10 minutes), none no bound."""
    if minutes == "auto":
        from transferkit.estimator import DEFAULT_BUDGET_MINUTES

        return 60.0 * DEFAULT_BUDGET_MINUTES
    return None if minutes is None else 60.0 * float(minutes)


def _positive_or_auto(text: str, option: str, expected: str = "a positive number or auto") -> float | str:
    """A positive number, or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise typer.BadParameter(f"expected {expected}. Received: {text!r}", param_hint=option)
    return value


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
    from transferkit.report.tables import recommendation_table

    rec, facts, shift = advice.recommendation, advice.facts, advice.domain_shift
    out.print(recommendation_table(rec))
    out.print("why:")
    for reason in rec.reasons:
        out.print(Wrapped.prose(reason, first="  - "))
    for warning in rec.warnings:
        out.print(Wrapped.prose(_literal(warning).plain, first="  warning: "))
    counts = ", ".join(f"{name} {count}" for name, count in facts.class_counts.items())
    out.print(Wrapped.prose(f"data: {facts.n_samples} images, {facts.n_classes} classes ({counts}); imbalance {facts.imbalance:.1f}; "
                            f"median size {facts.height[1]:.0f}x{facts.width[1]:.0f} px; grayscale {facts.grayscale_fraction:.0%}; "
                            f"{facts.duplicates} duplicates", indent="  "))
    stages = ", ".join(f"{name} {value:.2f}" for name, value in shift.stage_shift.items())
    entropy = "-" if shift.imagenet_entropy is None else f"{shift.imagenet_entropy:.3f}"
    score = "-" if shift.score is None else f"{shift.score:.3f}"
    out.print(Wrapped.prose(f"domain shift {score} (per stage: {stages or '-'}); ImageNet prediction entropy {entropy}", indent="  "))
    for name, scores in advice.transferability.items():
        per_stage = ", ".join(f"{stage} {value:.2f}" for stage, value in scores["stages"].items())
        out.print(Wrapped.prose(f"transferability (LogME) of {name}: bottleneck {scores['bottleneck']:.3f}; per stage: {per_stage}",
                                indent="  "))
    out.print(f"measured on {advice.probed_images} images in {advice.seconds:.1f} s", markup=False, highlight=False)


@app.command(cls=_Command)
def evaluate(
    model_dir: ModelArg,
    data: DataArg,
    json_path: JsonOpt = None,
    unknown_as_errors: Annotated[bool, typer.Option("--unknown-as-errors", help="Score images of classes the model never saw as errors (default: stop and name those classes).")] = False,
    skip_bad: SkipBadOpt = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    cache_dir: CacheOpt = None,
    report_dir: ReportOpt = None,
    unknown_threshold: UnknownThresholdOpt = None,
) -> None:
    """Score a saved model on labelled DATA: accuracy, balanced accuracy, macro-F1, confusion matrix, share flagged unknown."""
    _check_output_file(json_path, "--json")
    with _user_errors(), _results_to(json_path):
        started = time.perf_counter()
        _check_model_dir(model_dir)
        images = _resolve_data(data, skip_bad)  # before torch is imported: a wrong path fails at once
        from collections import Counter

        from transferkit.data import train_test_overlap
        from transferkit.data.near_copies import near_copies_of_training
        from transferkit.data.builtin import binary_metrics_if_builtin
        from transferkit.errors import DataError
        from transferkit.evaluation import classification_metrics
        from transferkit.persistence import load_model
        from transferkit.report.tables import confusion_table, metrics_table

        classifier = load_model(model_dir, device=device, precision=precision, cache_dir=str(cache_dir) if cache_dir else None)
        known = {str(c) for c in classifier.classes_}
        unknown = Counter(label for label in images.labels if label not in known)
        if unknown and not unknown_as_errors:
            listed = ", ".join(f"{name!r} ({count} image{'s' if count != 1 else ''})" for name, count in sorted(unknown.items()))
            raise DataError(
                f"{data} holds {sum(unknown.values())} image(s) of classes the model was not trained on: {listed}. "
                f"The model knows {', '.join(repr(c) for c in sorted(known))}. Remove those images, or pass "
                "--unknown-as-errors to score them as errors."
            )
        pixels, images, skipped = _decode_kept(images, classifier.image_size_, skip_bad=skip_bad, cache_dir=classifier.cache_dir, quiet=quiet)
        probabilities, novelty = classifier.predict_proba(pixels, return_novelty=True)
        predictions = np.asarray(classifier.classes_).astype(str)[probabilities.argmax(axis=1)]  # by name, as the labels of DATA
        classes = [str(c) for c in classifier.classes_] + sorted(unknown)
        metrics = classification_metrics(images.labels, predictions, classes)
        metrics["unknown_classes"] = dict(sorted(unknown.items()))
        metrics["train_test_overlap"] = train_test_overlap(classifier.training_digests_, images)
        metrics["train_test_near_duplicates"] = near_copies_of_training(classifier, [images.source_name(i) for i in range(len(images))], pixels)
        metrics.update(binary_metrics_if_builtin(data, images.labels, predictions))
        metrics["skipped"] = [vars(item) for item in skipped]
        metrics["novelty"] = _novelty_note(classifier, unknown_threshold, novelty)
        metrics["seconds"] = round(time.perf_counter() - started, 1)
        if unknown:
            err.print(_literal(f"scoring {sum(unknown.values())} image(s) of unknown classes ({', '.join(sorted(unknown))}) as errors"))
        _warn_about_test_data(metrics)
        out.print(metrics_table(metrics, title=f"{model_dir} on {data} (n={metrics['n']})"))
        out.print(confusion_table(metrics))
        summary = (f"test accuracy {metrics['accuracy']:.4f} (majority-class rate {metrics['majority_class_rate']:.4f})  "
                   f"balanced accuracy {metrics['balanced_accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}")
        if "binary_accuracy" in metrics:
            summary += f"  binary accuracy {metrics['binary_accuracy']:.4f}"
        out.print(summary)
        if metrics["novelty"]["flagged"] is not None:
            flagged = metrics["novelty"]
            out.print(f"flagged unknown (novelty above {flagged['threshold']:.4g}): {flagged['flagged']} of {metrics['n']} "
                      f"({flagged['flagged_share']:.1%}); the calibrated threshold flags about {flagged['false_alarm_rate']:.0%} "
                      "of images like the training images")
        _write_json(json_path, metrics)
        if report_dir is not None:
            _write_model_report(model_dir, data, report_dir, classifier=classifier, images=images, progress=not quiet)


def _warn_about_test_data(metrics: dict[str, Any]) -> None:
    overlap, absent = metrics.get("train_test_overlap"), metrics.get("absent_classes") or []
    near = metrics.get("train_test_near_duplicates") or []
    if overlap:
        err.print(Text("warning: ", style="yellow") + _literal(
            f"{overlap} of the {metrics['n']} test images are byte copies of training images: the model has seen "
            "them, so these scores overstate what it does on new images. Remove the copies from the test data."))
    if len(near) > (overlap or 0):
        shown = "; ".join(f"{item['test']} ~ {item['train']} ({item['similarity']:.3f})" for item in near[:5])
        more = f"; and {len(near) - 5} more (all in --json)" if len(near) > 5 else ""
        err.print(Text("warning: ", style="yellow") + _literal(
            f"{len(near)} of the {metrics['n']} test images are near-copies (resized, re-encoded, shifted or identical) of "
            f"training images: {shown}{more}. Scores on them overstate what the model does on new pictures."))
    if absent:
        err.print(Text("note: ", style="yellow") + _literal(
            f"no test images of {', '.join(repr(c) for c in absent)}: balanced accuracy and macro-F1 average over the "
            f"{len(metrics['classes']) - len(absent)} classes present."))


@app.command(cls=_Command)
def audit(
    data: DataArg,
    json_path: JsonOpt = None,
    report_dir: Annotated[Optional[Path], typer.Option("--report", help="Also write audit.html (thumbnails of every finding, the learning curve) to this folder.")] = None,
    budget_minutes: BudgetOpt = "auto",
    backbone: Annotated[str, typer.Option(help="Backbone whose frozen features score the images.")] = "efficientnet_lite0",
    image_size: Annotated[Optional[int], typer.Option(help="Square image side in pixels (default: the backbone's).")] = None,
    cv: Annotated[int, typer.Option("--cv", help="Folds of the out-of-fold probabilities.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the folds and the learning curve's subsets.")] = 0,
    weights: Annotated[Optional[Path], typer.Option(help="Local pretrained weights file.")] = None,
    skip_bad: SkipBadOpt = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    cache_dir: CacheOpt = None,
) -> None:
    """Look at labelled DATA for wrong labels, near-duplicates and outliers, and measure what more labels would buy."""
    _check_output_file(json_path, "--json")
    if cv < 2:
        raise typer.BadParameter(f"expected an integer >= 2. Received: {cv}", param_hint="--cv")
    with _user_errors(), _results_to(json_path):
        images = _resolve_data(data, skip_bad)  # before torch is imported: a wrong path fails at once
        from transferkit.audit.run import audit_images
        from transferkit.data import check_classes

        check_classes(images, min_per_class=cv, purpose=f"out-of-fold probabilities ({cv} folds)")  # before decoding
        size = image_size or _default_size(backbone)
        pixels, images, skipped = _decode_kept(images, size, skip_bad=skip_bad, cache_dir=cache_dir, quiet=quiet)
        say = (lambda text: None) if quiet else (lambda text: err.print(_literal(f"audit: {text}")))
        result = audit_images(images, pixels, backbone=backbone, weights=str(weights) if weights else None,
                              cache_dir=str(cache_dir) if cache_dir else None, device=device, precision=precision, cv=cv, seed=seed,
                              budget_seconds=_budget_seconds(_budget_minutes(budget_minutes)), say=say)
        for line in _audit_lines(result):
            for piece in line.split("\n"):  # one finding per line, wrapped between words
                out.print(Wrapped.prose(_literal(piece.strip()).plain, first="  " if piece.startswith("  ") else ""))
        payload = {"data": data, **result.to_dict(), "skipped": [vars(item) for item in skipped]}
        _write_json(json_path, payload)
        if report_dir is not None and _main_rank():
            from transferkit.audit.page import write_audit_page

            out.print(_literal(f"wrote {write_audit_page(result, images, pixels, report_dir, data_name=data)}"))


def _audit_lines(result) -> list[str]:
    model = result.model
    lines = [f"{result.n_images} images, {len(result.classes)} classes; out-of-fold accuracy {model['out_of_fold_accuracy']:.4f} "
             f"({model['strategy']} on {model['backbone']} features, {model['folds']} folds)"]
    lines.append(f"label issues: {len(result.label_issues)}" + "".join(
        f"\n  {item['path']}: labelled {item['label']!r}, looks like {item['suggested']!r} (score {item['score']:.3f})"
        for item in result.label_issues[:10]))
    lines.append(f"near-duplicate groups: {len(result.near_duplicates)}" + "".join(
        f"\n  {' = '.join(group['paths'][:3])} ({group['similarity']:.3f})" for group in result.near_duplicates[:5]))
    lines.append(f"outliers: {len(result.outliers)}" + "".join(f"\n  {item['path']} ({item['score']:.3f})" for item in result.outliers[:5]))
    curve = result.learning_curve
    if curve is not None:
        from transferkit.audit.curve import power_law

        last, params = max(curve["n_images"]), curve["params"]
        now = float(power_law(last, params["a"], params["b"], params["c"]))  # the curve's own value, not one noisy point
        for p in curve["predicted"]:
            lines.append(f"learning curve: with {p['n_images']} images about {p['accuracy']:.3f} (90 % interval {p['low']:.3f}-{p['high']:.3f}), "
                         f"{100 * (p['accuracy'] - now):+.1f} points over the curve's {now:.3f} at {last} training images")
    lines += [f"skipped: {step}" for step in result.skipped_steps]
    return lines


@app.command(cls=_Command)
def suggest(
    model_dir: ModelArg,
    inputs: Annotated[list[Path], typer.Argument(metavar="UNLABELLED...", help="Unlabelled image files or folders (searched recursively).")],
    csv_path: Annotated[Path, typer.Option("--csv", help="Write path,predicted,score rows here, the image to label first on top.")],
    n: Annotated[int, typer.Option("--n", help="How many images to rank.")] = 100,
    json_path: JsonOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the clustering.")] = 0,
    skip_bad: SkipBadOpt = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    cache_dir: CacheOpt = None,
) -> None:
    """Rank UNLABELLED images by how much labelling each would help the model in MODEL_DIR."""
    if n < 1:
        raise typer.BadParameter(f"expected a positive integer. Received: {n}", param_hint="--n")
    _check_output_file(csv_path, "--csv")
    _check_output_file(json_path, "--json")
    with _user_errors(), _results_to(json_path):
        _check_model_dir(model_dir)
        from transferkit.audit.run import suggest_images
        from transferkit.data import ImageSet, find_images
        from transferkit.persistence import load_model

        paths = find_images([str(p) for p in inputs])
        classifier = load_model(model_dir, device=device, precision=precision, cache_dir=str(cache_dir) if cache_dir else None)
        unlabelled = ImageSet(sources=paths, labels=None, name="unlabelled")
        pixels, unlabelled, skipped = _decode_kept(unlabelled, classifier.image_size_, skip_bad=skip_bad, cache_dir=classifier.cache_dir, quiet=quiet)
        labelled = _labelled_pixels(classifier, quiet)
        order, scores, predicted = suggest_images(classifier, pixels, labelled, n, seed=seed)
        rows = [{"path": unlabelled.source_name(int(i)), "predicted": str(p), "score": round(float(s), 4)} for i, s, p in zip(order, scores, predicted)]
        if _main_rank():
            _write_csv(csv_path, ["path", "predicted", "score"], [[r["path"], r["predicted"], r["score"]] for r in rows])
        out.print(_literal(f"ranked {len(rows)} of {len(unlabelled)} unlabelled images; wrote {csv_path}"))
        _write_json(json_path, {"model": str(model_dir), "suggestions": rows, "skipped": [vars(item) for item in skipped]})


def _labelled_pixels(classifier, quiet: bool):
    """The model's training images that are still on disk (their regions need no more labels), or None."""
    from transferkit.data import ImageSet, decode_images

    names = [name for name in (classifier.training_names_ or []) if os.path.isfile(name)]
    if not names:
        return None
    images = ImageSet(sources=names, labels=None, name="labelled")
    return decode_images(images, classifier.image_size_, skip_bad=True, cache_dir=classifier.cache_dir, progress=not quiet).pixels


@app.command(cls=_Command)
def predict(
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL", help="Model folder written by `transferkit fit --out`, or an .onnx file from `transferkit export` (onnxruntime, no torch).")],
    inputs: Annotated[list[Path], typer.Argument(metavar="INPUT...", help="Image files or folders (searched recursively); rows come out in this order.")],
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Also write path,label,probability (+ label_2,probability_2, ... for --top-k) rows to this CSV.")] = None,
    json_path: JsonOpt = None,
    top_k: Annotated[int, typer.Option(help="Also list the k most likely classes per image.")] = 1,
    skip_bad: SkipBadOpt = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    cache_dir: CacheOpt = None,
    explain: Annotated[Optional[Path], typer.Option(help="Write one heatmap overlay PNG per image (Grad-CAM of the predicted class) to this folder.")] = None,
    unknown_threshold: UnknownThresholdOpt = None,
) -> None:
    """Predict the class of each image, with its novelty and whether it is unknown (unlike the training images):
    a table on stdout (a header row, then one row per image in the order given)."""
    if top_k < 1:
        raise typer.BadParameter(f"expected a positive integer. Received: {top_k}", param_hint="--top-k")
    _check_output_file(csv_path, "--csv")
    _check_output_file(json_path, "--json")
    with _user_errors(), _results_to(json_path):
        from transferkit.data import ImageSet, find_images

        _check_model_dir(model_dir)
        paths = find_images([str(p) for p in inputs])  # before torch is imported: a wrong path fails at once
        if model_dir.suffix == ".onnx":
            classifier = _onnx_classifier(model_dir)
            pixels, kept, skipped = _decode_kept(ImageSet(paths, None), classifier.image_size_, skip_bad=skip_bad, cache_dir=False, quiet=quiet)
        else:
            from transferkit.persistence import load_model

            classifier = load_model(model_dir, device=device, precision=precision, cache_dir=str(cache_dir) if cache_dir else None)
            pixels, kept, skipped = _decode_kept(ImageSet(paths, None), classifier.image_size_, skip_bad=skip_bad,
                                                 cache_dir=classifier.cache_dir, quiet=quiet)
        paths = list(kept.sources)
        if not paths:
            raise TransferkitError("every input was unreadable and skipped; nothing to predict.")
        probabilities, novelty = classifier.predict_proba(pixels, return_novelty=True)
        unknown = _unknown_flags(classifier, novelty, unknown_threshold)
        k = min(top_k, len(classifier.classes_))
        rows = _prediction_rows(classifier.classes_, paths, probabilities, k, novelty, unknown)
        if csv_path is not None and _main_rank():
            _write_prediction_csv(csv_path, rows)
        note = _probability_note(classifier)
        _write_json(json_path, {"predictions": rows, "classes": [str(c) for c in classifier.classes_], "probabilities": note,
                                "novelty": _novelty_note(classifier, unknown_threshold), "skipped": [vars(item) for item in skipped]})
        if note is not None and _main_rank():
            err.print(Wrapped.prose(f"probabilities: {note['description']}", indent="  "))
        if unknown is not None and _main_rank():
            err.print(Wrapped.prose(f"{int(unknown.sum())} of {len(unknown)} images flagged unknown: unlike the training images "
                                    f"({_novelty_note(classifier, unknown_threshold)['description']}; --json/--csv list them)", indent="  "))
        if explain is not None and _main_rank():
            if model_dir.suffix == ".onnx":
                raise TransferkitError("--explain needs the model folder (heatmaps need the network's gradients), not an .onnx file.")
            from transferkit.report.explain import write_explanations

            written = write_explanations(classifier, paths, explain, probabilities=probabilities)
            err.print(f"wrote {len(written)} heatmaps to {explain}")
        header = ["path", "label", "probability"] + [f"{name}_{rank}" for rank in range(2, k + 1) for name in ("label", "probability")]
        scored = novelty is not None  # a model saved before novelty existed has no such columns
        lines = ["\t".join(header + (["novelty", "unknown"] if scored else []))]
        for record in rows:
            cells = [record["path"]] + [f"{c['label']}\t{c['probability']:.4f}" for c in record["top_k"]]
            if scored:
                cells += [f"{record['novelty']:.4f}", "unknown" if record["unknown"] else "-"]
            lines.append("\t".join(cells))
        _print_tab_separated(lines)


def _print_tab_separated(lines: list[str]) -> None:
    """Rows for `cut`, `sort` and spreadsheets: real tabs on stdout (rich would expand them to
    spaces), any file name printable; nothing when stdout carries JSON (``--json -``)."""
    if out.quiet or not _main_rank():
        return
    for line in lines:
        sys.stdout.write(line.encode("utf-8", "backslashreplace").decode("utf-8") + "\n")
    sys.stdout.flush()


def _prediction_rows(classes, paths: list[str], probabilities: np.ndarray, k: int, novelty: np.ndarray | None = None,
                     unknown: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One record per image, in input order: path, label, probability, ``top_k`` (the k best
    ``{label, probability}``, the shape ``serve`` answers with), ``novelty`` and ``unknown``
    (None where the model has no score: saved before novelty existed)."""
    rows = []
    for i, (path, row) in enumerate(zip(paths, probabilities)):
        order = row.argsort()[::-1][:k]
        top = [{"label": str(classes[j]), "probability": round(float(row[j]), 6)} for j in order]
        rows.append({"path": path, "label": top[0]["label"], "probability": top[0]["probability"], "top_k": top,
                     "novelty": None if novelty is None else round(float(novelty[i]), 6),
                     "unknown": None if unknown is None else bool(unknown[i])})
    return rows


def _write_prediction_csv(csv_path: Path, rows: list[dict[str, Any]]) -> None:
    """path,label,probability, for --top-k K label_2,probability_2 ... label_K,probability_K, then
    novelty,unknown (empty for a model without a novelty score)."""
    k = len(rows[0]["top_k"])
    header = ["path", "label", "probability"] + [f"{n}_{r}" for r in range(2, k + 1) for n in ("label", "probability")]
    cells = [[record["path"]] + [v for c in record["top_k"] for v in (c["label"], c["probability"])]
             + ["" if record[key] is None else record[key] for key in ("novelty", "unknown")] for record in rows]
    _write_csv(csv_path, header + ["novelty", "unknown"], cells)


def _write_csv(csv_path: Path, header: list[str], rows: list[list]) -> None:
    """One CSV file, all rows or none (written beside and renamed: never a CSV cut short)."""
    from transferkit.files import atomic_write

    def write(tmp: str) -> None:
        # surrogateescape: a file name that is not valid UTF-8 is written back byte for byte
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)

    csv_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(csv_path, write)
    err.print(_literal(f"wrote {csv_path}"))


@app.command(cls=_Command)
def report(
    model_dir: ModelArg,
    data: DataArg,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for report.html, its PNGs and report.json.")],
    advice: Annotated[Optional[Path], typer.Option(help="`transferkit advise --json` output to show (with --measure: the race); default: the advice stored with the model.")] = None,
    positive: Annotated[Optional[list[str]], typer.Option(help="A class of the positive side of a binary view (repeatable), e.g. --positive 0.67 --positive 1.00.")] = None,
    mistakes: Annotated[int, typer.Option(help="How many of the most confident mistakes to show with heatmaps.")] = 12,
    skip_bad: SkipBadOpt = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    cache_dir: CacheOpt = None,
) -> None:
    """Write an HTML report of MODEL on labelled DATA: metrics, confusion matrix, curves, advice, mistakes with heatmaps."""
    with _user_errors():
        _check_model_dir(model_dir)
        images = _resolve_data(data, skip_bad)  # before torch is imported: a wrong path fails at once
        from transferkit.persistence import load_model

        classifier = load_model(model_dir, device=device, precision=precision, cache_dir=str(cache_dir) if cache_dir else None)
        _, images, _ = _decode_kept(images, classifier.image_size_, skip_bad=skip_bad, cache_dir=classifier.cache_dir, quiet=quiet)
        _write_model_report(model_dir, data, out_dir, classifier=classifier, images=images, advice_path=advice, positive=positive,
                            mistakes=mistakes, progress=not quiet)


def _write_model_report(model_dir: Path, data: str, out_dir: Path, *, classifier, images, advice_path: Path | None = None,
                        positive: list[str] | None = None, mistakes: int = 12, progress: bool = True) -> None:
    from transferkit.card import CARD_NAME
    from transferkit.persistence import read_config
    from transferkit.report.build import write_report

    if not _main_rank():
        return
    advice = None
    if advice_path is not None:
        try:
            advice = json.loads(advice_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TransferkitError(f"cannot read the advice file {advice_path}: {exc}; expected `transferkit advise --json` output.") from None
    path = write_report(
        classifier, images, out_dir, data_name=data, model_name=str(model_dir),
        config=read_config(model_dir), advice=advice, positive=positive, top_mistakes=mistakes, progress=progress,
        card=model_dir / CARD_NAME if (model_dir / CARD_NAME).is_file() else None,
    )
    out.print(f"wrote {path}")


@app.command(cls=_Command)
def serve(
    model_dir: ModelArg,
    host: Annotated[str, typer.Option(help="Interface to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted image file, in MiB.")] = 10.0,
    max_files: Annotated[int, typer.Option(help="Most images per request.")] = 16,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    unknown_threshold: UnknownThresholdOpt = None,
    max_batch_size: Annotated[int, typer.Option(help="Most images per forward pass: requests that arrive together share one.")] = 32,
    max_delay_ms: Annotated[float, typer.Option(help="How long a request waits for others to share its forward pass (ms).")] = 5.0,
    threads: Annotated[Optional[int], typer.Option(help="The network's threads on a CPU; default: the usable CPUs less one, leaving a core to HTTP and decoding.")] = None,
) -> None:
    """Serve MODEL (a model folder, or an .onnx file on onnxruntime) over HTTP: POST /predict, GET /health, GET /model, and a page at /."""
    if max_batch_size < 1 or max_delay_ms < 0:
        raise typer.BadParameter(f"expected --max-batch-size >= 1 and --max-delay-ms >= 0. Received: {max_batch_size}, {max_delay_ms}")
    if threads is not None and threads < 1:
        raise typer.BadParameter(f"expected --threads >= 1. Received: {threads}")
    with _user_errors():
        from transferkit.errors import MissingExtraError
        from transferkit.serve import UploadLimits, create_app
        from transferkit.serve.model import serving_threads

        try:
            import uvicorn
        except ImportError as exc:
            raise MissingExtraError("serving needs uvicorn; install it with: pip install 'transferkit[serve]'") from exc
        app_ = create_app(model_dir, limits=UploadLimits(max_bytes=int(max_upload_mb * 2**20), max_files=max_files),
                          precision=precision, device=device, unknown_threshold=unknown_threshold, max_batch_size=max_batch_size,
                          max_delay_ms=max_delay_ms, threads=serving_threads() if threads is None else threads)
        err.print(f"serving {model_dir} on http://{host}:{port}/ (Ctrl+C stops)")
        uvicorn.run(app_, host=host, port=port, log_level="warning" if quiet else "info")


@app.command(cls=_Command)
def models(json_path: JsonOpt = None) -> None:
    """List the registered backbones, their stages, input size and offline weights."""
    from transferkit.info import backbone_details
    from transferkit.report.tables import backbones_table

    with _user_errors():
        details = backbone_details()
        if json_path != STDOUT:
            out.print(backbones_table(details))
            out.print("Any timm model name also works as --backbone when its weights can be downloaded, or with --weights FILE.")
        _write_json(json_path, {"backbones": details})


@app.command("augment-preview", cls=_Command)
def augment_preview(
    data: DataArg,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for augment_<preset>.png, one per preset.")],
    presets: Annotated[str, typer.Option(help="Comma-separated presets to show: none, light, standard, strong.")] = "light,standard,strong",
    per_class: Annotated[int, typer.Option(help="Sample images of each class (one row each).")] = 2,
    views: Annotated[int, typer.Option(help="Augmented views per image.")] = 5,
    image_size: Annotated[int, typer.Option(help="Side the images are decoded at, as training would.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of the sample and the views.")] = 0,
) -> None:
    """Show what each --augment preset does to a few images of DATA (PNG grids), before training with it."""
    from transferkit.data import resolve_data
    from transferkit.report.augment_preview import write_augment_preview

    with _user_errors():
        names = [name.strip() for name in presets.split(",") if name.strip()]
        written = write_augment_preview(resolve_data(data), out_dir, presets=names, per_class=per_class, views=views,
                                        image_size=image_size, seed=seed)
        for path in written:
            out.print(_literal(f"wrote {path}"))


@app.command("export-data", cls=_Command)
def export_data(
    data: DataArg,
    legacy_out: Annotated[Optional[Path], typer.Argument(metavar="[OUT_DIR]", help="Deprecated: the folder as a second argument; use --out.", show_default=False)] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Folder to write: one sub-folder per class.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty folder.")] = False,
) -> None:
    """Write DATA (e.g. elpv:train) out as image folders, one sub-folder per class, to --out."""
    from transferkit.data import export_image_folders, resolve_data

    if out_dir is not None and legacy_out is not None:
        raise typer.BadParameter("give the folder once, as --out DIR.", param_hint="--out")
    if out_dir is None and legacy_out is None:
        raise typer.BadParameter("expected a folder to write. Received: nothing; pass --out DIR.", param_hint="--out")
    if out_dir is None:
        err.print(Text("note: ", style="yellow") + _literal("export-data DATA OUT_DIR is deprecated; write export-data DATA --out OUT_DIR."))
        out_dir = legacy_out
    with _user_errors():
        images = resolve_data(data)
        export_image_folders(images, out_dir, overwrite=overwrite)
        out.print(_literal(f"wrote {len(images)} images in {len(images.classes)} class folders to {out_dir}"))


@app.command(cls=_Command)
def info(
    cache_dir: CacheOpt = None,
    json_path: JsonOpt = None,
    torch_view: Annotated[bool, typer.Option("--torch", help="Also import torch (a few seconds) and add its view: CPU kernel level, its thread counts, CUDA availability and devices.")] = False,
) -> None:
    """Show what transferkit found on this machine: versions, CPU features, threads, GPUs, cache, offline weights.

    Fast by default (no torch import): GPUs as the NVIDIA driver lists them, threads by torch's
    rule. --torch adds torch's own view. Paste its output (or --json -) into a bug report.
    """
    from transferkit.info import system_info
    from transferkit.report.tables import info_table

    with _user_errors():
        report = system_info(cache_dir, torch_view=torch_view)
        if json_path != STDOUT:
            out.print(info_table(report))
        _write_json(json_path, report)


cache_app = typer.Typer(no_args_is_help=True, help="Look into or empty the disk cache of decoded images and bottleneck features.")
app.add_typer(cache_app, name="cache")


@cache_app.command("info", cls=_Command)
def cache_info(cache_dir: CacheOpt = None, json_path: JsonOpt = None) -> None:
    """Show where the cache is, what it holds and how big it is."""
    from transferkit.data.cache_admin import cache_summary
    from transferkit.report.tables import cache_table

    with _user_errors():
        summary = cache_summary(cache_dir)
        if json_path != STDOUT:
            out.print(cache_table(summary))
        _write_json(json_path, summary.to_dict())


@cache_app.command("clear", cls=_Command)
def cache_clear(cache_dir: CacheOpt = None) -> None:
    """Delete the cached decoded images and features; the next run recomputes what it needs."""
    from transferkit.data.cache_admin import clear_cache
    from transferkit.report.tables import format_bytes

    with _user_errors():
        removed = clear_cache(cache_dir)
        out.print(f"removed {removed.files} files ({format_bytes(removed.bytes)}) from {removed.root}", highlight=False)


@app.command(cls=_Command)
def export(
    model_dir: ModelArg,
    out_path: Annotated[Path, typer.Option("--out", help="The .onnx file to write.")],
    export_format: Annotated[str, typer.Option("--format", help="onnx (the only format so far).")] = "onnx",
    check: Annotated[Optional[str], typer.Option(help="Images (folder, CSV, built-in name) to check onnxruntime against PyTorch on (default: a few random images).")] = None,
    check_images: Annotated[int, typer.Option(help="--check: compare on at most this many of its images.")] = 32,
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
    if modes and not (check or test):
        raise typer.BadParameter("int8 is measured on labelled images before it is worth shipping; pass --check DATA "
                                 "(static calibrates on it) or --test DATA.", param_hint="--quantize")
    _check_output_file(out_path, "--out")
    _check_output_file(json_path, "--json")
    with _user_errors():
        from transferkit.export.onnx import PARITY_TOLERANCE, export_onnx

        result = export_onnx(model_dir, out_path, check_images=check, max_check_images=check_images)
        report = result.to_dict()
        if check:
            from transferkit.data import resolve_data

            total = len(resolve_data(check))
            checked = f"{result.checked_images} of the {total} images of {check}"
            if result.checked_images < total:
                checked += " (--check-images N for more)"
        else:
            checked = f"{result.checked_images} random-noise images (--check DATA uses real ones)"
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
    from transferkit.report.tables import fold_table

    if test is None:
        raise TransferkitError("measuring int8 needs labelled images; pass --check DATA (or --test DATA).")
    classifier = load_model(model_dir)
    images = resolve_data(test)
    fp32_model = _onnx_classifier(fp32)
    pixels = fp32_model.decode(images)
    calibration_pixels = fp32_model.decode(resolve_data(calibration)) if calibration else pixels
    reference = np.asarray(classifier.classes_).astype(str)[torch_logits(classifier, pixels).argmax(axis=1)]
    files = {"onnxruntime fp32": fp32}
    for mode in modes:
        files[f"onnxruntime int8 {mode}"] = quantize_onnx(fp32, fp32.with_name(f"{fp32.stem}.int8.{mode}.onnx"), mode,
                                                          calibration=_spread(calibration_pixels, 64))
    measurements, rows, baseline = [], [], None
    for name, path in files.items():
        measurement, _ = measure_onnx(path, pixels, np.asarray(images.labels), name=name, reference=reference)
        measurements.append(measurement.to_dict())
        baseline = baseline or measurement  # fp32 comes first
        verdict = "reference" if path == fp32 else _int8_verdict(measurement, baseline, len(pixels))
        measurements[-1]["verdict"] = verdict
        rows.append((name, f"{measurement.accuracy:.4f}", f"{measurement.agreement:.3f}", f"{measurement.images_per_second:.1f}",
                     f"{measurement.size_mb:.1f}", verdict))
        if path != fp32:
            err.print(f"wrote {path}")
    table = fold_table(("model", "accuracy", "agrees with PyTorch", "images/s", "MB", "verdict"), rows,
                       title=f"on {test} (n={len(pixels)})")
    out.print(table)
    return measurements


def _int8_verdict(int8, fp32, n: int) -> str:
    """Whether an int8 file is worth shipping against fp32 on the same test images: it must keep
    the accuracy within the test set's noise (one standard error of the fp32 accuracy, at least one
    image) and be faster."""
    speedup = int8.images_per_second / max(fp32.images_per_second, 1e-9)
    if fp32.accuracy is None or int8.accuracy is None:
        return f"unlabelled: compare agreement ({int8.agreement:.3f}); {speedup:.1f}x the fp32 speed"
    noise = max(1.0 / n, math.sqrt(max(fp32.accuracy * (1 - fp32.accuracy), 1e-12) / n))
    loss = fp32.accuracy - int8.accuracy
    if loss > noise:
        return f"keep fp32: int8 loses {loss:.3f} accuracy (noise {noise:.3f})"
    if speedup <= 1.0:
        return f"keep fp32: int8 is not faster ({speedup:.2f}x)"
    return f"ship int8: {speedup:.1f}x faster, accuracy within the noise"


def _spread(pixels: np.ndarray, n: int) -> np.ndarray:
    """At most n images taken evenly across ``pixels`` (folders list one class after another)."""
    return np.asarray(pixels[:: max(1, len(pixels) // n)][:n])


def _probability_note(classifier) -> dict[str, Any] | None:
    """Whether the model's probabilities are calibrated (None for an .onnx file: not recorded there)."""
    history = getattr(classifier, "history_", None)
    if history is None:
        return None
    from transferkit.card import probability_note

    return probability_note(history)


def _unknown_flags(classifier, novelty, threshold: float | None):
    """Which images are unknown (novelty above ``threshold``, or the model's calibrated one);
    None when the model has no novelty score."""
    if novelty is None:
        return None
    return classifier.novelty_.unknown(novelty, threshold)


def _novelty_note(classifier, threshold: float | None, novelty=None) -> dict[str, Any]:
    """The threshold in use and where it came from (with ``novelty``: how many it flags), or why there is no score."""
    from transferkit.evaluation.novelty import novelty_summary

    return novelty_summary(getattr(classifier, "novelty_", None), novelty, threshold)


def _onnx_classifier(path: Path):
    from transferkit.export import OnnxClassifier

    return OnnxClassifier(path)


def main() -> None:
    """Console-script entry point: the process-wide settings live here, not in the library.

    ``--debug`` may stand anywhere (``transferkit fit DATA --debug``): it is moved before the
    command, where the program's own option lives.
    """
    from transferkit.training.allocator import keep_freed_memory  # no torch: `info` and `--help` start fast

    keep_freed_memory()  # measured 1.75-2.6x on CPU; the library never changes the allocator itself
    args = sys.argv[1:]
    if "--debug" in args[1:]:
        args = ["--debug", *[a for a in args if a != "--debug"]]
    app(args=args, prog_name="transferkit")


if __name__ == "__main__":
    sys.exit(main())
