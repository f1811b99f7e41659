"""Built-in data sets usable wherever DATA is accepted: ``elpv``, ``elpv:train``, ``elpv:test``.

ELPV (Deitsch et al., 2019) holds 2,624 300x300 grayscale electroluminescence images of solar
cells, each labelled with the probability that the cell is defective (0, 1/3, 2/3, 1) and the
cell type (mono- or polycrystalline). It ships in the ``elpv-dataset`` package.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from transferkit.data.sources import BUILTIN_DATASETS, ImageSet, register_dataset
from transferkit.errors import DataError

#: Seed of the fixed 75/25 train/test split (stratified by label and cell type).
ELPV_SPLIT_SEED = 2019
ELPV_TEST_SIZE = 0.25
ElpvSplit = Literal["all", "train", "test"]


def load_elpv(split: ElpvSplit = "all") -> ImageSet:
    """The ELPV solar-cell images and labels, without reading any pixel.

    Labels are the defect probabilities formatted ``"0.00"``, ``"0.33"``, ``"0.67"``,
    ``"1.00"`` (4 classes); strata are ``"<label>|<type>"`` with type ``mono`` or ``poly``, so
    splits balance both. ``"train"`` and ``"test"`` are a fixed split in the spirit of the
    paper: 25 % held out, stratified by label and cell type, ``random_state=ELPV_SPLIT_SEED``
    (1,968 / 656 images). Use :func:`elpv_defective` for the binary task.

    Parameters
    ----------
    split : {"all", "train", "test"}, default="all"

    Returns
    -------
    ImageSet
        ``name`` is ``"elpv"``, ``"elpv:train"`` or ``"elpv:test"``.

    Raises
    ------
    DataError
        The ``elpv-dataset`` package is not installed, or ``split`` is unknown.

    Examples
    --------
    >>> test = load_elpv("test")
    >>> len(test), test.classes
    (656, ['0.00', '0.33', '0.67', '1.00'])
    """
    if split not in ("all", "train", "test"):
        raise DataError(f"split expected one of all, train, test. Received: split={split!r}")
    paths, labels, types = _elpv_index()
    strata = [f"{label}|{kind}" for label, kind in zip(labels, types)]
    everything = ImageSet(list(paths), list(labels), strata=strata, name="elpv")
    if split == "all":
        return everything
    train, test = _elpv_split(tuple(strata))
    part = everything.subset(train if split == "train" else test)
    part.name = f"elpv:{split}"
    return part


def elpv_defective(labels: Sequence[str | float] | ImageSet) -> np.ndarray:
    """Binary ELPV target: ``True`` where the defect probability is above 0.5.

    Parameters
    ----------
    labels : sequence of str or float, or ImageSet
        ELPV labels (``"0.00"`` ... ``"1.00"``) or probabilities.

    Returns
    -------
    numpy.ndarray of bool

    Examples
    --------
    >>> elpv_defective(["0.00", "0.33", "0.67", "1.00"]).tolist()
    [False, False, True, True]
    """
    values = labels.labels if isinstance(labels, ImageSet) else labels
    if values is None:
        raise DataError("elpv_defective() expected labelled images. Received: an unlabelled ImageSet")
    try:
        probabilities = np.asarray([float(v) for v in values], dtype=np.float64)
    except ValueError as error:
        raise DataError(f"elpv_defective() expected defect probabilities like '0.33'. {error}") from None
    return probabilities > 0.5


def binary_metrics_if_builtin(data: object, labels: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Binary "defective" scores when ``data`` names an ELPV set, else ``{}``.

    The ELPV literature reports both the 4-class and the binary task (defect probability
    above 0.5); predicting "0.67" for a "1.00" cell is right in the binary task.

    Returns
    -------
    dict
        ``binary_accuracy``, ``binary_balanced_accuracy`` and ``binary_f1`` (defective is the
        positive class), or an empty dict when ``data`` is not ``elpv``, ``elpv:train`` or
        ``elpv:test``.
    """
    if not (isinstance(data, str) and data in BUILTIN_DATASETS and data.split(":")[0] == "elpv"):
        return {}
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    truth, predicted = elpv_defective(labels), elpv_defective(predictions)
    return {
        "binary_accuracy": float(accuracy_score(truth, predicted)),
        "binary_balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
        "binary_f1": float(f1_score(truth, predicted, zero_division=0)),
    }


#: Built-in data sets by name: each value returns a fresh :class:`ImageSet`.
for _name, _part in (("elpv", "all"), ("elpv:train", "train"), ("elpv:test", "test")):
    register_dataset(_name, functools.partial(load_elpv, _part))


@functools.lru_cache(maxsize=1)
def _elpv_index() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Absolute image paths, labels and cell types from the package's labels.csv (read once)."""
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the built-in data set 'elpv' needs the elpv-dataset package. "
            "Install it with: pip install elpv-dataset"
        )
    data_dir = Path(next(iter(spec.submodule_search_locations))) / "data"
    labels_file = data_dir / "labels.csv"
    if not labels_file.is_file():
        raise DataError(
            f"the elpv-dataset package has no {labels_file}. Reinstall it with: "
            "pip install --force-reinstall elpv-dataset"
        )
    paths, labels, types = [], [], []
    for line_number, line in enumerate(labels_file.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3:
            raise DataError(
                f"line {line_number} of {labels_file}: expected 'path probability type'. Received: {line!r}"
            )
        path, probability, kind = fields
        paths.append(str(data_dir / path))
        labels.append(f"{float(probability):.2f}")
        types.append(kind)
    return tuple(paths), tuple(labels), tuple(types)


@functools.lru_cache(maxsize=1)
def _elpv_split(strata: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(
        np.arange(len(strata)), test_size=ELPV_TEST_SIZE, stratify=list(strata), random_state=ELPV_SPLIT_SEED
    )
    # sorted: file order inside a split is stable and readable; the split itself is the seed's
    return np.sort(train), np.sort(test)
