"""How unlike the training images an image is: a novelty score and an ``unknown`` flag.

A classifier gives every image one of its classes, a digit or a face as readily as a shirt.
The score here says how far an image's features lie from the training images' features: the
cosine distance to the nearest training feature (deep k-nearest-neighbour novelty, Sun et al.
2022, "Out-of-distribution detection with deep nearest neighbors", with k = 1). The features
are the model's own pooled pre-logits features (for ``svm``/``logistic``: the frozen
backbone's, averaged over the model's symmetries), scaled to unit length.

Why this score: measured on Lite0 features at 96 px (benchmarks/novelty.py, RESULTS.md), k = 1
separated other domains from a set's own test images at least as well as k = 5, 10, 50 and a
per-class Mahalanobis distance (Ledoit-Wolf shared covariance, on raw or unit features) on all
five benchmark sets (AUROC 0.986-1.000), and classes held out of training (near novelty) best or
within 0.01 of the best on four of them (on the fifth every score was near chance).

The threshold is calibrated at fit time on held-out training images, and is the
``1 - false_alarm_rate`` quantile of their scores, so about ``false_alarm_rate`` of new images
like the training images are flagged. For a frozen backbone (``svm``, ``logistic``, ``head``:
no image trained the features) each training image is scored against the *other* training
images (leave one out; identical copies of a picture are left out together). A network that
trained its features (``finetune``, ``full``, ``scratch``) pulls its training images together,
so there the threshold is calibrated on its validation split, scored against the rest.

Numpy only: the ONNX predictor (no torch) scores with this very code, on features its graph
returns, against the same stored reference.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

FALSE_ALARM_RATE = 0.05
"""Default share of images like the training images that the calibrated threshold flags."""
NEIGHBOURS = 1
"""The score is the distance to the k-th nearest training feature; k = 1 measured best."""
MAX_REFERENCE = 4096
"""Most training features kept (a random subset beyond that): 10 MB in float16 at 1,280
dimensions, and each score costs one (n, 4096) matrix product."""
CHUNK = 256
"""Images scored per matrix product (memory: CHUNK x reference rows floats)."""
MIN_HELD_OUT = 20
"""Fewest validation images a threshold is calibrated on; with fewer, leave one out."""
METHOD = "knn-cosine"


@dataclass(frozen=True)
class NoveltyScorer:
    """The training features and the calibrated threshold that score new images.

    Parameters
    ----------
    reference : ndarray, float16 (n_reference, n_features)
        Unit-length training features.
    threshold : float
        Scores above it are flagged ``unknown``.
    false_alarm_rate : float
        The share of held-out training images above ``threshold`` it was calibrated to.
    neighbours : int
        k: the score is the cosine distance to the k-th nearest reference feature.
    calibration : dict
        How the threshold was found: held-out images, their score quantiles.
    """

    reference: np.ndarray
    threshold: float
    false_alarm_rate: float = FALSE_ALARM_RATE
    neighbours: int = NEIGHBOURS
    calibration: dict[str, Any] | None = None

    def score(self, features: np.ndarray) -> np.ndarray:
        """Novelty of each row of ``features`` (n, n_features): float64 (n,), the cosine
        distance (0 = the direction of a training image, up to 2) to the k-th nearest training
        feature. Raises ``ValueError`` when the feature width differs from the reference's."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.reference.shape[1]:
            raise ValueError(f"novelty expected features of shape (n, {self.reference.shape[1]}). Received: {features.shape}")
        scores = np.empty(len(features), np.float64)
        for start in range(0, len(features), CHUNK):
            similarity = unit_rows(features[start : start + CHUNK]) @ self._reference_columns
            scores[start : start + CHUNK] = 1.0 - kth_largest(similarity, self.neighbours)
        return scores

    @cached_property
    def _reference_columns(self) -> np.ndarray:
        """The reference as float32 columns (n_features, n_reference), converted once: a server
        scores a small batch per call, and converting the float16 reference each time cost
        more than the matrix product (benchmarks/serve_load.py)."""
        return np.ascontiguousarray(self.reference.T, dtype=np.float32)

    def unknown(self, scores: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Boolean (n,): which ``scores`` lie above ``threshold`` (None: the calibrated one)."""
        return np.asarray(scores) > (self.threshold if threshold is None else float(threshold))

    def to_config(self) -> dict[str, Any]:
        """JSON-ready description (everything but the reference array)."""
        return {
            "method": METHOD, "neighbours": self.neighbours, "threshold": self.threshold,
            "false_alarm_rate": self.false_alarm_rate, "n_reference": int(len(self.reference)),
            "n_features": int(self.reference.shape[1]), "calibration": self.calibration,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], reference: np.ndarray) -> "NoveltyScorer":
        """The scorer of :meth:`to_config` and its reference array; ``ValueError`` on a mismatch."""
        if config.get("method") != METHOD:
            raise ValueError(f"novelty method expected {METHOD!r}. Received: {config.get('method')!r}")
        reference = np.asarray(reference, dtype=np.float16)
        if reference.ndim != 2 or reference.shape != (config["n_reference"], config["n_features"]):
            raise ValueError(f"novelty reference expected shape ({config['n_reference']}, {config['n_features']}). "
                             f"Received: {reference.shape}")
        return cls(reference=reference, threshold=float(config["threshold"]), false_alarm_rate=float(config["false_alarm_rate"]),
                   neighbours=int(config["neighbours"]), calibration=config.get("calibration"))

    def to_metadata(self) -> dict[str, Any]:
        """:meth:`to_config` plus the reference as base64 float16 (for an ONNX file's metadata)."""
        data = np.ascontiguousarray(self.reference, dtype="<f2").tobytes()
        return {**self.to_config(), "reference_float16_base64": base64.b64encode(data).decode("ascii")}

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> "NoveltyScorer":
        """The scorer that :meth:`to_metadata` describes."""
        raw = base64.b64decode(metadata["reference_float16_base64"])
        reference = np.frombuffer(raw, dtype="<f2").reshape(int(metadata["n_reference"]), int(metadata["n_features"]))
        return cls.from_config(metadata, reference)


def fit_novelty(
    features: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    held_out: np.ndarray | None = None,
    false_alarm_rate: float = FALSE_ALARM_RATE,
    neighbours: int = NEIGHBOURS,
    max_reference: int = MAX_REFERENCE,
    seed: int = 0,
) -> NoveltyScorer:
    """Keep the training ``features`` (n, n_features) and calibrate the threshold on held-out ones.

    ``held_out`` (indices) names images the network did not train on (a trained network's
    validation split): the threshold is calibrated on their scores against the other images,
    because a network's features of its own training images sit closer together than those of
    new images. Without it (a frozen backbone: features that no image trained), each image is
    scored against the others, leave one out. ``groups`` (n,) marks identical copies of one
    picture (``data.pixel_groups``): a copy is never another copy's neighbour in the
    calibration, which would score it 0. The reference keeps every image (a random subset beyond
    ``max_reference``). Raises ``ValueError`` for fewer than ``neighbours + 1`` images or a rate
    outside (0, 1).
    """
    features = np.asarray(features, dtype=np.float32)
    if not 0 < false_alarm_rate < 1:
        raise ValueError(f"false_alarm_rate expected a number in (0, 1). Received: {false_alarm_rate}")
    if features.ndim != 2 or len(features) < neighbours + 1:
        raise ValueError(f"novelty needs at least {neighbours + 1} training features (n, d). Received: shape {features.shape}")
    groups = np.arange(len(features)) if groups is None else np.asarray(groups)
    rng = np.random.default_rng(seed)
    keep = np.arange(len(features))
    if len(keep) > max_reference:
        keep = np.sort(rng.choice(len(keep), max_reference, replace=False))
    reference = unit_rows(features[keep]).astype(np.float16)
    held_out = None if held_out is None else np.unique(np.asarray(held_out, dtype=np.int64))
    if held_out is not None and len(held_out) >= MIN_HELD_OUT and len(features) - len(held_out) >= neighbours:
        rest = np.setdiff1d(np.arange(len(features)), held_out)
        if len(rest) > max_reference:
            rest = np.sort(rng.choice(rest, max_reference, replace=False))
        calibration_scores = held_out_scores(unit_rows(features[held_out]), groups[held_out],
                                             unit_rows(features[rest]).astype(np.float16).astype(np.float32), groups[rest], neighbours)
        how = "the network's validation images, scored against the other training images"
    else:
        calibration_scores = held_out_scores(reference.astype(np.float32), groups[keep], reference.astype(np.float32), groups[keep],
                                             neighbours)
        how = "leave one out (copies of a picture left out together)"
    threshold = float(np.quantile(calibration_scores, 1.0 - false_alarm_rate))
    calibration = {
        "held_out": how, "n_images": int(len(calibration_scores)),
        "quantiles": {q: round(float(np.quantile(calibration_scores, float(q))), 6) for q in ("0.5", "0.9", "0.95", "0.99")},
    }
    return NoveltyScorer(reference=reference, threshold=threshold, false_alarm_rate=float(false_alarm_rate),
                         neighbours=int(neighbours), calibration=calibration)


def held_out_scores(queries: np.ndarray, query_groups: np.ndarray, reference: np.ndarray, reference_groups: np.ndarray,
                    neighbours: int) -> np.ndarray:
    """Each unit query row's score against the unit reference rows of other groups: (n,) float64.

    With the reference as the queries this is leave one out (a row's own group left out)."""
    scores = np.empty(len(queries), np.float64)
    for start in range(0, len(queries), CHUNK):
        similarity = queries[start : start + CHUNK] @ reference.T
        similarity[query_groups[start : start + CHUNK, None] == reference_groups[None, :]] = -np.inf
        nearest = kth_largest(similarity, neighbours)
        scores[start : start + CHUNK] = 1.0 - np.where(np.isfinite(nearest), nearest, -1.0)  # no other image: farthest
    return scores


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 length (all-zero rows stay zero), float32."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def kth_largest(similarity: np.ndarray, k: int) -> np.ndarray:
    """The k-th largest value of each row (k = 1: the maximum)."""
    k = min(k, similarity.shape[1])
    if k == 1:
        return similarity.max(axis=1)
    return -np.partition(-similarity, k - 1, axis=1)[:, k - 1]


def novelty_summary(scorer: NoveltyScorer | None, scores: np.ndarray | None = None, threshold: float | None = None) -> dict[str, Any]:
    """What ``evaluate``, ``predict --json`` and the report say about novelty: the threshold in use
    (``threshold``, else the calibrated one), where it comes from, and with ``scores`` how many
    of them it flags. ``threshold`` is None throughout when the model has no score."""
    if scorer is None:
        return {"threshold": None, "flagged": None, "flagged_share": None,
                "description": "this model has no novelty score (saved before novelty scores existed, or the pixels "
                               "strategy); refit to get one"}
    used = scorer.threshold if threshold is None else float(threshold)
    source = (f"calibrated at fit time: {scorer.false_alarm_rate:.0%} of held-out training images above it"
              if threshold is None else "set by the user")
    summary = {"threshold": used, "calibrated_threshold": scorer.threshold, "false_alarm_rate": scorer.false_alarm_rate,
               "description": f"unknown = novelty above {used:.4g} ({source})", "flagged": None, "flagged_share": None}
    if scores is not None:
        flags = scorer.unknown(scores, used)
        summary.update(flagged=int(flags.sum()), flagged_share=round(float(flags.mean()), 4) if len(flags) else None)
    return summary
