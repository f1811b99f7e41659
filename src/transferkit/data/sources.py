"""Where images come from: :class:`ImageSet` and :func:`resolve_data`.

Resolving a data source never reads pixels; it only lists files (or array slices), their
labels and the keys used to split them. :mod:`transferkit.data.decode` turns an
:class:`ImageSet` into pixels.
"""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from transferkit.data.validate import (
    MISSING_LABELS as _MISSING,
    check_label,
    file_problem,
    image_extensions,
    is_inside,
    read_text,
    clutter_reason,
    sniff_image,
    unreadable_format,
    walk_images,
)
from transferkit.errors import DataError

#: File extensions (lower case) treated as images when searching folders: every format Pillow
#: opens (EPS left out: it needs Ghostscript). Other files are still kept when Pillow
#: recognises their content (:func:`transferkit.data.validate.sniff_image`).
IMAGE_EXTENSIONS: frozenset[str] = (
    frozenset(
        {
            ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".tif", ".tiff", ".gif", ".webp",
            ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".jp2",
        }
    )  # fmt: skip
    | image_extensions()
) - {".eps", ".ps"}

_MAX_LISTED = 20  # how many offending files an error message names before "and N more"

BUILTIN_DATASETS: dict[str, Callable[[], "ImageSet"]] = {}
"""Built-in data sets by name (``elpv``, ``elpv:train`` ...); :mod:`transferkit.data.builtin`
fills it through :func:`register_dataset` when the package is imported, so this module never
imports that one (it builds on :class:`ImageSet`)."""


def register_dataset(name: str, loader: Callable[[], "ImageSet"]) -> None:
    """Make ``resolve_data(name)`` return ``loader()``."""
    BUILTIN_DATASETS[name] = loader


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of the data, and why (``skip_bad=True`` lists these instead of failing)."""

    path: str
    reason: str


@dataclass
class ImageSet:
    """Images and their labels, before any pixel is read.

    Parameters
    ----------
    sources : list
        One entry per image: an absolute file path (``str``) or a ``uint8`` numpy array of
        shape ``(H, W)`` or ``(H, W, C)`` with ``C`` in 1, 3, 4.
    labels : list of str or None
        The class name of each image. Values are converted to ``str`` (``3`` becomes ``"3"``);
        :attr:`label_values` keeps the values as given. ``None`` for unlabelled images
        (prediction).
    strata : list of str or None, default=None
        The key a stratified split balances. ``None`` means "the labels": it is filled with a
        copy of ``labels`` when those are given. The ELPV set uses ``"<label>|<celltype>"``.
    groups : list of str or None, default=None
        A group id per image for group k-fold (images of one group never straddle a split).
    name : str, default=""
        A human name of the source (folder, CSV file, ``"elpv:train"``) used in messages.
    skipped : list of SkippedFile
        Files that :func:`resolve_data` left out with ``skip_bad=True``.
    label_values : dict of str to label, or None
        Filled from ``labels`` when any label is not a ``str`` (integers, floats, booleans,
        numpy scalars, a pandas Categorical's categories): each class name mapped to the value
        it came from, in the values' own sorted order (``2`` before ``10``). ``classes``
        follows that order and :class:`~transferkit.ImageClassifier` gives those values back
        (``classes_``, ``predict``), as a scikit-learn classifier keeps the type of ``y``.
        ``None`` when every label is a string.

    Examples
    --------
    >>> s = ImageSet(["/data/a.png", "/data/b.png"], labels=[0, 1])
    >>> s.labels, s.classes, len(s)
    (['0', '1'], ['0', '1'], 2)
    """

    sources: list
    labels: list[str] | None
    strata: list[str] | None = None
    groups: list[str] | None = None
    name: str = ""
    skipped: list[SkippedFile] = field(default_factory=list)
    label_values: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.sources = list(self.sources)
        n = len(self.sources)
        if self.labels is not None:
            typed = self.labels
            self.labels = _as_strings(self.labels, "labels", n)
            if self.label_values is None:
                self.label_values = _label_values(typed, self.labels)
        if self.strata is not None:
            self.strata = _as_strings(self.strata, "strata", n, labels=False)
        elif self.labels is not None:
            self.strata = list(self.labels)
        if self.groups is not None:
            self.groups = _as_strings(self.groups, "groups", n, labels=False)
        self.skipped = list(self.skipped)

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def classes(self) -> list[str]:
        """The unique labels, sorted: string order (``"10"`` before ``"2"``) for string labels,
        the values' order for others (:attr:`label_values`: ``2`` before ``10``); ``[]`` if unlabelled."""
        if self.labels is None:
            return []
        present = set(self.labels)
        if self.label_values is not None:
            return [name for name in self.label_values if name in present]
        return sorted(present)

    def targets(self) -> np.ndarray:
        """Each image's class as an index into :attr:`classes`, shape (n_images,), int64."""
        if self.labels is None:
            raise DataError("these images have no labels; targets need labelled images.")
        index = {name: i for i, name in enumerate(self.classes)}
        return np.array([index[label] for label in self.labels], dtype=np.int64)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        """Return the images at ``indices`` (integer positions or a boolean mask), in that order.

        ``name`` and ``skipped`` are kept: they describe where the images came from.
        """
        index = np.asarray(indices)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise DataError(
                    f"A boolean mask for subset() expected shape ({len(self)},). "
                    f"Received: shape={index.shape}"
                )
            index = np.flatnonzero(index)
        elif index.size and not np.issubdtype(index.dtype, np.integer):
            raise DataError(
                f"subset() expected integer positions or a boolean mask. Received: dtype={index.dtype}"
            )
        positions = [int(i) for i in index.reshape(-1)]

        def pick(values: list | None) -> list | None:
            return None if values is None else [values[i] for i in positions]

        return ImageSet(
            sources=pick(self.sources),
            labels=pick(self.labels),
            strata=pick(self.strata),
            groups=pick(self.groups),
            name=self.name,
            skipped=list(self.skipped),
            label_values=self.label_values,
        )

    def source_name(self, index: int) -> str:
        """A human name of one image: its path, or ``"<name>[index]"`` for an array."""
        source = self.sources[index]
        if isinstance(source, str):
            return source
        return f"{self.name or 'array'}[{index}]"

    def describe(self) -> str:
        """One human line: name, number of images, and images per class.

        Example: ``"elpv:test: 656 images, 4 classes (0.00: 377, 0.33: 74, 0.67: 27, 1.00: 178)"``.
        """
        head = f"{self.name or 'images'}: {len(self):,} image{'s' if len(self) != 1 else ''}"
        if self.labels is None:
            text = f"{head}, unlabelled"
        else:
            counts = Counter(self.labels)
            per_class = ", ".join(f"{c}: {counts[c]:,}" for c in self.classes)
            text = f"{head}, {len(counts)} classes ({per_class})"
        if self.skipped:
            text += f", {len(self.skipped)} skipped"
        return text


def resolve_data(data: Any, labels: Any = None, *, skip_bad: bool = False) -> ImageSet:
    """Turn any supported description of labelled images into an :class:`ImageSet`.

    No pixels are read; missing files are found, unreadable ones only when decoding.

    Parameters
    ----------
    data : str, os.PathLike, list, tuple, numpy.ndarray or ImageSet
        - a built-in name: ``"elpv"``, ``"elpv:train"``, ``"elpv:test"`` (see
          :data:`transferkit.data.builtin.BUILTIN_DATASETS`). A built-in name given as a
          ``str`` wins over a folder of the same name; write ``"./elpv"`` for the folder.
        - a folder in ImageFolder layout: one sub-folder per class, image files searched
          recursively inside each class folder, hidden files and folders ignored;
        - a CSV file with a header row and columns ``path,label`` (optional ``group``; other
          columns ignored); relative paths are relative to the CSV's folder;
        - a list or tuple of image paths (or uint8 arrays), with ``labels`` of the same length;
        - a uint8 array of shape ``(N, H, W)`` or ``(N, H, W, C)``, ``C`` in 1, 3, 4, with
          ``labels``;
        - an :class:`ImageSet`, returned unchanged.
    labels : sequence, optional
        One label per image, only for lists and arrays. Integers become strings.
    skip_bad : bool, default=False
        Leave out CSV rows or list entries whose file is missing and record them in
        ``ImageSet.skipped``, instead of raising.

    Returns
    -------
    ImageSet

    Raises
    ------
    DataError
        The path does not exist, a CSV column or file is missing, a class folder is empty,
        there are fewer than 2 classes, or the labels or array do not fit.
    """
    if isinstance(data, ImageSet):
        if labels is not None:
            raise DataError("labels must be None when data is an ImageSet (it has its own labels).")
        return data
    if isinstance(data, str):
        if data in BUILTIN_DATASETS:
            _reject_labels(labels, f"the built-in data set {data!r}")
            return BUILTIN_DATASETS[data]()
    if isinstance(data, (str, os.PathLike)):
        return _resolve_path(os.fspath(data), labels, skip_bad=skip_bad)
    if isinstance(data, np.ndarray):
        return _from_array(data, labels)
    if isinstance(data, (list, tuple)):
        return _from_list(data, labels, skip_bad=skip_bad)
    raise DataError(
        "data expected a built-in name, a folder, a CSV file, a list of image paths or a uint8 "
        f"array. Received: {type(data).__name__}"
    )


def find_images(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """List the image files to predict on: image files as given, folders searched recursively.

    Parameters
    ----------
    inputs : sequence of str or os.PathLike
        Image files and folders. Hidden files and folders inside a folder are ignored.

    Returns
    -------
    list of str
        Absolute paths in the order given (a folder's images sorted by path, where the folder
        stands), each once: the first time it appears. As ``ls`` and Ultralytics do, the output
        follows the input.

    Raises
    ------
    DataError
        An input does not exist, a file is not an image, or no image was found.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: dict[str, None] = {}  # ordered set: input order, first occurrence kept
    for item in inputs:
        path = os.path.abspath(os.fspath(item))
        if os.path.isdir(path):
            walk = walk_images(path, IMAGE_EXTENSIONS)
            if walk.problems:
                raise DataError(
                    f"{len(walk.problems)} file(s) in {path} cannot be read as images:\n"
                    f"{_list_bad([SkippedFile(p, r) for p, r in walk.problems])}\nRemove them or move them out of the folder."
                )
            found.update(dict.fromkeys(sorted(walk.images)))
            continue
        problem = file_problem(path)
        if problem == "file not found":
            raise DataError(f"image file or folder does not exist: {path}")
        if problem is not None:
            raise DataError(f"cannot read image {path}: {problem}.")
        if not (_is_image_name(path) or sniff_image(path)):
            if (unknown := unreadable_format(path)) is not None:
                raise DataError(f"cannot read image {path}: {unknown}.")
            raise DataError(f"expected an image file ({_extensions_hint()}) or a folder. Received: {path}")
        found[path] = None
    if not found:
        shown = ", ".join(os.fspath(i) for i in inputs) or "(no inputs)"
        raise DataError(f"no image files ({_extensions_hint()}) found in: {shown}")
    return list(found)


def check_classes(imageset: ImageSet, *, min_per_class: int = 1, purpose: str = "") -> None:
    """Raise :class:`DataError` unless there are 2+ classes and each has ``min_per_class`` images.

    Parameters
    ----------
    imageset : ImageSet
    min_per_class : int, default=1
    purpose : str, default=""
        What needs the images, for the message, e.g. ``"a stratified validation split"``.

    Examples
    --------
    >>> check_classes(ImageSet(["a", "b", "c"], ["x", "y", "y"]), min_per_class=2,  # doctest: +ELLIPSIS
    ...               purpose="a stratified validation split")
    Traceback (most recent call last):
    ...
    transferkit.errors.DataError: class 'x' has 1 image; a stratified validation split needs ...
    """
    where = f" in {imageset.name}" if imageset.name else ""
    if imageset.labels is None:
        raise DataError(f"the images{where} have no labels; training and evaluation need labels.")
    counts = Counter(imageset.labels)
    if len(counts) < 2:
        found = ", ".join(repr(c) for c in sorted(counts)) or "none"
        raise DataError(
            f"expected at least 2 classes{where}. Received: {len(counts)} ({found}). "
            "Add images of another class (one sub-folder per class)."
        )
    too_small = sorted((c, n) for c, n in counts.items() if n < min_per_class)
    if too_small:
        need = purpose or "training"
        described = "; ".join(f"class {c!r} has {n} image{'s' if n != 1 else ''}" for c, n in too_small)
        raise DataError(
            f"{described}{where}; {need} needs at least {min_per_class} per class. "
            "Add images to these classes or remove them from the data."
        )


# ---------------------------------------------------------------------------------------------
# Paths: folders and CSV files


def _resolve_path(path: str, labels: Any, *, skip_bad: bool) -> ImageSet:
    path = os.path.abspath(path)
    if not os.path.exists(path):
        names = ", ".join(BUILTIN_DATASETS)
        raise DataError(
            f"data path does not exist: {path}. Expected a folder with one sub-folder per class, "
            f"a CSV file with columns path,label, or a built-in name ({names})."
        )
    if os.path.isdir(path):
        _reject_labels(labels, "a folder (its sub-folders are the labels)")
        return _from_folder(path, skip_bad=skip_bad)
    if path.lower().endswith(".csv"):
        _reject_labels(labels, "a CSV file (its label column holds the labels)")
        return _from_csv(path, skip_bad=skip_bad)
    problem = file_problem(path)
    if problem is not None:
        raise DataError(f"data {path}: {problem}. Expected a folder or a .csv file.")
    if _is_image_name(path) or sniff_image(path):
        raise DataError(
            f"data is a single image: {path}. Training and evaluation expected a folder with one "
            "sub-folder per class or a CSV file; to predict, pass images to find_images()."
        )
    raise DataError(f"data expected a folder or a .csv file. Received: {path}")


def _from_folder(root: str, *, skip_bad: bool = False) -> ImageSet:
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    ignored: list[SkippedFile] = []
    class_dirs = []
    for entry in entries:
        clutter = clutter_reason(entry.name, folder=_is_dir(entry))
        if clutter is not None:
            ignored.append(SkippedFile(entry.path, clutter))
        elif not entry.name.startswith(".") and _is_dir(entry):
            class_dirs.append(entry.name)
    _check_layout(root, class_dirs)
    if not class_dirs:
        loose = any(_is_image_name(e.name) for e in entries if e.is_file())
        hint = (
            " It holds images directly; move them into one sub-folder per class "
            "(to predict on them, use find_images())."
            if loose
            else ""
        )
        raise DataError(f"expected one sub-folder per class in {root}. Received: no sub-folders.{hint}")
    sources: list[str] = []
    labels: list[str] = []
    problems: list[SkippedFile] = []
    visited: set[str] = set()
    for name in class_dirs:
        folder = os.path.join(root, name)
        if is_inside(root, folder):  # a link to the data root or above it: every image again
            ignored.append(SkippedFile(folder, f"symbolic link loop (to {os.path.realpath(folder)}): not a class, left out"))
            continue
        if os.path.realpath(folder) in visited:
            ignored.append(SkippedFile(folder, f"second name of a folder already read ({os.path.realpath(folder)}): left out"))
            continue
        walk = walk_images(folder, IMAGE_EXTENSIONS, visited=visited)
        problems += [SkippedFile(p, r) for p, r in walk.problems]
        ignored += [SkippedFile(p, r) for p, r in walk.ignored]
        if not walk.images:
            if walk.problems:
                continue  # reported below
            raise DataError(
                f"class {name!r} has no images in {root}. Add {_extensions_hint()} files to "
                f"{folder} or remove that folder."
            )
        sources.extend(walk.images)
        labels.extend([name] * len(walk.images))
    if problems and not skip_bad:
        raise DataError(
            f"{len(problems)} file(s) in {root} cannot be read as images:\n{_list_bad(problems)}\n"
            "Remove them, or pass skip_bad=True (--skip-bad) to leave them out."
        )
    imageset = ImageSet(sources, labels, name=root, skipped=ignored + problems)
    check_classes(imageset)
    return imageset


_SPLIT_NAME = re.compile(r"(train|training|test|testing|val|valid|validation|dev|eval|evaluation|holdout)([ _-]?(set|data|images|split))?", re.I)


def _check_layout(root: str, class_dirs: list[str]) -> None:
    """Stop (or warn) when ``root`` is one level too high: its "classes" hold the classes.

    ``DATA/{train,test}/{a,b}`` given as ``DATA`` would train the classes "train" and "test".
    Split-like names holding sub-folders stop with a hint; other class folders that all hold
    the same 2+ sub-folders and no image of their own get a warning (nested folders are allowed).
    """
    inner = {name: _sub_folders(os.path.join(root, name)) for name in class_dirs}
    if not class_dirs or not all(inner.values()):
        return
    shown = ", ".join(sorted(set().union(*inner.values()))[:8])
    if all(_SPLIT_NAME.fullmatch(name) for name in class_dirs):
        train = next((c for c in class_dirs if c.lower().startswith("train")), class_dirs[0])
        other = next((c for c in class_dirs if c != train), train)
        raise DataError(
            f"{root} holds the folders {', '.join(class_dirs)}, which look like splits of one data set, each with "
            f"class folders inside ({shown}); training on it would learn the classes {', '.join(repr(c) for c in class_dirs)}. "
            f"Pass one split, e.g. `transferkit fit {os.path.join(root, train)}`, and evaluate on another "
            f"(`transferkit evaluate MODEL {os.path.join(root, other)}`)."
        )
    sets = {frozenset(folders) for folders in inner.values()}
    if len(class_dirs) >= 2 and len(sets) == 1 and len(next(iter(sets))) >= 2 and not any(_has_loose_images(os.path.join(root, c)) for c in class_dirs):
        warnings.warn(
            f"every class folder of {root} ({', '.join(class_dirs)}) holds the same sub-folders ({shown}) and no image of its "
            f"own: if those sub-folders are the classes, pass each of {', '.join(class_dirs)} as its own data set.",
            stacklevel=4,
        )


def _sub_folders(folder: str) -> set[str]:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return set()
    return {e.name for e in entries if not e.name.startswith(".") and clutter_reason(e.name, folder=True) is None and _is_dir(e)}


def _has_loose_images(folder: str) -> bool:
    try:
        return any(_is_image_name(e.name) for e in os.scandir(folder) if not e.name.startswith("."))
    except OSError:
        return False


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def _csv_path(base: str, cell: str) -> tuple[str, str | None]:
    """The absolute file a CSV cell names and :func:`file_problem`'s verdict on it.

    A path written on Windows (``images\\a\\x.png``) is read with ``/`` when it does not exist
    as written; a Windows drive path (``C:\\...``) is named as the cause when it is not found.
    """
    file = os.path.abspath(os.path.join(base, os.path.expanduser(cell)))
    problem = file_problem(file)
    if problem != "file not found" or "\\" not in cell or os.sep == "\\":
        return file, problem
    if re.match(r"[A-Za-z]:\\", cell):
        return file, "file not found: a Windows path with a drive letter; write the paths relative to the CSV's folder"
    unix = os.path.abspath(os.path.join(base, cell.replace("\\", "/")))
    unix_problem = file_problem(unix)
    if unix_problem is None:
        return unix, None
    return file, f"{unix_problem} (the path's Windows backslashes were also read as /: {unix})"


def _from_csv(csv_path: str, *, skip_bad: bool) -> ImageSet:
    base = os.path.dirname(csv_path)
    text = read_text(csv_path, what="CSV file")
    with io.StringIO(text, newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
        except csv.Error as error:
            raise DataError(f"CSV file {csv_path}: line 1 cannot be parsed ({error}).") from None
        if header is None:
            raise DataError(f"CSV file is empty: {csv_path}. Expected a header row path,label.")
        columns = {name.strip().lower(): i for i, name in enumerate(header)}
        missing = [c for c in ("path", "label") if c not in columns]
        if missing:
            raise DataError(
                f"CSV file {csv_path} is missing column(s) {', '.join(missing)}; expected a header "
                f"row with columns path,label (and optionally group). Received: {header}"
            )
        i_path, i_label, i_group = columns["path"], columns["label"], columns.get("group")
        sources, labels, groups = [], [], []
        bad: list[SkippedFile] = []
        duplicates: list[SkippedFile] = []
        seen: dict[str, tuple[int, str]] = {}  # file -> (line, label) of its first row
        contradictions: list[str] = []
        for row in _rows(reader, csv_path):
            if not any(cell.strip() for cell in row):
                continue  # blank line
            line = reader.line_num
            where = f"line {line} of {os.path.basename(csv_path)}"
            cells = [cell.strip() for cell in row]
            needed = [i_path, i_label] + ([i_group] if i_group is not None else [])
            if len(cells) <= max(needed) or not cells[i_path]:
                raise DataError(f"line {line} of {csv_path}: expected a path and a label. Received: {row}")
            label = check_label(cells[i_label], f"line {line} of {csv_path} ({cells[i_path]})")
            file, problem = _csv_path(base, cells[i_path])
            if problem is not None:
                bad.append(SkippedFile(file, f"{where}: {problem}"))
                continue
            if file in seen:
                first_line, first_label = seen[file]
                if first_label != label:
                    contradictions.append(f"  {file}: line {first_line} says {first_label!r}, line {line} says {label!r}")
                else:
                    duplicates.append(SkippedFile(file, f"{where}: repeats line {first_line}; left out"))
                continue
            seen[file] = (line, label)
            sources.append(file)
            labels.append(label)
            if i_group is not None:
                groups.append(cells[i_group])
    if contradictions:
        shown = "\n".join(contradictions[:_MAX_LISTED])
        raise DataError(
            f"{len(contradictions)} file(s) in {csv_path} are listed with contradictory labels:\n{shown}\n"
            "Keep one row per file."
        )
    if bad and not skip_bad:
        raise DataError(
            f"{len(bad)} file(s) listed in {csv_path} do not exist or are not regular files:\n{_list_bad(bad)}\n"
            "Fix the paths (relative paths are relative to the CSV's folder), or pass "
            "skip_bad=True (--skip-bad) to leave these rows out."
        )
    if not sources:
        raise DataError(f"CSV file {csv_path} lists no usable images.")
    imageset = ImageSet(
        sources, labels, groups=groups if i_group is not None else None, name=csv_path, skipped=duplicates + bad
    )
    check_classes(imageset)
    return imageset


# ---------------------------------------------------------------------------------------------
# In-memory data: lists and arrays


def _from_list(items: Sequence, labels: Any, *, skip_bad: bool) -> ImageSet:
    if labels is None:
        raise DataError(
            "labels are required when data is a list of images: pass one label per image "
            "(or pass a folder with one sub-folder per class)."
        )
    label_list = _as_strings(labels, "labels", len(items))
    sources, kept_labels, bad = [], [], []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            _check_image_array(item, f"data[{i}]")
            sources.append(item)
        elif isinstance(item, (str, os.PathLike)):
            path = os.path.abspath(os.fspath(item))
            problem = file_problem(path)
            if problem is not None:
                bad.append(SkippedFile(path, f"data[{i}]: {problem}"))
                continue
            sources.append(path)
        else:
            raise DataError(
                f"data[{i}] expected an image path or a uint8 array. Received: {type(item).__name__}"
            )
        kept_labels.append(label_list[i])
    if bad and not skip_bad:
        raise DataError(
            f"{len(bad)} image file(s) do not exist or are not regular files:\n{_list_bad(bad)}\n"
            "Fix the paths, or pass skip_bad=True (--skip-bad) to leave them out."
        )
    imageset = ImageSet(sources, kept_labels, name=f"list of {len(items)} images", skipped=bad,
                        label_values=_label_values(labels, label_list))
    check_classes(imageset)
    return imageset


def _from_array(array: np.ndarray, labels: Any) -> ImageSet:
    if array.dtype != np.uint8:
        raise DataError(_uint8_hint(array))
    ok = array.ndim == 3 or (array.ndim == 4 and array.shape[-1] in (1, 3, 4))
    if not ok or array.shape[0] == 0:
        raise DataError(
            "an image array expected shape (N, H, W) or (N, H, W, C) with C in 1, 3, 4 and N > 0. "
            f"Received: shape={array.shape}"
        )
    if labels is None:
        raise DataError("labels are required when data is an array: pass one label per image.")
    names = _as_strings(labels, "labels", len(array))
    imageset = ImageSet(list(array), names, name="array", label_values=_label_values(labels, names))
    check_classes(imageset)
    return imageset


def _check_image_array(array: np.ndarray, what: str) -> None:
    ok = array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4))
    if array.dtype != np.uint8 or not ok:
        raise DataError(
            f"{what} expected a uint8 array of shape (H, W) or (H, W, C) with C in 1, 3, 4. "
            f"Received: dtype={array.dtype}, shape={array.shape}"
        )


# ---------------------------------------------------------------------------------------------
# Helpers


def _as_strings(values: Any, what: str, expected_length: int, *, labels: bool = True) -> list[str]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise DataError(f"{what} expected a sequence with one value per image. Received: {values!r}")
    shape = getattr(values, "shape", None)
    if shape is not None and len(shape) != 1:
        raise DataError(
            f"{what} expected a 1-D sequence with one value per image. Received: shape={tuple(shape)}"
            + (f"; use {what}.ravel()" if len(shape) == 2 and 1 in shape[1:] else "")
        )
    if len(values) != expected_length:
        raise DataError(
            f"{what} expected one value per image ({expected_length}). Received: {len(values)} values"
        )
    if not labels:
        return [str(v) for v in values]
    # Every label is checked (missing, NaN, None, not a scalar); plain strings take the fast path.
    return [
        v if type(v) is str and v.strip().lower() not in _MISSING else check_label(v, f"{what}[{i}]")
        for i, v in enumerate(values)
    ]


def _label_values(given: Any, names: list[str]) -> dict[str, Any] | None:
    """Class name -> the label value it came from, in the values' sorted order; None for strings.

    Raises DataError for labels scikit-learn would also refuse: a mix of types that do not sort
    together (``1`` and ``"a"``), or two values with one name (``1`` and ``"1"``).
    """
    values = [v.item() if hasattr(v, "item") and getattr(v, "shape", None) == () else v for v in given]
    if all(type(v) is str for v in values):
        return None
    by_name: dict[str, Any] = {}
    for name, value in zip(names, values):
        if by_name.setdefault(name, value) != value or type(by_name[name]) is not type(value):
            raise DataError(
                f"labels expected one type of class label. Received: {by_name[name]!r} and {value!r}, which are "
                "both class " + repr(name) + ". Convert the labels to one type, e.g. [str(v) for v in labels]."
            )
    try:
        order = sorted(by_name, key=by_name.__getitem__)
    except TypeError:
        kinds = sorted({type(v).__name__ for v in by_name.values()})
        raise DataError(
            f"labels expected one type of class label (all strings or all numbers). Received a mix: {', '.join(kinds)}. "
            "Convert them to one type, e.g. [str(v) for v in labels]."
        ) from None
    return {name: by_name[name] for name in order}


def _uint8_hint(array: np.ndarray) -> str:
    """How to turn this array into uint8 0-255, judged by its values (0-1 floats scale by 255, never clip)."""
    head = "an image array expected dtype uint8 (0-255); "
    received = f"Received: dtype={array.dtype}"
    if array.dtype == bool:
        return head + f"convert it with x.astype(np.uint8) * 255. {received}"
    if not np.issubdtype(array.dtype, np.number) or array.size == 0:
        return head + f"convert it to pixel values 0-255. {received}"
    finite = array[np.isfinite(array)] if np.issubdtype(array.dtype, np.floating) else array
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    found = f"{received}, values {low:g} to {high:g}"
    if np.issubdtype(array.dtype, np.floating) and low >= 0 and high <= 1:
        return head + f"these look like 0-1 floats: convert them with np.rint(x * 255).astype(np.uint8). {found}"
    if low >= 0 and high <= 255:
        return head + f"convert it with np.rint(x).astype(np.uint8). {found}"
    if low >= 0 and high <= 65535 and not np.issubdtype(array.dtype, np.floating):
        return head + f"for 16-bit images use (x // 257).astype(np.uint8), one scale for every image. {found}"
    return head + (f"scale every image by one factor into 0-255 (not each by its own range), then .astype(np.uint8). {found}")


def _reject_labels(labels: Any, source: str) -> None:
    if labels is not None:
        raise DataError(f"labels must be None when data is {source}.")


def _is_image_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _rows(reader, csv_path: str):
    try:
        yield from reader
    except csv.Error as error:
        raise DataError(f"CSV file {csv_path}: line {reader.line_num} cannot be parsed ({error}).") from None


def _extensions_hint() -> str:
    return ".png/.jpg/.tif/.bmp or any image Pillow reads"


def _list_bad(bad: Sequence[SkippedFile]) -> str:
    lines = [f"  {b.path}: {b.reason}" for b in bad[:_MAX_LISTED]]
    if len(bad) > _MAX_LISTED:
        lines.append(f"  ... and {len(bad) - _MAX_LISTED} more")
    return "\n".join(lines)


def stratified_sample(imageset: ImageSet, max_images: int | None, seed: int) -> ImageSet:
    """About ``max_images`` images, each class in proportion and at least one of each."""
    if max_images is None or len(imageset) <= max_images:
        return imageset
    return imageset.subset(stratified_indices(imageset.labels, max_images, seed, classes=imageset.classes))


def stratified_indices(labels, count: int, seed: int, *, classes=None, at_least: int = 1) -> np.ndarray:
    """Sorted indices of about ``count`` of ``labels`` (N,), each class in proportion and at least
    ``at_least`` of each where it has them (all N when ``count`` >= N). Classes are drawn in the
    order of ``classes`` (default: sorted), each from one generator seeded with ``seed``."""
    labels = np.asarray(labels)
    if len(labels) <= count:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels) if classes is None else classes:
        members = np.flatnonzero(labels == label)
        take = min(len(members), max(at_least, round(count * len(members) / len(labels))))
        chosen.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(chosen))
