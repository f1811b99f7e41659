"""Model folders: ``model.safetensors`` + ``config.json``; nothing is ever unpickled.

A model with a novelty score also has ``novelty.safetensors`` (the training images' unit
features, float16) described, with its SHA-256, under ``config.json["novelty"]``; a folder
without them (saved before novelty existed) loads with ``novelty_ = None``.

``config.json`` holds everything needed to rebuild the network (backbone, classes,
preprocessing, image size), the training settings, metrics and the package version, a
``"format": "transferkit"`` mark, and the SHA-256 of ``model.safetensors`` so that a weights
file and a config from different runs are never paired silently.

Saving never writes into the model folder in place. The new model is written to a hidden
folder beside it (``.NAME.tmp-XXXX``), files the user keeps in the old folder are hard-linked
across, and the folders are swapped with two renames (old -> ``.NAME.old-XXXX``, new -> NAME)
before the old one is removed. A kill at any moment leaves the old or the new model loadable:
:func:`load_model` (and the next save) finish a swap that was cut between the two renames.
A folder that holds files transferkit did not write (a foreign ``config.json`` or
``model.safetensors``, or a non-empty folder that is no model at all) is refused before any
work (:func:`check_output_folder`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays
from safetensors.torch import load_file, save_file

from transferkit._version import __version__
from transferkit.backbones import Preprocessing, create_backbone
from transferkit.card import CARD_NAME, model_card
from transferkit.data.near_copies import THUMB_SIDE, decode_thumbnails, encode_thumbnails
from transferkit.errors import ModelFileError
from transferkit.evaluation.novelty import NoveltyScorer
from transferkit.estimator import RUNTIME_PARAMS, ImageClassifier
from transferkit.strategies import get_strategy, list_strategies
from transferkit.training.runtime import is_main_process

WEIGHTS_NAME = "model.safetensors"
NOVELTY_NAME = "novelty.safetensors"
CONFIG_NAME = "config.json"
CHECKPOINT_NAME = "checkpoint.pt"  # training/loop.py writes it; the swap leaves it behind
FORMAT_VERSION = 1
FORMAT_MARK = "transferkit"
#: The steps of :func:`save_model`, in order; a test hook may fail or kill between any two.
SAVE_STEPS = ("folder-created", "weights-written", "config-written", "extras-linked", "old-moved-aside", "new-in-place", "old-removed")
_fault_hook: Callable[[str], None] | None = None  # tests: called with each step's name
_SWAP_ATTEMPTS = 20
_STALE_SECONDS = 24 * 3600  # a .tmp sibling older than this belongs to a killed save, whatever its pid


def check_output_folder(out_dir: str | os.PathLike) -> Path:
    """Check, before any work, that a model can be written to ``out_dir``; return it as a Path.

    Raises :class:`ModelFileError` when ``out_dir`` is a file, cannot be written (nor its
    parent, where the new folder is written beside it), or holds files transferkit did not
    write. An interrupted swap is finished first.
    """
    out = Path(out_dir).absolute()
    _recover(out)
    if out.exists() and not out.is_dir():
        raise ModelFileError(f"--out {out} is a file, not a folder; choose a folder for the model.")
    if out.is_dir():
        _refuse_foreign(out)
        if not os.access(out, os.W_OK | os.X_OK):
            raise ModelFileError(f"cannot write to the model folder {out} (permission denied); choose another --out.")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ModelFileError(f"cannot create the model folder {out}: {parent} is a file, not a folder.")
    try:
        Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.probe-")).rmdir()
    except OSError as error:
        raise ModelFileError(
            f"cannot write the model folder {out}: {parent} is not writable ({error.strerror or error}); "
            "choose another --out."
        ) from None
    return out


def save_model(classifier, out_dir: str | os.PathLike, *, metrics: dict[str, Any] | None = None, data: str | None = None) -> Path:
    """Write a fitted :class:`~transferkit.ImageClassifier` to ``out_dir``, replacing it atomically.

    See the module docstring: the new folder is written beside ``out_dir`` and swapped in; files
    other than the model's own that the old folder held are kept; a checkpoint is not. The
    folder also gets ``MODEL_CARD.md`` (:func:`transferkit.card.model_card`); ``data`` names the
    training data in it (e.g. the folder or ``elpv:train``).
    """
    classifier._check_fitted()
    out = Path(out_dir).absolute()
    if not is_main_process():
        # Under torchrun every process trained the same model: only rank 0 writes; the
        # others return the path without touching the disk (nor waiting for rank 0).
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    _recover(out)
    if out.exists() and not out.is_dir():
        raise ModelFileError(f"cannot save the model to {out}: it is a file, not a folder.")
    if out.is_dir():
        _refuse_foreign(out)
    state = {k: v.detach().cpu().contiguous() for k, v in classifier.model_.state_dict().items()}
    new = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-{os.getpid()}-"))
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        _step("folder-created")
        weights_path = new / WEIGHTS_NAME
        save_file(state, str(weights_path), metadata={"format": "pt"})
        _fsync(weights_path)
        _step("weights-written")
        config = _config(classifier, metrics, _sha256(weights_path))
        config["novelty"] = _save_novelty(getattr(classifier, "novelty_", None), new / NOVELTY_NAME)
        if data is not None:
            config["data"] = str(data)
        (new / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        _fsync(new / CONFIG_NAME)
        (new / CARD_NAME).write_text(model_card(config), encoding="utf-8")
        _step("config-written")
        if out.is_dir():
            _link_extras(out, new)
        _step("extras-linked")
        os.chmod(new, (out.stat().st_mode & 0o7777) if out.is_dir() else 0o777 & ~_umask())
        for attempt in range(_SWAP_ATTEMPTS):  # another process may be swapping the same folder
            if out.is_dir():
                try:
                    os.rename(out, old)
                except FileNotFoundError:
                    continue
                _step("old-moved-aside")
            try:
                os.rename(new, out)
                break
            except OSError as error:  # ENOTEMPTY/EEXIST: the other process put its model in first
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST) or attempt == _SWAP_ATTEMPTS - 1:
                    raise
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
        _step("new-in-place")
        shutil.rmtree(old, ignore_errors=True)
        _step("old-removed")
    except BaseException:
        # Raised, not killed: put the old model back if it was moved aside, drop the new one.
        if not out.exists() and old.is_dir():
            os.rename(old, out)
        shutil.rmtree(new, ignore_errors=True)
        raise
    return out


def _class_values(classes) -> list | None:
    values = [c.item() if hasattr(c, "item") else c for c in np.asarray(classes, dtype=object)]
    return None if all(isinstance(v, str) for v in values) else values


def _restored_classes(config: dict) -> list:
    """``classes_`` of a saved model: ``class_values`` where they match ``classes`` name for name."""
    values = config.get("class_values")
    if isinstance(values, list) and len(values) == len(config["classes"]) and \
            all(isinstance(v, (int, float, bool)) and str(v) == name for v, name in zip(values, config["classes"])):
        return values
    return config["classes"]


def _config(classifier, metrics: dict[str, Any] | None, weights_sha256: str) -> dict[str, Any]:
    return {
        "format": FORMAT_MARK,
        "format_version": FORMAT_VERSION,
        "transferkit_version": __version__,
        "backbone": classifier.backbone,
        "classes": [str(c) for c in classifier.classes_],
        # The labels as fitted when they were not strings (ints, floats, bools): load gives them back.
        "class_values": _class_values(classifier.classes_),
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
        "class_counts": getattr(classifier, "class_counts_", None),
        "metrics": metrics or {},
        "weights_sha256": weights_sha256,
        # One content hash per training image (transferkit.data.content_digests): `evaluate`
        # counts the test images the model was trained on (a copied file is no test).
        "training_images": _training_images(classifier),
    }


def _save_novelty(scorer: NoveltyScorer | None, path: Path) -> dict[str, Any] | None:
    """Write the scorer's reference features to ``path``; its config.json entry (None: no score)."""
    if scorer is None:
        return None
    save_arrays({"reference": np.ascontiguousarray(scorer.reference)}, str(path), metadata={"format": "transferkit-novelty"})
    _fsync(path)
    return {**scorer.to_config(), "file": NOVELTY_NAME, "sha256": _sha256(path)}


def read_novelty(folder: Path, config: dict[str, Any]) -> NoveltyScorer | None:
    """The novelty scorer of a model folder; None when it has none (saved before novelty existed).

    Raises :class:`ModelFileError` when config.json names a novelty file that is missing,
    damaged or from another run (SHA-256 differs).
    """
    record = config.get("novelty")
    if not isinstance(record, dict):
        return None
    path = folder / NOVELTY_NAME
    if not path.is_file():
        raise ModelFileError(f"{folder / CONFIG_NAME} names {NOVELTY_NAME}, which is missing: restore it, or refit.")
    if _sha256(path) != record.get("sha256"):
        raise ModelFileError(f"{path} does not match {folder / CONFIG_NAME} (SHA-256 differs): refit, or restore both files together.")
    try:
        return NoveltyScorer.from_config(record, load_arrays(str(path))["reference"])
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise ModelFileError(f"cannot read the novelty file {path}: {exc}") from exc


def _training_images(classifier) -> dict[str, Any] | None:
    digests = getattr(classifier, "training_digests_", None)
    if digests is None:
        return None
    record: dict[str, Any] = {"hash": "sha256-128", "digests": list(digests)}
    thumbs, names = getattr(classifier, "training_thumbnails_", None), getattr(classifier, "training_names_", None)
    if thumbs is not None and names is not None and len(thumbs) == len(names):
        # 24x24 grey thumbnails (576 bytes per image, base64): `evaluate` names near-copies of these
        record["thumbnails"] = {"side": THUMB_SIDE, "base64": encode_thumbnails(thumbs)}
        record["names"] = [str(name) for name in names]
    return record


def training_thumbnails(config: dict[str, Any]) -> tuple[np.ndarray | None, list[str] | None]:
    """The training images' thumbnails and names a model folder's config holds ((None, None): none kept)."""
    record = config.get("training_images")
    if not isinstance(record, dict) or not isinstance(record.get("thumbnails"), dict) or not isinstance(record.get("names"), list):
        return None, None
    thumbs = record["thumbnails"]
    if thumbs.get("side") != THUMB_SIDE or not isinstance(thumbs.get("base64"), str):
        return None, None
    try:
        values = decode_thumbnails(thumbs["base64"])
    except ValueError:
        return None, None
    names = [str(name) for name in record["names"]]
    return (values, names) if len(values) == len(names) else (None, None)


def training_digests(config: dict[str, Any]) -> list[str] | None:
    """The training images' content hashes a model folder's config holds (None: an older model)."""
    record = config.get("training_images")
    if not isinstance(record, dict) or record.get("hash") != "sha256-128" or not isinstance(record.get("digests"), list):
        return None
    return [str(d) for d in record["digests"]]


def _step(name: str) -> None:
    if _fault_hook is not None:
        _fault_hook(name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _link_extras(old: Path, new: Path) -> None:
    """Hard-link (or copy) the files the user keeps in the old folder into the new one."""
    for entry in old.iterdir():
        if entry.name in (WEIGHTS_NAME, NOVELTY_NAME, CONFIG_NAME, CHECKPOINT_NAME, CARD_NAME) or entry.name.endswith(".tmp"):
            continue
        target = new / entry.name
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, target)


def _link_or_copy(source, target) -> None:
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def is_transferkit_config(path: Path) -> bool:
    """Whether ``path`` is a ``config.json`` that transferkit wrote."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict):
        return False
    return config.get("format") == FORMAT_MARK or ("transferkit_version" in config and "format_version" in config)


def _refuse_foreign(out: Path) -> None:
    names = {entry.name for entry in out.iterdir()}
    ours = CONFIG_NAME in names and is_transferkit_config(out / CONFIG_NAME)
    if CONFIG_NAME in names and not ours:
        raise ModelFileError(
            f"{out / CONFIG_NAME} was not written by transferkit; refusing to overwrite it. "
            "Choose a new or empty --out folder, or move that file away."
        )
    if WEIGHTS_NAME in names and not ours:
        raise ModelFileError(
            f"{out / WEIGHTS_NAME} has no transferkit {CONFIG_NAME} beside it; refusing to overwrite it. "
            "Choose a new or empty --out folder, or move that file away."
        )
    visible = sorted(n for n in names if not n.startswith("."))
    if visible and not ours and CHECKPOINT_NAME not in names:
        shown = ", ".join(visible[:5]) + (f" and {len(visible) - 5} more" if len(visible) > 5 else "")
        raise ModelFileError(
            f"{out} is not empty and holds no transferkit model ({shown}); refusing to write a model into it. "
            "Choose a new or empty --out folder."
        )


def _siblings(out: Path, kind: str) -> list[Path]:
    if not out.parent.is_dir():
        return []
    prefix = f".{out.name}.{kind}-"
    found = [p for p in out.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def _complete(folder: Path) -> bool:
    try:
        config = read_config(folder)
    except ModelFileError:
        return False
    expected = config.get("weights_sha256")
    return not expected or _sha256(folder / WEIGHTS_NAME) == expected


def _recoverable(out: Path) -> Path | None:
    """Where the model of ``out`` is when a save was killed between its two renames."""
    if out.exists():
        return None
    for folder in [f for f in _siblings(out, "tmp") if not _writer_alive(f)] + _siblings(out, "old"):  # new first
        if _complete(folder):
            return folder
    return None


def _recover(out: Path) -> None:
    """Finish a swap cut short by a kill; drop leftovers of finished or abandoned saves."""
    found = _recoverable(out)
    if found is not None:
        try:
            os.rename(found, out)
        except OSError:
            return  # read-only: load_model reads the sibling in place
    if out.is_dir():
        now = time.time()
        for folder in _siblings(out, "old"):
            shutil.rmtree(folder, ignore_errors=True)
        for folder in _siblings(out, "tmp"):
            if not _writer_alive(folder) or now - folder.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(folder, ignore_errors=True)


def _writer_alive(folder: Path) -> bool:
    """Whether the process that is writing a ``.NAME.tmp-PID-XXXX`` folder still runs."""
    try:
        pid = int(folder.name.rsplit(".tmp-", 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False  # this process saves one model at a time: a leftover of its own is stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    except OSError as exc:
        raise ModelFileError(f"cannot read {config_path} ({exc.strerror or exc}).") from exc
    if not isinstance(config, dict):
        raise ModelFileError(f"{config_path} expected a JSON object. Received: {type(config).__name__}")
    missing = [k for k in ("format_version", "backbone", "classes", "image_size", "preprocessing") if k not in config]
    if missing:
        raise ModelFileError(f"{config_path} lacks {', '.join(missing)}; was it written by transferkit?")
    _check_types(config, config_path)
    if config["format_version"] > FORMAT_VERSION:
        raise ModelFileError(
            f"{folder} was written by a newer transferkit (format {config['format_version']}, this one reads "
            f"up to {FORMAT_VERSION}); upgrade transferkit."
        )
    return config


_FIELD_TYPES = {
    "format_version": (int, "an integer"),
    "backbone": (str, "a string"),
    "classes": (list, "a list of class names"),
    "image_size": (int, "a positive integer"),
    "preprocessing": (dict, "an object"),
    "params": ((dict, type(None)), "an object"),
    "settings": ((dict, type(None)), "an object"),
    "history": ((dict, type(None)), "an object"),
    "metrics": ((dict, type(None)), "an object"),
    "weights_sha256": ((str, type(None)), "a string"),
}


def _check_types(config: dict, config_path: Path) -> None:
    for key, (kind, expected) in _FIELD_TYPES.items():
        value = config.get(key)
        bad = key in config and (not isinstance(value, kind) or (isinstance(value, bool) and kind is int))
        if not bad and key == "image_size":
            bad = value < 1
        if not bad and key == "classes":
            bad = len(value) < 2 or not all(isinstance(c, str) for c in value) or len(set(value)) != len(value)
        if bad:
            raise ModelFileError(
                f"{config_path}: field {key!r} expected {expected}. Received: {value!r:.80}. "
                "The file was edited or damaged; refit the model."
            )
    try:
        Preprocessing.from_dict(config["preprocessing"])
    except Exception as exc:  # noqa: BLE001 - any malformed record is the same damaged file
        raise ModelFileError(f"{config_path}: field 'preprocessing' cannot be read ({type(exc).__name__}: {exc}).") from None


def load_model(
    path: str | os.PathLike, *, device: str = "auto", precision: str = "auto", cache_dir: str | bool | None = None
):
    """Load a model folder written by :func:`save_model` as a fitted ``ImageClassifier``.

    ``device``, ``precision`` and ``cache_dir`` say where and how this process predicts; they
    are not part of the model, so a model fitted on a GPU loads on a CPU-only machine.

    When ``path`` is missing because a save was killed between its two renames, the swap is
    finished first (or, on a read-only disk, the complete sibling folder is read in place).
    """
    folder = Path(path)
    for attempt in range(_LOAD_ATTEMPTS):
        try:
            return _load(folder, device=device, precision=precision, cache_dir=cache_dir)
        except OSError:  # ModelFileError included
            # Another process may be swapping this folder right now (two renames apart).
            swapping = _siblings(folder.absolute(), "tmp") or _siblings(folder.absolute(), "old")
            if not swapping or attempt == _LOAD_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


_LOAD_ATTEMPTS = 5


def _load(folder: Path, *, device: str, precision: str, cache_dir: str | bool | None):
    if not folder.exists():
        _recover(folder.absolute())
        folder = _recoverable(folder.absolute()) or folder
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

    classifier = ImageClassifier(**_saved_params(config), device=device, precision=precision, cache_dir=cache_dir)
    thumbnails, names = training_thumbnails(config)
    try:
        strategy = config.get("strategy") or (config.get("settings") or {}).get("strategy")
        built = get_strategy(strategy).empty_model(config) if strategy in list_strategies() else None
        model, _ = built or create_backbone(config["backbone"], num_classes=len(config["classes"]), pretrained=False)
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{weights_path} does not fit backbone {config['backbone']!r}: {exc}") from exc
    classifier._set_fitted(
        classes=_restored_classes(config), model=model, preprocessing=Preprocessing.from_dict(config["preprocessing"]),
        image_size=config["image_size"], settings=config.get("settings") or {"strategy": config.get("strategy")},
        history=config.get("history") or {}, metrics=config.get("metrics"),
        training_digests=training_digests(config),
        training_thumbnails=thumbnails, training_names=names,
        class_counts=config.get("class_counts") if isinstance(config.get("class_counts"), dict) else None,
        novelty=read_novelty(folder, config),
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


INIT_PARAMS = ("backbone", "strategy", "image_size", "freeze", "symmetries", "feature_layers", "C", "class_weight", "augment")
"""What ``fit --init`` takes from the saved model (the rest is the command's own)."""


def init_params(model_dir: str | os.PathLike, classes: list[str]) -> dict[str, Any]:
    """Estimator parameters that start a new fit from the model in ``model_dir`` (``fit --init``).

    The same backbone, strategy and image size as the saved model. A network strategy warm-starts:
    ``weights`` is the saved ``model.safetensors`` (its classifier is dropped and a new head of
    ``len(classes)`` rows is made). A feature strategy keeps the original pretrained weights, so
    the features cached when the saved model was fitted are reused and only the linear classifier
    is fitted again. ``classes`` (the new data's) must hold every class of the saved model.

    Raises :class:`ModelFileError` for a missing or foreign folder or a model whose strategy has an
    ``init_refusal`` (an ``ensemble``: not supported yet), :class:`DataError` when a class of the saved model is missing from ``classes``.
    """
    from transferkit.errors import DataError

    folder = Path(model_dir)
    config = read_config(folder)
    missing = [name for name in config["classes"] if name not in set(classes)]
    if missing:
        raise DataError(
            f"--init {folder}: the model knows {', '.join(repr(c) for c in missing)}, which the new data lacks. "
            "fit --init takes the same classes or more; add images of those classes, or fit without --init."
        )
    saved = _saved_params(config)
    params = {name: saved[name] for name in INIT_PARAMS if name in saved}
    params["image_size"] = int(config["image_size"])
    params["strategy"] = config.get("strategy") or params.get("strategy")
    strategy = params["strategy"]
    refusal = get_strategy(strategy).init_refusal if strategy in list_strategies() else None
    if refusal:
        raise ModelFileError(
            f"--init {folder}: the model is {refusal}, which fit --init cannot start from yet. Fit without --init "
            "(auto measures it again), or --init from a model of one kind."
        )
    if strategy in list_strategies() and get_strategy(strategy).frozen_backbone:
        params["weights"] = saved.get("weights")
    else:
        params["weights"] = str(folder / WEIGHTS_NAME)
    return params
