"""The one cost model: what a fit or a fold costs on this machine, from speeds timed once.

:class:`Speeds` times a forward pass and a training step of the backbone once per image side
(after a warm-up batch) and keeps them; the rules' time budget (:class:`transferkit.advise.Budget`)
and the engine's per-candidate estimates (:class:`CostModel`) both price work with it, so one
``auto`` fit times each side once. A training step of a strategy that freezes part of the network
costs its share of a full step by :meth:`transferkit.strategies.Strategy.passes_per_image`
(forward, backward for activations and for weights through the layers that train; forward alone
through the frozen ones).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from transferkit.data.views import SYMMETRIES
from transferkit.selection.candidates import Candidate
from transferkit.strategies import get_strategy
from transferkit.training.allocator import release_freed_memory

FULL_PASSES = 3.0
"""Forward-pass equivalents of one training step of the whole network (forward + two backward)."""
FINAL_FIT_SHARE = 0.05
"""Budget kept back for the final fit of a feature winner (its features are cached by then)."""


@dataclass
class Speeds:
    """Seconds per image on this machine: a forward pass, and a training step of the whole
    network (both timed once per image side, after a warm-up batch).

    :meth:`from_forward` makes one from a single forward measurement instead (a training step
    then costs :data:`FULL_PASSES` forward passes, and both scale with the pixel count).
    """

    backbone: str
    weights: str | None
    runtime: Any

    def __post_init__(self) -> None:
        self._forward: dict[int, float] = {}
        self._train: dict[int, float] = {}
        self._measured: tuple[float, int] | None = None

    @classmethod
    def from_forward(cls, images_per_second: float, size: int) -> "Speeds":
        speeds = cls("measured", None, None)
        speeds._measured = (float(images_per_second), int(size))
        return speeds

    def forward(self, size: int) -> float:
        if self._measured is not None:
            return (size / self._measured[1]) ** 2 / self._measured[0]
        if size not in self._forward:
            from transferkit.backbones import create_backbone

            model, preprocessing = create_backbone(self.backbone, num_classes=1, weights_path=self.weights)
            self._forward[size] = 1.0 / forward_speed(model, np.zeros((32, size, size, 3), np.uint8), preprocessing, self.runtime, 16)
        return self._forward[size]

    def train(self, size: int) -> float:
        if self._measured is not None:
            return FULL_PASSES * self.forward(size)
        if size not in self._train:
            self._train[size] = _time_training_step(self.backbone, self.weights, self.runtime, size)
        return self._train[size]

    def train_step(self, strategy: str, size: int, freeze: int | None, n_blocks: int) -> float:
        """Seconds per image of one training step of ``strategy`` (frozen stages cost a forward pass)."""
        entry = get_strategy(strategy)
        return self.train(size) * entry.passes_per_image(freeze, n_blocks) / FULL_PASSES


def forward_speed(model, pixels: np.ndarray, preprocessing, runtime, batch_size: int) -> float:
    """Images per second of a plain forward pass over ``pixels[:2 * batch_size]``, after a warm-up batch."""
    import torch

    from transferkit.training.inputs import predict_logits

    model = runtime.prepare_model(model)
    sample = pixels[: 2 * batch_size]
    with torch.no_grad():
        predict_logits(model, sample[:2], preprocessing, runtime, batch_size)
        started = time.perf_counter()
        predict_logits(model, sample, preprocessing, runtime, batch_size)
        seconds = time.perf_counter() - started
    release_freed_memory()  # a pass of its own: see release_freed_memory
    return len(sample) / max(seconds, 1e-9)


def _time_training_step(backbone: str, weights, runtime, size: int, batch: int = 16) -> float:
    """Seconds per image of one forward + backward + optimiser step of the whole network, in the
    precision training will use (:func:`~transferkit.training.runtime.fastest_training_precision`:
    on a CPU where ``auto`` resolved bf16, training often measures fp32 faster). On an AMX Xeon
    at 224 px, this step took 0.064 s per image in bf16 and 0.054 in fp32; priced in bf16,
    ELPV's 224 px epoch was estimated at ~84 s, and the network trained in fp32 at ~63 s."""
    import torch

    from transferkit.backbones import create_backbone
    from transferkit.training.runtime import fastest_training_precision

    model, _ = create_backbone(backbone, num_classes=2, weights_path=weights)
    model = runtime.prepare_model(model).train()  # never a DDP wrapper: this times one process alone
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = runtime.images_to_device(torch.zeros(batch, 3, size, size)).float()
    runtime = fastest_training_precision(runtime, model, inputs[: min(8, batch)])  # as the network's fit decides
    targets = runtime.to_device(torch.zeros(batch, dtype=torch.long))
    seconds = []
    for _ in range(2):  # the first step warms up the kernels
        started = time.perf_counter()
        with runtime.autocast():
            loss = torch.nn.functional.cross_entropy(model(inputs).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    del model, optimizer, loss
    release_freed_memory()  # the step's activations and gradients: a pass of its own
    return seconds[-1] / batch


def fit_seconds(speeds: Speeds, strategy: str, image_size: int, n_images: int, freeze: int | None, n_blocks: int, *,
                epochs: int, val_fraction: float) -> float:
    """Seconds a whole fit of ``strategy`` on ``n_images`` would take (the rules' time budget):
    one forward pass per image for a classifier on frozen features, nothing for the pixels'
    kernel machine, ``epochs`` of training steps plus a validation pass for a network."""
    entry = get_strategy(strategy)
    if not entry.pretrained and not entry.trains_network:
        return 0.0
    if not entry.trains_network:
        return n_images * speeds.forward(image_size)
    n_val = n_images * val_fraction
    return epochs * ((n_images - n_val) * speeds.train_step(strategy, image_size, freeze, n_blocks) + n_val * speeds.forward(image_size))


class CostModel:
    """The engine's estimate: seconds to score a candidate on one more fold.

    A candidate already scored on a fold costs what its last fold took (frozen features are
    cached after the first); a network ``epochs`` of training steps and a validation pass; a
    classifier on frozen features one forward pass per image and view not yet computed (by a
    scored candidate, or by a shared pass recorded in ``warmed``; multi-layer features include
    the bottleneck's), plus reading the cached ones and fitting (:func:`_reading_seconds`); the
    pixels' kernel machine nothing before it ran (seconds, on at most a few thousand images).
    """

    def __init__(self, speeds: Speeds, n_images: int, warmed: set[tuple[int, str, str]] | None = None):
        self.speeds, self.n_images = speeds, n_images
        self.warmed: set[tuple[int, str, str]] = set() if warmed is None else warmed

    def __call__(self, candidate: Candidate, n_train: int, n_test: int, trials: Mapping[Candidate, Any] | None = None) -> float:
        trials = trials or {}
        trial = trials.get(candidate)
        if trial is not None and trial.fold_seconds:
            return trial.fold_seconds[-1] if len(trial.fold_seconds) > 1 else trial.fold_seconds[0] - trial.extract_seconds
        entry = get_strategy(candidate.strategy)
        size = candidate.image_size
        if entry.trains_network:
            epochs = int(dict(candidate.params).get("epochs", 10))
            return epochs * (n_train * self.speeds.train(size) + n_test * self.speeds.forward(size))
        if not entry.pretrained:
            return 0.0
        done = [t.candidate for t in trials.values() if t.scores]
        cached = set(self.warmed) | {(c.image_size, c.feature_layers, view) for c in done if get_strategy(c.strategy).frozen_backbone
                                     for view in SYMMETRIES[c.symmetries]}
        cached |= {(s, "bottleneck", view) for s, layers, view in cached if layers == "stages"}
        new_views = [view for view in SYMMETRIES[candidate.symmetries] if (size, candidate.feature_layers, view) not in cached]
        return len(new_views) * self.n_images * self.speeds.forward(size) + _reading_seconds(candidate, trials)


def _reading_seconds(candidate: Candidate, trials: Mapping[Candidate, Any]) -> float:
    """Seconds to fit ``candidate``'s classifier on cached features: per view, the least a scored
    candidate of the same strategy, side and layers took per view beyond its extraction.

    Cached views are not free: the classifier is fitted on their mean, and its fit grows with
    the views (ELPV, 1,968 images at 224 px, svm: 13 s for one view, 53 s for the 4 flips, 74 s
    for the 8 symmetries of the square, which a 7-minute fit once started 23 s before its
    deadline on an estimate of 0 s; logistic: 4 s and 6 s, so the strategy counts). An estimate,
    wrong both ways: reading cached features counts as extraction and is left out (60-minute
    ELPV fit: the 8-view svm ~23 s estimated, 66 s taken), and scaling a one-view fit by the
    views over-estimates the multi-layer svm (33 s for one view, ~125 s estimated for 4, 74-81 s
    taken). 0 before any such candidate was scored."""
    per_view = [(t.fold_seconds[0] - t.extract_seconds) / len(SYMMETRIES[t.candidate.symmetries])
                for t in trials.values() if t.fold_seconds and t.candidate.strategy == candidate.strategy
                and t.candidate.image_size == candidate.image_size and t.candidate.feature_layers == candidate.feature_layers]
    return len(SYMMETRIES[candidate.symmetries]) * max(0.0, min(per_view)) if per_view else 0.0


def estimated_fit_seconds(advice: Any) -> float | None:
    """What ``auto`` expected its whole fit to take (``advice``: :class:`transferkit.advise.Advice`):
    the probe and the search, plus the winner's measured classifier fit once more (its features
    are cached by then; a trained network is kept, not trained again). None without a search."""
    if advice is None or advice.search is None:
        return None
    chosen = advice.search.chosen
    # one fold's classifier fit (the features were extracted once, in the first fold)
    refit = 0.0 if chosen.outcome is not None else (chosen.seconds - chosen.extract_seconds) / max(1, len(chosen.folds))
    return advice.seconds + advice.search.seconds + refit
