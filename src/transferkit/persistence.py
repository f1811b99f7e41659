"""Model folders: ``model.safetensors`` + ``config.json``; nothing is ever unpickled.

``config.json`` holds everything needed to rebuild the network (backbone, classes,
preprocessing, image size), the training settings, metrics and the package version, plus the
SHA-256 of ``model.safetensors`` so that a weights file and a config from different runs are
never paired silently. Each file is written to a temporary name and renamed into place, and
the config — which names the weights' hash — is written last: a crash leaves either the old
model or a folder that ``load`` rejects with a clear message, never a half-written model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file, save_file

from transferkit._version import __version__
from transferkit.backbones import Preprocessing, create_backbone
from transferkit.errors import ModelFileError
from transferkit.estimator import RUNTIME_PARAMS, ImageClassifier
from transferkit.training.runtime import is_main_process

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1


def save_model(classifier, out_dir: str | os.PathLike, *, metrics: dict[str, Any] | None = None) -> Path:
    """Write a fitted :class:`~transferkit.ImageClassifier` to ``out_dir`` (created if needed).

    Under torchrun only rank 0 writes; every process trained the same model, and the others
    return the path without touching the disk (they do not wait for rank 0 to finish).
    """
    classifier._check_fitted()
    out = Path(out_dir)
    if not is_main_process():
        return out
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in classifier.model_.state_dict().items()}
    weights_path = out / WEIGHTS_NAME
    _atomic_write(weights_path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    config = {
        "format_version": FORMAT_VERSION,
        "transferkit_version": __version__,
        "backbone": classifier.backbone,
        "classes": [str(c) for c in classifier.classes_],
        "image_size": int(classifier.image_size_),
        "preprocessing": classifier.preprocessing_.to_dict(),
        "strategy": classifier.settings_["strategy"],
        "settings": _jsonable(classifier.settings_),
        "advice": _jsonable(classifier.advice_.to_dict()) if getattr(classifier, "advice_", None) else None,
        # Where this process ran (device, precision, cache) is not part of the model: a model
        # fitted on a GPU must load and predict on a CPU-only machine.
        "params": _jsonable({k: v for k, v in classifier.get_params().items() if k not in RUNTIME_PARAMS}),
        "plan": _jsonable(vars(classifier.plan_)) if getattr(classifier, "plan_", None) is not None else None,
        "history": classifier.history_,
        "metrics": metrics or {},
        "weights_sha256": _sha256(weights_path),
    }
    _atomic_write(out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2)))
    return out


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a model folder, checked for the fields ``load`` needs."""
    folder = Path(path)
    config_path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise ModelFileError(f"no model folder at {folder}; expected a folder written by `transferkit fit --out`.")
    if not config_path.is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise ModelFileError(f"{folder} is not a complete model folder; expected both {CONFIG_NAME} and {WEIGHTS_NAME}.")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{config_path} is not valid JSON ({exc}).") from exc
    missing = [k for k in ("format_version", "backbone", "classes", "image_size", "preprocessing") if k not in config]
    if missing:
        raise ModelFileError(f"{config_path} lacks {', '.join(missing)}; was it written by transferkit?")
    if config["format_version"] > FORMAT_VERSION:
        raise ModelFileError(
            f"{folder} was written by a newer transferkit (format {config['format_version']}, this one reads "
            f"up to {FORMAT_VERSION}); upgrade transferkit."
        )
    return config


def load_model(path: str | os.PathLike, *, device: str = "auto", precision: str = "auto"):
    """Load a model folder written by :func:`save_model` as a fitted ``ImageClassifier``.

    ``device`` and ``precision`` say where this process predicts; they are not part of the
    model, so a model fitted on a GPU loads on a CPU-only machine.
    """
    folder = Path(path)
    config = read_config(folder)
    weights_path = folder / WEIGHTS_NAME
    expected = config.get("weights_sha256")
    if expected and _sha256(weights_path) != expected:
        raise ModelFileError(
            f"{weights_path} does not match {folder / CONFIG_NAME} (SHA-256 differs): the folder mixes files of "
            "different runs. Refit, or restore both files together."
        )
    try:
        state = load_file(weights_path)
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise ModelFileError(f"cannot read {weights_path}: {exc}") from exc

    classifier = ImageClassifier(**_saved_params(config), device=device, precision=precision)
    model, _ = create_backbone(config["backbone"], num_classes=len(config["classes"]), pretrained=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{weights_path} does not fit backbone {config['backbone']!r}: {exc}") from exc
    classifier._set_fitted(
        classes=config["classes"], model=model, preprocessing=Preprocessing.from_dict(config["preprocessing"]),
        image_size=config["image_size"], settings=config.get("settings") or {"strategy": config.get("strategy")},
        history=config.get("history") or {}, metrics=config.get("metrics"),
        # the advisor's measurements stay readable in config.json["advice"]
    )
    return classifier


_LEGACY_UNSET = ("freeze", "image_size", "class_weight", "C")
"""Parameters that format-1 files of before the "auto" sentinel saved as None for "decide"."""


def _saved_params(config: dict[str, Any]) -> dict[str, Any]:
    """The estimator parameters saved with a model, without runtime ones; None of older files -> "auto"."""
    known = ImageClassifier().get_params()
    params = {k: v for k, v in (config.get("params") or {}).items() if k in known and k not in RUNTIME_PARAMS}
    for name in _LEGACY_UNSET:
        if name in params and params[name] is None:
            params[name] = "auto"
    return params


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    """Parameters and plans as JSON: tuples to lists, numpy scalars to Python, others to str."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
