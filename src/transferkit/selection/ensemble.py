"""``auto``'s ensemble candidate: a trained network and a frozen-feature classifier, measured without training.

The network of ``auto``'s last round and the best frozen-feature candidate were both scored on
the same held-out images (fold 0), and the engine kept each one's class probabilities there. The
ensemble's held-out probabilities are their mean, image by image: no model is fitted to measure
it. The feature member is scored once more (cached features: seconds): at the network's side,
since the ensemble's members read the same pixels, and with the temperature its fitted head will
have, since an average weighs each member by the scale of its probabilities. The ensemble then enters
the winner rule (:func:`~transferkit.selection.winner.choose`) as one more trial; its ``outcome``
is the network the search trained, and when it wins the estimator fits only the feature
classifier on every image beside it
(:meth:`transferkit.strategies.ensemble.Ensemble.fit_after_search`).

The candidate is an ordinary :class:`~transferkit.selection.candidates.Candidate` of strategy
``ensemble``: the network's side, freeze, class weight and parameters, plus its feature member as
parameters (``feature_strategy``, ``feature_layers``, ``symmetries``) that the ensemble strategy
reads. Its own ``symmetries`` setting stays ``"none"``: the views are inside the one module.

Where the network trained with flips (and turns), the ensemble is measured a second time with
the network's probabilities averaged over those views too (``network_symmetries``: test-time
augmentation, :func:`network_view_probabilities`; forward passes of the trained network on the
held-out images, no training), and the winner rule decides between the two.

Where ``auto`` trained a second network like the first from another seed, in time the first left
unused, the ensemble is also measured with both networks' mean as its network member
(:class:`~transferkit.strategies.ensemble.NetworkAverage`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from transferkit.data.views import SYMMETRIES, view
from transferkit.selection.candidates import Candidate, with_params
from transferkit.selection.engine import Engine
from transferkit.selection.results import Trial
from transferkit.selection.winner import choose
from transferkit.strategies import FoldFit
from transferkit.strategies.ensemble import NetworkAverage
from transferkit.training.augment import augmentation_operations
from transferkit.training.inputs import predict_logits

HELD_OUT = 0
"""The fold every candidate of ``auto`` is scored on: the ensemble's members are paired there."""


def held_out_score(trial: Trial) -> float | None:
    """``trial``'s accuracy on the held-out fold (fold 0); None where it was not scored there."""
    return trial.scores[trial.folds.index(HELD_OUT)] if HELD_OUT in trial.folds else None


def ensemble_members(search: Engine) -> tuple[Trial, Trial] | None:
    """The best trained network that kept its model and the best frozen-feature candidate with the
    same class weights, both scored on the held-out fold (the winner rule's ``best`` of each kind);
    None when either is missing."""
    measured = [t for t in search.trials.values() if held_out_score(t) is not None and not is_ensemble(t.candidate)]
    networks = [t for t in measured if t.candidate.kind == "network" and t.outcome is not None]
    if not networks:
        return None
    network = choose(search.results, networks).best
    features = feature_partner(search, network.candidate)
    return (network, features) if features is not None else None


def feature_partner(search: Engine, network: Candidate) -> Trial | None:
    """The frozen-feature candidate an ensemble with ``network`` would average: of those scored on
    the held-out fold with ``network``'s class weights, the winner rule's ``best``; None if none."""
    features = [t for t in search.trials.values() if held_out_score(t) is not None and not is_ensemble(t.candidate)
                and t.candidate.kind == "features" and t.candidate.class_weight == network.class_weight]
    return choose(search.results, features).best if features else None


def is_ensemble(candidate: Candidate) -> bool:
    """Whether ``candidate`` is an ensemble of this round (it names a feature member)."""
    return "feature_strategy" in dict(candidate.params)


def feature_member_at(search: Engine, features: Trial, side: int) -> Trial:
    """``features``' candidate scored on the held-out fold at ``side`` px with calibrated
    probabilities: the same strategy, C rule, layers and symmetries, at the network's side, its
    decision values divided by the temperature fitted on the training part (``calibrated=True``),
    as the fitted model's head has them. The search's own feature trials keep the raw softmax
    (only their argmax decides there); an average with a network's probabilities needs the scale
    the shipped model will have."""
    return search.evaluate_candidates([feature_member(features.candidate, side)], [HELD_OUT])[0]


def feature_member(features: Candidate, side: int) -> Candidate:
    """The candidate :func:`feature_member_at` scores: ``features`` at ``side`` px, calibrated."""
    where = "" if features.image_size == side else " at the trained network's side"
    return with_params(replace(features, image_size=side, proposed_by=f"{features.label}{where}, calibrated, for an ensemble with it"),
                       calibrated=True)


def ensemble_candidate(network: Candidate, features: Candidate, network_symmetries: str = "none", networks: int = 1) -> Candidate:
    """The ``ensemble`` candidate of ``network`` (its side, freeze, class weight, parameters) and
    the feature member ``features`` (its strategy, layers and symmetries, as parameters);
    ``network_symmetries``: the views the network's probabilities are averaged over; ``networks``:
    how many trained networks (``network`` and its twins from other seeds) the network member averages."""
    tta = "" if network_symmetries == "none" else f", the network's averaged over {network_symmetries}"
    members = f"{network.label}" if networks == 1 else f"{networks} networks like {network.label}"
    candidate = replace(network, strategy="ensemble", symmetries="none", feature_layers="bottleneck",
                        proposed_by=f"{members} and {features.label} may err on different images: "
                                    f"the mean of their probabilities{tta}")
    candidate = with_params(candidate, feature_strategy=features.strategy, feature_layers=features.feature_layers,
                            symmetries=features.symmetries)
    if networks > 1:
        candidate = with_params(candidate, networks=networks)
    return candidate if network_symmetries == "none" else with_params(candidate, network_symmetries=network_symmetries)


def trained_views(network: Candidate) -> str:
    """The group of :data:`~transferkit.data.views.SYMMETRIES` that ``network``'s augmentation
    (its ``augment`` parameter: a preset or a composition, read by
    :func:`~transferkit.training.augment.augmentation_operations`) trained it with: ``dihedral``
    (both flips and turns by 90 degrees), ``flips`` (both flips) or ``none`` (also for a callable
    transform, whose operations are unknown)."""
    augment = dict(network.params).get("augment")
    ops = set(augmentation_operations(augment)[0]) if isinstance(augment, str) else set()
    return "dihedral" if {"hflip", "vflip", "rot90"} <= ops else "flips" if {"hflip", "vflip"} <= ops else "none"


def network_view_probabilities(search: Engine, network: Trial, symmetries: str) -> np.ndarray:
    """``network``'s class probabilities on the held-out images (n_held_out, K), averaged over the
    views of ``symmetries`` (test-time augmentation): the identity view's are those the search
    kept; each other view is one forward pass of the trained model (``network.outcome``)."""
    test = np.sort(search.folds[HELD_OUT][1])
    pixels = search.arena.pixels_at(network.candidate.image_size)[test]
    model, preprocessing = network.outcome.model, network.outcome.preprocessing
    views = [network.probabilities[network.folds.index(HELD_OUT)]]
    for name in SYMMETRIES[symmetries][1:]:
        views.append(torch.softmax(predict_logits(model, view(pixels, name), preprocessing, search.arena.runtime), 1).numpy())
    return np.mean(views, axis=0)


def measure_ensemble(search: Engine, network: Trial | Sequence[Trial], features: Trial, network_symmetries: str = "none",
                     computed: dict[Candidate, np.ndarray] | None = None) -> Trial:
    """Record the ensemble of ``network`` (one trained network's trial, or several trained alike:
    the network member is then their average) and ``features`` (all scored on the held-out fold at
    the same side) in the search: its held-out probabilities are the mean of the network member's
    and the feature member's, image by image (each network's first averaged over the views of
    ``network_symmetries``), and its ``outcome`` is the trained model: the network's, or a
    :class:`~transferkit.strategies.ensemble.NetworkAverage` of the networks'. Returns its trial.

    ``computed``: the networks' view-averaged probabilities by candidate, filled here and read
    again by a later call with the same dict, so that a network in two ensembles (alone and beside
    its twin) runs its test-time forward passes once."""
    started = time.perf_counter()
    networks = [network] if isinstance(network, Trial) else list(network)
    test = np.sort(search.folds[HELD_OUT][1])
    computed = {} if computed is None else computed
    if network_symmetries != "none":
        for trial in networks:
            if trial.candidate not in computed:
                computed[trial.candidate] = network_view_probabilities(search, trial, network_symmetries)
    network_probabilities = np.mean([trial.probabilities[trial.folds.index(HELD_OUT)] if network_symmetries == "none"
                                     else computed[trial.candidate] for trial in networks], axis=0)
    mean = (network_probabilities + features.probabilities[features.folds.index(HELD_OUT)]) / 2
    predictions = mean.argmax(1)
    outcome = networks[0].outcome if len(networks) == 1 else replace(
        networks[0].outcome, model=NetworkAverage([trial.outcome.model for trial in networks]))
    fitted = FoldFit(accuracy=float((predictions == search.arena.targets[test]).mean()), seconds=time.perf_counter() - started,
                     predictions=predictions, probabilities=mean, outcome=outcome)
    candidate = ensemble_candidate(networks[0].candidate, features.candidate, network_symmetries, len(networks))
    return search.record(candidate, HELD_OUT, fitted)


__all__ = ["ensemble_candidate", "ensemble_members", "feature_member_at", "feature_partner", "held_out_score", "is_ensemble",
           "measure_ensemble", "feature_member", "network_view_probabilities", "trained_views"]
