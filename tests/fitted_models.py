"""Tiny fitted model folders shared by the report, export and serve tests (seconds to fit)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from conftest import TINY_BACKBONE
from transferkit import ImageClassifier, save


def fit_tiny_model(data, weights: Path, out: Path, strategy: str = "finetune", image_size: int = 32, **params) -> Path:
    """Fit the tiny backbone with ``strategy`` on ``data`` and save it to ``out``."""
    settings = dict(
        backbone=TINY_BACKBONE, strategy=strategy, weights=str(weights), image_size=image_size, epochs=2,
        batch_size=8, lr=1e-2, device="cpu", precision="fp32", cache_dir=False,
    )
    if strategy in ("svm", "logistic"):
        settings["C"] = 1.0  # no inner CV: seconds matter here, not C
    settings.update(params)
    classifier = ImageClassifier(**settings).fit(data)
    save(classifier, out, metrics={"validation_accuracy": classifier.validation_score_})
    return out


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread, then restore the count.

    The tiny models gain nothing from more threads, and on a busy 2-core machine OpenMP's
    spinning workers made a dozen training steps take up to 28 s instead of 0.4 s.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def single_threaded_torch():
    """Imported by a test module, this makes the whole module run :func:`one_thread`."""
    with one_thread():
        yield
