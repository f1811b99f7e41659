"""``transferkit audit``: a labelled set seen through frozen features, within a budget.

Reads: decoded pixels -> cached bottleneck features (one forward pass per image) -> out-of-fold
probabilities of a linear probe (:mod:`transferkit.audit.oof`, the seam) -> label issues
(confident learning), near-duplicates (thumbnails), outliers (feature-space k-NN distance); then
the candidate ``fit`` would choose among frozen features and its learning curve (power law).
Each finding is computed from arrays by its own module; this one only sequences them and keeps
the budget: steps that would not fit are skipped, saying so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from transferkit.audit.curve import predict_accuracy
from transferkit.audit.label_issues import find_label_issues
from transferkit.audit.oof import CURVE_FRACTIONS, audit_arena, curve_candidate, learning_curve_points, out_of_fold_probabilities, probe_features
from transferkit.audit.outliers import find_outliers
from transferkit.data import ImageSet, check_classes, content_digests, duplicate_groups, near_copy_pairs, thumbnails
from transferkit.strategies.features import FeatureExtractor
from transferkit.strategies.linear import settle_feature_precision
from transferkit.training.runtime import resolve_runtime

def suggest_images(classifier, pixels: np.ndarray, labelled_pixels: np.ndarray | None, n: int, *, seed: int = 0):
    """(order, scores, predicted): the ``n`` of ``pixels`` (uint8 (m, S, S, 3), at the model's size)
    to label first (:func:`transferkit.audit.suggest.rank_for_labelling`), their priorities in
    (0, 1], and the fitted ``classifier``'s predicted class of each.

    Features are the classifier's own network's pooled features; ``labelled_pixels`` (the images
    already labelled, or None) mark the regions that need no more labels.
    """
    from transferkit.audit.suggest import rank_for_labelling
    from transferkit.training.runtime import prediction_runtime

    extractor = FeatureExtractor.from_model(classifier.model_, classifier.preprocessing_,
                                            runtime=prediction_runtime(classifier.device, classifier.precision),
                                            cache_dir=classifier.cache_dir)
    features = extractor.transform(pixels)
    labelled = extractor.transform(labelled_pixels) if labelled_pixels is not None and len(labelled_pixels) else np.zeros((0, features.shape[1]))
    classifier.model_ = extractor.model.cpu()
    proba = classifier.predict_proba(pixels)
    order, scores = rank_for_labelling(features, proba, labelled, n, seed=seed)
    return order, scores, classifier.classes_[proba.argmax(axis=1)[order]]


MAX_LISTED = 200
"""Findings of each kind kept in the result (the most suspicious first)."""


@dataclass
class AuditResult:
    """What :func:`audit_images` found; :meth:`to_dict` is ``audit --json``."""

    n_images: int
    classes: list[str]
    label_issues: list[dict[str, Any]]
    near_duplicates: list[dict[str, Any]]
    outliers: list[dict[str, Any]]
    learning_curve: dict[str, Any] | None
    model: dict[str, Any]
    skipped_steps: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_images": self.n_images, "classes": self.classes, "model": self.model,
            "label_issues": self.label_issues, "near_duplicates": self.near_duplicates, "outliers": self.outliers,
            "learning_curve": self.learning_curve, "skipped_steps": self.skipped_steps, "seconds": round(self.seconds, 1),
        }


def _near_duplicate_groups(images: ImageSet, thumbs: np.ndarray, digests: list[str]) -> list[dict[str, Any]]:
    """Connected groups of byte copies and near-copies: ``{paths, labels, similarity}`` (the lowest pair's)."""
    pairs = [(p.query, p.reference, p.similarity) for p in near_copy_pairs(thumbs)]
    first: dict[str, int] = {}
    for i, digest in enumerate(digests):
        j = first.setdefault(digest, i)
        if j != i:
            pairs.append((j, i, 1.0))
    parent = list(range(len(images)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in pairs:
        parent[find(i)] = find(j)
    lowest: dict[int, float] = {}
    members: dict[int, set[int]] = {}
    for i, j, similarity in pairs:
        root = find(i)
        lowest[root] = min(lowest.get(root, 1.0), similarity)
        members.setdefault(root, set()).update((i, j))
    groups = [{"paths": [images.source_name(i) for i in sorted(m)], "labels": [images.labels[i] for i in sorted(m)],
               "similarity": round(lowest[root], 4)} for root, m in members.items()]
    groups.sort(key=lambda g: (len(set(g["labels"])) == 1, -g["similarity"]))  # mixed labels first
    return groups


def audit_images(
    images: ImageSet, pixels: np.ndarray, *, backbone: str = "efficientnet_lite0", weights: str | None = None,
    cache_dir: str | None = None, device: str = "auto", precision: str = "auto", cv: int = 5, seed: int = 0,
    budget_seconds: float | None = None, say: Callable[[str], None] = lambda text: None, progress: bool = False,
) -> AuditResult:
    """Audit labelled ``images`` whose decoded ``pixels`` (uint8 (N, S, S, 3)) are given, row for row.

    Raises :class:`~transferkit.errors.DataError` for fewer than 2 classes or a class with fewer
    than ``cv`` images (out-of-fold probabilities need ``cv`` folds).
    """
    started = time.perf_counter()
    left = (lambda: float("inf")) if budget_seconds is None else (lambda: budget_seconds - (time.perf_counter() - started))
    check_classes(images, min_per_class=cv, purpose=f"out-of-fold probabilities ({cv} folds)")
    classes = list(images.classes)
    targets = images.targets()
    skipped: list[str] = []

    say("near-duplicates: comparing thumbnails")
    digests = content_digests(images)
    thumbs = thumbnails(pixels)
    near = _near_duplicate_groups(images, thumbs, digests)
    groups = duplicate_groups(images, digests, pixels)  # copies and near-copies in one fold

    say(f"features: {backbone} at {pixels.shape[1]} px (cached)")
    params = {"backbone": backbone, "weights": weights, "cache_dir": cache_dir, "device": device, "precision": precision, "seed": seed}
    # bf16 features only where a classifier's predictions from them hold up on these labelled images (as fit decides)
    runtime = settle_feature_precision(resolve_runtime(device, precision), params, pixels, targets, seed=seed)
    arena = audit_arena(pixels, targets, classes, runtime=runtime, params=params)
    features = probe_features(arena)  # one extractor: the engine's probe below reads the same, cached

    say("outliers: nearest-neighbour distances")
    found, scores = find_outliers(features)
    outliers = [{"path": images.source_name(int(i)), "label": images.labels[int(i)], "score": round(float(s), 4)}
                for i, s in zip(found, scores)]

    say(f"label issues: {cv}-fold out-of-fold probabilities")
    oof = out_of_fold_probabilities(arena, groups, cv=cv, seed=seed, on_fold=lambda i, k: say(f"  fold {i}/{k}"))
    issues = find_label_issues(targets, oof.proba)
    label_issues = [{"path": images.source_name(int(i)), "label": classes[targets[i]], "suggested": classes[int(j)],
                     "score": round(float(s), 4)} for i, j, s in zip(issues.indices, issues.suggested, issues.scores)]
    oof_accuracy = float((oof.proba.argmax(axis=1) == targets).mean())

    curve = None
    fit_seconds = oof.seconds / max(oof.folds, 1)
    if left() < 12 * fit_seconds:
        skipped.append(f"learning curve: {left():.0f} s of the budget left, about {12 * fit_seconds:.0f} s needed")
    else:
        say("learning curve: the candidate fit would choose among frozen features")
        choice = curve_candidate(arena, groups, seed=seed)
        folds = oof.folds
        needed = folds * sum(CURVE_FRACTIONS) * choice.seconds_per_fit  # a fit's time grows about linearly with its images
        if left() < needed:
            skipped.append(f"learning curve: {left():.0f} s of the budget left, about {needed:.0f} s needed "
                           f"for {choice.candidate.label}")
        else:
            say(f"learning curve: {choice.candidate.label} at 1/8, 1/4, 1/2 and all of each fold's training part")
            sizes, accuracies, n_eval = learning_curve_points(arena, groups, choice.candidate, seed=seed, cv=folds)
            n = len(images)
            params, predicted = predict_accuracy(sizes, accuracies, [2 * n, 4 * n], n_eval=n_eval, seed=seed)
            curve = {"n_images": [int(s) for s in sizes], "accuracy": [round(float(a), 4) for a in accuracies], "n_eval": n_eval,
                     "candidate": choice.describe(), "model": "a - b * n**(-c)",
                     "params": {"a": round(params[0], 4), "b": round(params[1], 4), "c": round(params[2], 4)},
                     "predicted": [p.to_dict() for p in predicted]}
    model = {"strategy": oof.strategy, "backbone": backbone, "image_size": int(pixels.shape[1]), "C": oof.C, "folds": oof.folds,
             "out_of_fold_accuracy": round(oof_accuracy, 4)}
    return AuditResult(n_images=len(images), classes=classes, label_issues=label_issues[:MAX_LISTED], near_duplicates=near[:MAX_LISTED],
                       outliers=outliers[:MAX_LISTED], learning_curve=curve, model=model, skipped_steps=skipped,
                       seconds=time.perf_counter() - started)
