"""``auto``'s schedule: candidates proposed in rounds, scored by the one engine within a budget.

The playbook's rules (:mod:`transferkit.advise.rules`) trust rules of thumb written for other
data. Here their recommendation only *proposes*; the :class:`~transferkit.selection.engine.Engine`
scores every proposal on the same held-out fold of the user's images (a stratified fifth), within
the time budget, and :func:`~transferkit.selection.winner.choose` picks. Where that fifth is small
(at most :data:`SMALL_HOLDOUT` images) one image is several points of accuracy, so the cheap
candidates (frozen features, pixels: seconds each) are also scored on the other folds, repeated
(:func:`cheap_repeats`): every image held out once per repeat, and the winner rule compares them
image by image on all of them. The rounds, cheapest first, each proposed in view of what the
earlier ones measured:

1. ``svm`` on the bottleneck features at the backbone's size (the playbook's recipe for small
   data, and the baseline nothing may lose to), ``logistic`` on the same cached features, and
   ``svm`` on multi-layer features (the bottleneck plus every stage's mean- and max-pooled
   output: what earlier, more general layers see, for data far from ImageNet). One shared pass
   computes the multi-layer features, whose last columns are the bottleneck's, so the three cost
   one forward pass per image.
2. The symmetry test: does a horizontal (vertical) flip, or a turn by 90 degrees, keep the
   class? The ``svm`` of round 1 scores the held-out images flipped and turned. Where a view
   costs accuracy beyond the noise of the fold, the svm is fitted again on the training images
   and their views, labels unchanged: a view that changes the class teaches contradicting labels
   and costs accuracy on the held-out images as they are; one whose features merely differ (a
   turned solar cell) costs nothing and is kept. This decides the flips and quarter turns
   (``rot90``) of the network's augmentation and which test-time averaging is a candidate.
3. Cheap variants the facts call for: balanced class weights (imbalance), an RBF SVM on the
   pixels (small data sets), features averaged over the 4 flipped views and, where quarter
   turns keep the class too, over the 8 symmetries of the square, bottleneck and multi-layer
   (when the budget allows; again one shared pass per view), a smaller input for large images.
4. A learning-rate pilot: the playbook trains pretrained layers 10x slower than the new head;
   two short trainings (:data:`PILOT_EPOCHS` epochs at a smaller side than the network's, at most
   :data:`PILOT_SIDE` px) measure that rule against training every layer at the head's rate, and
   the network keeps the playbook's unless the other wins by more than the winner rule's tie,
   one paired standard error over the held-out images (far domains: on the spatial set 0.31 ->
   0.43 after one epoch, and 0.82 -> 1.00 validation accuracy after 8). Skipped when it would
   take more than :data:`PILOT_SHARE` of the network's own estimate, or when the user fixed the
   factor. At ``lr x 1`` the network needs fewer steps (:data:`MIN_STEPS_FAST`), so it is sized
   again, larger, with what is left.
   Then a regularisation pilot: the same short training at the chosen factor with the ``light``
   and ``strong`` presets of :mod:`transferkit.training.regularize` beside today's recipe (the
   learning-rate pilot's own run); the network takes the strongest setting tied with the best
   (the same paired rule). Where the imbalance rule fired, one more run draws class-balanced
   batches, kept when balanced accuracy gains beyond a paired standard error (each image weighted
   by its class's rarity) at no accuracy cost beyond one.
5. A trained network (``finetune`` at the advised freeze depth, or ``full``), at the largest
   image side and the most epochs that the rest of the budget affords on this machine (a
   training step is timed), with the flips and turns the held-out images look alike under. Its
   schedule counts optimiser steps, not epochs: small data sets get more epochs. It stops early
   when it cannot catch the leader, or when the budget runs out; if it wins, the network trained
   here is the model (no second training).
   Then, under a budget and where the ensemble round will run, a second network like the first,
   from another seed (data order, augmentation, dropout), in the time the first left unused
   (:func:`_second_network_round`; ELPV's network stopped early after 33 of 60 minutes).
6. An ensemble of that network and the best frozen-feature candidate, when both are within the
   noise of the best held-out score (:func:`_ensemble_round`, :mod:`transferkit.selection.ensemble`):
   the mean of their held-out probabilities, image by image, with no training; with the second
   network, once more with both networks' mean as the network member. If it wins, the model is
   the network (or both) trained here beside the feature classifier fitted on all the images.

Whatever the user fixed (``image_size``, ``class_weight``, ``symmetries``, ``feature_layers``, ``augment``) every
candidate is measured with. Each candidate's cost is estimated by the one cost model
(:mod:`transferkit.selection.cost`), and a candidate that no longer fits is skipped, saying so.

``facts`` and ``recommendation`` are the advisor's (:class:`transferkit.advise.DataFacts`,
:class:`transferkit.advise.Recommendation`), read by attribute: this wing sits below the rules, which
price their time budget with its cost model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from transferkit.data import pixel_groups
from transferkit.evaluation.metrics import balanced_accuracy
from transferkit.selection.candidates import Candidate, with_params
from transferkit.selection.cost import FINAL_FIT_SHARE, CostModel, Speeds
from transferkit.selection.engine import Arena, Engine
from transferkit.selection.ensemble import (
    ensemble_members, feature_member, feature_member_at, feature_partner, held_out_score, is_ensemble, measure_ensemble,
    trained_views,
)
from transferkit.selection.folds import holdout_folds
from transferkit.selection.results import Results, Trial
from transferkit.selection.winner import Decision, Paired, choose, paired_difference
from transferkit.strategies import get_strategy
from transferkit.strategies.features import SYMMETRIES, FeatureExtractor, symmetric_features
from transferkit.strategies.linear import fit_linear_classifier
from transferkit.strategies.network import PLAYBOOK_LR_FACTOR
from transferkit.strategies.pixels import DEFAULT_SIDE

MAX_PIXEL_IMAGES = 5_000
"""A kernel machine's fit grows with the square of the images: ``pixels`` is proposed up to here."""
LARGE_IMAGE_SIDE = 160
"""Images whose median side reaches this also get an ``svm`` candidate at :data:`SMALL_SIDE`."""
SMALL_SIDE = 128
SMALL_HOLDOUT = 300
"""A held-out fold of at most this many images is too small to tell candidates apart (one image is
at least a third of a point): the cheap candidates are then scored on every fold, repeated."""
REPEAT_OBSERVATIONS = 400
MAX_REPEATS = 2
"""The cheap candidates of a small set run ceil(:data:`REPEAT_OBSERVATIONS` / images) repeats of
the k-fold split, at most this many: at least 400 held-out outcomes per candidate where the
images allow (150 face crops: 2 x 5 folds, 300 outcomes)."""
NETWORK_SIDES = (224, 192, 160, 128, 112, 96, 80, 64, 48, 32)
"""Image sides a trained network may use, largest first; the budget picks the first that fits."""
MIN_NETWORK_EPOCHS = 6
"""A network needs at least this many epochs (and :data:`MIN_STEPS` steps) to be worth measuring."""
MAX_NETWORK_EPOCHS = 30
MIN_STEPS = 600
"""Optimiser steps a trained network gets at least, where the budget allows: with few images an
epoch is a handful of steps, and schedules counted in epochs undertrain (issue 23). The side is
lowered until the whole schedule fits ("low resolution first"): on the spatial benchmark set,
7 epochs at 128 px (~350 steps, cut by the budget) reached 0.818 test accuracy."""
MIN_STEPS_FAST = 300
"""The same floor when the learning-rate pilot chose ``lr x 1`` for the pretrained layers: they
then learn about 10x faster, and the budget is better spent on a larger side (spatial set, 80 px,
``lr x 1``: 1.00 validation accuracy after 4 epochs of ~50 steps; the 600-step floor had pushed
the network down to 32 px, 0.90 test accuracy)."""
TTA_SHARE = 0.3
"""Flip-averaged features cost 3 more forward passes per image (the 8 symmetries of the square 7):
proposed only when that fits in this share of what is left of the budget after the symmetry
test, so that a trained network keeps its chance (ELPV, 7 minutes: the 4 more views of the square
would have taken the time of the multi-layer + flips candidate, the best)."""
PILOT_FACTORS = (PLAYBOOK_LR_FACTOR, 1.0)
"""Learning-rate multipliers of the pretrained layers that the pilot compares, the playbook's first."""
PILOT_SIDE = 64
PILOT_SCALE = 0.75
"""The pilot trains at the largest side of :data:`NETWORK_SIDES` up to :data:`PILOT_SIDE` and
this share of the network's own side (the network's side when none is smaller): it compares
learning rates, cheaply."""
PILOT_EPOCHS = 2
PILOT_SHARE = 0.3
"""Each pilot (learning rate; regularisation and sampling) runs only when it costs at most this
share of the network's own estimate."""
REGULARIZATION_ORDER = ("none", "light", "strong")
"""The regularisation presets (:data:`transferkit.training.regularize.REGULARIZATION`) the
regularisation pilot compares, weakest first."""
REGULARIZATION_WORDS = {"none": "none (the augmentation, dropout before the head, label smoothing)",
                        "light": "light (also stochastic depth 0.05 and a weight average)",
                        "strong": "strong (also mixup/cutmix on half the batches, random erasing, stochastic depth 0.1, a weight average)"}
SYMMETRY_WORDS = {"flips": "flips", "dihedral": "flips and turns by 90 degrees"}
"""How the reasons name each group of :data:`SYMMETRIES` that a candidate averages over."""
STAGES_WHY = ("multi-layer features: earlier stages see what the bottleneck pools away "
              "(the playbook: early layers are general, so they transfer further from ImageNet)")
FINAL_FIT_FACTOR = 1.0
"""A feature winner's final fit, against its classifier fit on one fold as the search measured it:
the same fit on all the images (a fifth more), its temperature on 3 inner folds and the novelty
threshold, against the search's reads of every view's features (ELPV, multi-layer features +
flips: 94 s in the search, 75 s as a final fit)."""
ENSEMBLE_ROOM_SHARE = 0.1
"""The time the ensemble round takes (:func:`_ensemble_seconds`) is kept back from the network
only where it is at most this share of what is left: an hour's budget spares it (ELPV: ~2 of ~50
minutes), while ten minutes would lose a quarter of the network's epochs to a round that then
rarely finds the network within the noise."""
PERFECT = 1.0
"""A leader with this held-out accuracy leaves a network nothing to win: none is trained."""


@dataclass(frozen=True)
class Symmetry:
    """Does a flip, or a turn by 90 degrees, keep the class? Accuracy on the held-out images, as
    they are, flipped and turned (``accuracy``), and, for each view the classifier scored worse,
    on the held-out images as they are once the training images' views joined its training images
    with their labels unchanged (``trained_with``)."""

    accuracy: Mapping[str, float]
    tolerance: float
    horizontal: bool
    vertical: bool
    rotation: bool = False
    trained_with: Mapping[str, float] = field(default_factory=dict)

    @property
    def flips(self) -> bool:
        return self.horizontal and self.vertical

    @property
    def dihedral(self) -> bool:
        """Every symmetry of the square keeps the class (the flips and the turns by 90 degrees)."""
        return self.flips and self.rotation

    def unchanged(self, kind: str) -> bool:
        """Whether the held-out images seen through view ``kind`` (``horizontal``, ``vertical``,
        ``rotate90``) scored within the tolerance of them as they are: the first test alone. The
        images look alike under the view, so new images may show it."""
        return kind in self.accuracy and self.accuracy[kind] >= self.accuracy["none"] - self.tolerance

    @property
    def kept(self) -> list[str]:
        """The names of the symmetries that keep the class."""
        return [name for name, flag in (("horizontal flip", self.horizontal), ("vertical flip", self.vertical),
                                        ("turn by 90 degrees", self.rotation)) if flag]

    def describe(self) -> str:
        plain = self.accuracy["none"]

        def verdict(kind: str, name: str, kept: bool) -> str:
            # "kept" is "not measurably worse": within the tolerance, the test cannot say more
            if kind not in self.trained_with:
                return f"{name}: no detectable change ({self.accuracy[kind]:.3f})" if kept else \
                       f"{name} changes the class ({self.accuracy[kind]:.3f}, beyond the tolerance)"
            trained = (f"{name}: {self.accuracy[kind]:.3f}; trained on such views too (labels unchanged) the svm scores "
                       f"{self.trained_with[kind]:.3f} as they are")
            return f"{trained}: the class is kept (the features alone differ)" if kept else \
                   f"{trained}: it changes the class (beyond the tolerance)"

        turn = f", {verdict('rotate90', 'a turn by 90 degrees', self.rotation)}" if "rotate90" in self.accuracy else ""
        return (f"symmetry test on the held-out images: {plain:.3f} as they are; {verdict('horizontal', 'horizontal flip', self.horizontal)}, "
                f"{verdict('vertical', 'vertical flip', self.vertical)}{turn} (tolerance {self.tolerance:.3f})")

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": dict(self.accuracy), "trained_with": dict(self.trained_with), "tolerance": self.tolerance,
                "horizontal": self.horizontal, "vertical": self.vertical, "rotation": self.rotation}


@dataclass
class AutoSearch:
    """Outcome of :func:`search_auto`: every trial, the decision, the symmetry test, the reasons.

    ``results`` is the engine's table: ``results.oof_proba(candidate)`` gives the out-of-fold class
    probabilities of every image a candidate was scored on (the held-out fifth; every image, once
    per repeat, for the cheap candidates of a small set)."""

    trials: list[Trial]
    chosen: Trial
    symmetry: Symmetry | None
    reasons: list[str]
    augment: str
    seconds: float
    decision: Decision | None = None
    results: Results | None = None


def cheap_repeats(n_images: int, n_holdout: int) -> int:
    """Repeats of the k-fold split the cheap candidates run: 0 (the held-out fold alone) when
    the held-out fold has more than :data:`SMALL_HOLDOUT` images, else enough for about
    :data:`REPEAT_OBSERVATIONS` held-out outcomes (at most :data:`MAX_REPEATS`)."""
    if n_holdout > SMALL_HOLDOUT:
        return 0
    return min(MAX_REPEATS, max(1, math.ceil(REPEAT_OBSERVATIONS / max(n_images, 1))))


def is_cheap(candidate: Candidate) -> bool:
    """Scored in seconds once features are cached: a classifier on frozen features, or the pixels'."""
    return not get_strategy(candidate.strategy).trains_network


def search_auto(
    arena: Arena,
    facts,
    recommendation,
    *,
    backbone_size: int,
    fixed: Mapping[str, Any],
    speeds: Speeds | None,
    budget_seconds: float | None,
    groups: np.ndarray | None = None,
    on_event: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    started: float | None = None,
) -> AutoSearch:
    """Run ``auto``'s rounds (see the module docstring) and pick the winner.

    ``fixed`` holds what the user set and every candidate keeps: ``image_size``,
    ``class_weight`` ("balanced"/None), ``symmetries``, ``feature_layers``, ``augment``. ``speeds`` (None: no
    estimates, everything runs) prices each candidate against ``budget_seconds``.
    """
    begun = clock()
    seed = int(arena.params.get("seed", 0))
    first = holdout_folds(arena.targets, groups, seed)
    repeats = cheap_repeats(len(arena.targets), len(first[0][1]))
    folds = holdout_folds(arena.targets, groups, seed, repeats) if repeats else first[:1]
    fold = folds[0]  # the held-out fifth every candidate is scored on
    reserve = 0.0 if budget_seconds is None else FINAL_FIT_SHARE * budget_seconds
    warmed: set[tuple[int, str, str]] = set()  # (size, feature layers, view) computed by a shared pass
    cost = None if speeds is None else CostModel(speeds, len(arena.targets), warmed)
    search = Engine(arena, folds, repeats=max(repeats, 1), budget_seconds=budget_seconds, cost=cost, reserve_seconds=reserve,
                    on_event=on_event, clock=clock, started=begun if started is None else started)
    size = int(fixed.get("image_size") or backbone_size)
    weights = fixed.get("class_weight", None)
    reasons: list[str] = []
    if on_event is not None:
        on_event(_plan(search, cost, size, len(fold[0]), len(fold[1])))

    # 1. frozen features: the baseline, the same features under logistic regression, multi-layer features
    baseline = _frozen_features_round(search, size, weights, fixed.get("feature_layers"), warmed)

    # 2. do flips keep the class?
    symmetry = None
    if search.trials[baseline].accuracy is not None:
        symmetry = measure_symmetry(arena, fold, size, weights)
        reasons.append(symmetry.describe())
        (on_event or (lambda line: None))(f"{search.stamp()} symmetries that keep the class: {', '.join(symmetry.kept) or 'none'}")

    # 3. cheap variants the facts call for
    variants = _better_layers_first(search, _variants(facts, recommendation, size, fixed, symmetry, search.left(), speeds,
                                                      len(arena.targets)))
    views = [view for c in variants if c.feature_layers == "stages" for view in SYMMETRIES[c.symmetries]]
    if len(set(views)) > 1:
        _shared_feature_pass(search, size, tuple(dict.fromkeys(views)), warmed)
    _evaluate_cheap(search, variants)

    # 3b. a small held-out fold: the cheap candidates on every other fold too (seconds each; before the
    # network, which is sized to what is left)
    if len(folds) > 1:
        reasons.append(_cheap_on_every_fold(search, repeats))

    # 4. a trained network with what is left, after the time the leader's final fit will take
    _reserve_final_fit(search)  # the leader may have changed on the other folds
    augment = _network_augment(fixed, symmetry)
    _network_round(search, recommendation, facts, fixed, speeds, backbone_size, augment, reasons)

    # 5. the network and the frozen features together: the mean of their held-out probabilities, with
    # a second network like the first where it left the time for one
    _ensemble_round(search, reasons, _second_network_round(search, reasons))

    trials = list(search.trials.values())
    decision = choose(search.results)
    reasons += trial_reasons(trials, decision, len(fold[1]))
    return AutoSearch(trials=trials, chosen=decision.chosen, symmetry=symmetry, reasons=reasons, augment=augment,
                      seconds=clock() - begun, decision=decision, results=search.results)


def _network_round(search: Engine, recommendation, facts, fixed, speeds: Speeds | None, backbone_size: int, augment: str,
                   reasons: list[str]) -> None:
    """Round 5: the learning-rate pilot, then a trained network sized to what is left, on the held-out fold."""
    arena, fold = search.arena, search.folds[0]
    network = None
    leader = search.leader()
    perfect = leader is not None and leader.accuracy >= PERFECT
    if not arena.runtime.distributed and not perfect:
        network = _network_candidate(recommendation, facts, fixed, search, speeds, len(fold[0]), len(fold[1]), backbone_size, augment)
    if perfect:
        reasons.append(f"no trained network was measured: {leader.candidate.label} already classifies every held-out image "
                       "correctly, so a network could only tie")
    elif arena.runtime.distributed:
        # under torchrun the search runs on rank 0 alone, and a network there would wait for the other ranks
        reasons.append("no trained network was measured: under torchrun the search runs on rank 0 alone; "
                       "fit --strategy finetune or full trains a network on every rank")
    elif network is not None:
        # the ensemble round's time (the features at the network's side, its test-time views): the
        # network is sized without it, so that the round is not skipped
        kept_back = _ensemble_seconds(search, network)
        kept_back = kept_back if kept_back <= ENSEMBLE_ROOM_SHARE * search.left() else 0.0
        search.reserve += kept_back
        if "backbone_lr_factor" in fixed:  # the candidate carries the rate it trains at (its label, the recommendation)
            network = with_params(network, backbone_lr_factor=fixed["backbone_lr_factor"])
        else:
            pilot = _pilot_learning_rate(network, search, reasons, len(fold[0]), len(fold[1]), "image_size" in fixed)
            if pilot is not None:  # the pilots took time: size the network to what is left
                imbalanced = recommendation.class_weight == "balanced"  # the advisor's imbalance rule fired
                chosen = _regularization_pilot(network, search, reasons, pilot, fixed, facts.imbalance if imbalanced else None)
                min_steps = MIN_STEPS if pilot.factor == PLAYBOOK_LR_FACTOR else MIN_STEPS_FAST
                network = _network_candidate(recommendation, facts, fixed, search, speeds, len(fold[0]), len(fold[1]),
                                             backbone_size, augment, min_steps)
                network = with_params(network, backbone_lr_factor=pilot.factor, **chosen) if network is not None else None
        if network is not None:
            search.evaluate_candidates([network], [0])
        search.reserve -= kept_back
    elif get_strategy(recommendation.strategy).trains_network or not facts.n_samples < 1000:
        reasons.append("no trained network was measured: the budget left too little time for "
                       f"{MIN_NETWORK_EPOCHS} epochs at {NETWORK_SIDES[-1]} px on this machine (--budget-minutes M for more)")


def _ensemble_seconds(search: Engine, network: Candidate, networks: int = 1) -> float:
    """Seconds the ensemble round will take after ``network``: scoring its feature member
    (:func:`~transferkit.selection.ensemble.feature_partner`) once more at the network's side
    (its views extracted there where they are not cached, and its classifier fitted, counted
    twice: at a new side no fit there has been timed),
    and the networks' forward passes over the views they train with (:func:`_test_time_views`;
    each network's once, however many ensembles it is in).
    Kept back while a network trains so that the round is not skipped for want of time. 0
    without a budget or a scored feature candidate. The ensemble is what moved ELPV: 0.822
    held-out against its members' 0.784 and 0.792."""
    best = feature_partner(search, network)
    if search.budget_seconds is None or search.cost is None or best is None:
        return 0.0
    member = feature_member(best.candidate, network.image_size)
    train, test = search.folds[0]
    fit = (best.seconds - best.extract_seconds) / len(best.folds)
    passes = (_test_time_seconds(search, network) or 0.0) * networks
    return float(search.cost(member, len(train), len(test), search.trials)) + fit + passes


def _test_time_seconds(search: Engine, network: Candidate) -> float | None:
    """Seconds of ``network``'s forward passes over the views it trains with
    (:func:`~transferkit.selection.ensemble.trained_views`; the identity view is scored already)
    on the held-out images; None where the search has no timed speeds."""
    speeds = getattr(search.cost, "speeds", None)
    if speeds is None:
        return None
    return (len(SYMMETRIES[trained_views(network)]) - 1) * len(search.folds[0][1]) * speeds.forward(network.image_size)


def _beyond_noise(search: Engine, trials: tuple[Trial, ...]) -> tuple[float, float, list[Trial]]:
    """The best held-out score of the search, its noise (:func:`noise_tolerance`) and those of
    ``trials`` that scored more than that noise behind it."""
    best = max(held_out_score(t) for t in search.trials.values() if held_out_score(t) is not None)
    tolerance = noise_tolerance(best, len(search.folds[0][1]))
    return best, tolerance, [trial for trial in trials if held_out_score(trial) < best - tolerance]


def _second_network_round(search: Engine, reasons: list[str]) -> tuple[Trial, Trial] | None:
    """Round 5b: a second network like the first, trained from another seed (its data order,
    augmentation and dropout) in the time the first left unused, for the ensemble round to average
    with it; returns the two networks' trials, or None where none was trained.

    Only under a budget, when the ensemble round will run (the network and the best frozen
    features both within the noise of the best), and when as many epochs as the first needed to
    reach its best (its kept epoch; at least :data:`MIN_NETWORK_EPOCHS`) fit what is left after
    that round's own time: it gets the first's epochs, or as many as fit. On ELPV the first
    network stopped early after 33 of 60 minutes, with 24 unused, and the ensemble of one network
    and the features had scored 0.827 held-out against its members' 0.794 and 0.792; a twin of 8
    epochs beside a first that peaked at epoch 13 scored 0.772 against 0.799, and averaged with
    it the ensemble lost (0.810 against 0.825)."""
    members = ensemble_members(search)
    if members is None or search.budget_seconds is None or search.cost is None or _beyond_noise(search, members)[2]:
        return None
    first, _ = members
    seed = int(search.arena.params.get("seed", 0)) + 1
    kept_back = _ensemble_seconds(search, first.candidate, networks=2)
    available = search.left() - kept_back
    train, test = search.folds[0]
    planned = int(dict(first.candidate.params).get("epochs", MIN_NETWORK_EPOCHS))
    needed = max(MIN_NETWORK_EPOCHS, int((first.outcome.history or {}).get("best_epoch") or 0))
    cost = 0.0
    for epochs in range(max(planned, needed), needed - 1, -1):
        twin = with_params(replace(first.candidate, proposed_by=f"a second network like {first.candidate.label} from seed "
                                   f"{seed}, in the time the first left: the ensemble averages both"),
                           seed=seed, epochs=epochs, patience=_network_patience(epochs))
        cost = search.cost(twin, len(train), len(test), search.trials)
        if cost <= available:
            break
    else:
        reasons.append(f"no second network: the {needed} epochs the first needed to reach its best (~{cost:.0f} s) do not "
                       f"fit the {max(available, 0):.0f} s left after the ensemble round's ~{kept_back:.0f} s")
        return None
    search.reserve += kept_back
    (trial,) = search.evaluate_candidates([twin], [0])
    search.reserve -= kept_back
    if trial.accuracy is None or trial.outcome is None:
        return None
    reasons.append(f"second network, in the ~{available:.0f} s left after the ensemble round's time: {trial.candidate.label} "
                   f"scored {trial.accuracy:.3f} held-out ({first.candidate.label}: {held_out_score(first):.3f})")
    return first, trial


def _ensemble_round(search: Engine, reasons: list[str], twins: tuple[Trial, Trial] | None = None) -> None:
    """Round 6: the ensemble of the trained network and the best frozen-feature candidate, measured
    by averaging their held-out probabilities (no training), when both are within the noise of the
    best held-out score. Both measured is not enough: an ensemble gains where its members err on
    different images, and a member beyond the noise adds more mistakes than it corrects, while
    every extra candidate scored on the same held-out images raises the chance that one wins by luck.
    ``twins``: two networks trained alike (:func:`_second_network_round`); the ensemble is then
    measured again with their mean as its network member."""
    members = ensemble_members(search)
    if members is None:
        return
    network, features = members
    best, tolerance, behind = _beyond_noise(search, members)
    if behind:
        reasons.append(f"no ensemble of {network.candidate.label} and {features.candidate.label}: "
                       + "; ".join(f"{t.candidate.label} scored {held_out_score(t):.3f} held-out" for t in behind)
                       + f", more than the noise ({tolerance:.3f}) behind the best ({best:.3f}), so averaging with it "
                       "would mostly add its mistakes")
        return
    member = feature_member_at(search, features, network.candidate.image_size)
    if held_out_score(member) is None:
        reasons.append(f"no ensemble of {network.candidate.label} and {features.candidate.label}: scoring the features at the "
                       f"network's {network.candidate.image_size} px did not fit the budget")
        return
    ensemble = measure_ensemble(search, network, member)
    rescored = f"; with its fitted head's temperature, at the network's side, {member.candidate.label} scored {held_out_score(member):.3f}"
    computed: dict[Candidate, np.ndarray] = {}  # each network's test-time views, once for both ensembles
    tail, both = _test_time_views(search, (network,), member, computed), ""
    if twins is not None:
        pair = measure_ensemble(search, twins, member)
        both = (f"; with both networks' mean (this one and its twin from another seed) as its network member, "
                f"{held_out_score(pair):.3f}{_test_time_views(search, twins, member, computed)}")
    reasons.append(f"ensemble: {network.candidate.label} scored {held_out_score(network):.3f} and {features.candidate.label} "
                   f"{held_out_score(features):.3f} on the held-out images, both within the noise ({tolerance:.3f}) of the best "
                   f"({best:.3f}){rescored}; the mean of their probabilities, image by image, scored "
                   f"{held_out_score(ensemble):.3f} on the same images (no training){tail}{both}")


def _test_time_views(search: Engine, networks: tuple[Trial, ...], member: Trial, computed: dict[Candidate, np.ndarray]) -> str:
    """The ensemble once more with the networks' probabilities averaged over the views they trained
    with (:func:`~transferkit.selection.ensemble.trained_views`), where they trained with flips and
    the forward passes of those networks whose views are not ``computed`` yet (by candidate;
    filled here) fit what is left of the budget; the reason's tail."""
    views = trained_views(networks[0].candidate)
    if views == "none":
        return ""
    seconds = _test_time_seconds(search, networks[0].candidate)
    seconds = None if seconds is None else seconds * sum(trial.candidate not in computed for trial in networks)
    if seconds is not None and seconds > search.left():
        return (f"; the network's probabilities averaged over the {views} it trained with were not measured: "
                f"~{seconds:.0f} s of forward passes, {max(search.left(), 0):.0f} s left")
    tta = measure_ensemble(search, networks, member, views, computed)
    return (f"; with the network's probabilities averaged over the {views} it trained with (test-time augmentation), "
            f"{held_out_score(tta):.3f}")


def _evaluate_cheap(search: Engine, candidates: list[Candidate]) -> None:
    """Score cheap ``candidates`` on the held-out fold; under a budget one by one, keeping back the
    leader's final fit (:func:`_reserve_final_fit`) after each, so the next is costed against what
    is left after it. On the animals set (10 minutes) the multi-layer + flips svm, 137 s to
    measure, took the lead while 5 % (30 s) was kept back; five more variants ran in the time its
    refit needed, and the fit ended 66 s over its budget (569 s of 600 with this rule)."""
    if search.budget_seconds is None:  # no deadline: the engine may score them side by side
        search.evaluate_candidates(candidates, [0])
        return
    for candidate in candidates:
        search.evaluate_candidates([candidate], [0])
        _reserve_final_fit(search)


def _reserve_final_fit(search: Engine) -> None:
    """Keep back what fitting the leading frozen-feature candidate again on every image will take
    (its classifier's fit on one fold, measured, plus its temperature and the novelty threshold:
    :data:`FINAL_FIT_FACTOR` times it), where that exceeds the budget's share
    (:data:`~transferkit.selection.cost.FINAL_FIT_SHARE`): the network's deadline moves earlier, so
    the fit ends within its budget. On ELPV the leader's refit (multi-layer features + flips) took
    75 s against the 30 s that 5 % of 10 minutes kept, and a network that ran to its deadline
    ended the fit 27 s over."""
    leader = search.leader()
    if search.budget_seconds is None or leader is None or not is_cheap(leader.candidate) or not leader.folds:
        return
    refit = (leader.seconds - leader.extract_seconds) / len(leader.folds)
    search.reserve = max(search.reserve, FINAL_FIT_FACTOR * refit)


def _cheap_on_every_fold(search: Engine, repeats: int) -> str:
    """Score every cheap candidate measured so far on the folds after the held-out one; the reason line."""
    folds, n_images = search.folds, len(search.arena.targets)
    held_out, k = len(folds[0][1]), len(folds) // repeats
    cheap = [t.candidate for t in search.trials.values() if is_cheap(t.candidate) and t.scores]
    search.on_event(f"{search.stamp()} {held_out} held-out images are few: scoring the {len(cheap)} cheap candidates on "
                    f"{repeats} x {k}-fold cross-validation of all {n_images:,} images")
    trials = search.evaluate_candidates(cheap, list(range(1, len(folds))))
    complete = [t for t in trials if len(t.folds) == len(folds)]
    short = [t.candidate.label for t in trials if len(t.folds) < len(folds)]
    cut = f" ({', '.join(short)}: the budget allowed {'it' if len(short) == 1 else 'them'} fewer folds)" if short else ""
    return (f"{held_out} held-out images are few (one image is {1 / held_out:.3f} of accuracy): {len(complete)} of the "
            f"{len(cheap)} cheap candidates were also scored by {repeats} x {k}-fold cross-validation on all {n_images:,} "
            f"images, each image held out {repeats} time{'s' if repeats > 1 else ''}{cut}; they are compared image by image")


def auto_strategies(facts, recommendation) -> list[str]:
    """The strategies :func:`search_auto` races on data with these ``facts``: svm and logistic on
    frozen features, pixels on small sets (up to :data:`MAX_PIXEL_IMAGES`), and the trained
    network (finetune at the advised depth, full where it freezes nothing). ``advise --measure``
    races these, so the measurement can find what ``fit`` would choose."""
    names = ["svm", "logistic"]
    if facts.n_samples <= MAX_PIXEL_IMAGES:
        names.append("pixels")
    names.append("finetune" if recommendation.strategy == "finetune" and recommendation.freeze else "full")
    return names


def _frozen_features_round(search: Engine, size: int, weights: str | None, layers: str | None, warmed: set) -> Candidate:
    """Round 1: svm (the baseline, returned) and logistic on the bottleneck features, and svm on
    multi-layer features unless the user fixed ``layers`` (then every candidate reads those)."""
    first = frozen_feature_candidates(size, weights, layers)
    if layers is None:
        _shared_feature_pass(search, size, SYMMETRIES["none"], warmed)
    _evaluate_cheap(search, first)
    return first[0]


def frozen_feature_candidates(size: int, weights: str | None = None, layers: str | None = None) -> list[Candidate]:
    """Round 1's candidates, the baseline first: svm and logistic on the bottleneck features at
    ``size`` px, and svm on multi-layer features unless ``layers`` is fixed (then all read those).
    ``transferkit audit`` chooses its learning curve's candidate among these."""
    first = [Candidate("svm", size, "always: the playbook's bottleneck features + linear SVM", weights,
                       feature_layers=layers or "bottleneck"),
             Candidate("logistic", size, "the same cached features, logistic regression", weights,
                       feature_layers=layers or "bottleneck")]
    if layers is None:
        first.append(Candidate("svm", size, STAGES_WHY, weights, feature_layers="stages"))
    return first


def _plan(search: Engine, cost, size: int, n_train: int, n_test: int) -> str:
    """The plan and its estimate, printed before the long work."""
    features = "" if cost is None else f" (~{cost(Candidate('svm', size, ''), n_train, n_test, {}):.0f} s)"
    if search.budget_seconds is None:
        return (f"{search.stamp()} plan: frozen features at {size} px{features}, the symmetry test, cheap variants, then a "
                "trained network; no time bound")
    return (f"{search.stamp()} plan: frozen features at {size} px{features}, the symmetry test, cheap variants, then a "
            f"trained network sized to the rest of the {search.budget_seconds / 60:.0f}-minute budget "
            "(--budget-minutes M for more, --budget-minutes none for no bound)")


def measure_symmetry(arena: Arena, fold, size: int, class_weight: str | None) -> Symmetry:
    """Score the held-out images as they are, flipped and turned, with an SVM on the training
    part's cached features; a view it scores worse beyond the fold's noise is tested once more.

    A worse score has two causes: the view changes the class (a flipped "left of" is a "right
    of"), or the features of such views merely differ (a turned solar cell's busbars run the
    other way; its defect is the same). The second test tells them apart: the SVM is fitted again
    on the training images and their views, labels unchanged, and scores the held-out images as
    they are. A view that changes the class teaches contradicting labels and costs accuracy
    there beyond the noise; one that keeps it costs nothing. Only views that failed the first
    test pay for their training images' features (cached for the candidates that average them).
    """
    extractor = FeatureExtractor.from_params(arena.params, arena.runtime)
    pixels = arena.pixels_at(size)
    train, test = np.sort(fold[0]), np.sort(fold[1])
    features = symmetric_features(extractor, pixels)[train]  # cached by round 1; no copy of the training pixels
    groups, targets = pixel_groups(pixels, train), arena.targets[train]
    pipeline, summary = fit_linear_classifier(features, targets, groups, strategy="svm", C=None,
                                              seed=int(arena.params.get("seed", 0)), class_weight=class_weight)
    # the held-out rows are read chunk by chunk and flipped there: no copy of them in memory
    views = {"none": "identity", "horizontal": "horizontal", "vertical": "vertical", "rotate90": "rotate90"}
    as_they_are = extractor.transform(pixels, rows=test)
    accuracy = {name: float(pipeline.score(as_they_are if view == "identity" else extractor.transform(pixels, view=view, rows=test),
                                           arena.targets[test])) for name, view in views.items()}
    plain = accuracy["none"]
    tolerance = noise_tolerance(plain, len(test))
    trained_with: dict[str, float] = {}
    for name in [name for name in views if name != "none" and accuracy[name] < plain - tolerance]:
        both = np.concatenate([features, extractor.transform(pixels, view=views[name], rows=train)])
        refit, _ = fit_linear_classifier(both, np.concatenate([targets, targets]), np.concatenate([groups, groups]),
                                         strategy="svm", C=summary["C"], seed=int(arena.params.get("seed", 0)),
                                         class_weight=class_weight)
        trained_with[name] = float(refit.score(as_they_are, arena.targets[test]))
    kept = {name: max(accuracy[name], trained_with.get(name, 0.0)) >= plain - tolerance for name in views}
    return Symmetry(accuracy=accuracy, tolerance=tolerance, horizontal=kept["horizontal"], vertical=kept["vertical"],
                    rotation=kept["rotate90"], trained_with=trained_with)


def _variants(facts, recommendation, size: int, fixed, symmetry: Symmetry | None,
              seconds_left: float | None, speeds: Speeds | None, n_images: int) -> list[Candidate]:
    weights = fixed.get("class_weight", None)
    candidates = []
    if recommendation.class_weight and "class_weight" not in fixed:
        candidates.append(Candidate("svm", size, "the imbalance rule: balanced class weights", recommendation.class_weight))
    if facts.n_samples <= MAX_PIXEL_IMAGES:
        side = int(fixed.get("image_size") or max(16, min(DEFAULT_SIDE, int(facts.median_side or DEFAULT_SIDE))))
        candidates.append(Candidate("pixels", side, "train from scratch, sized to the data: an RBF SVM on the pixels", weights))
    layers = fixed.get("feature_layers")
    for group in _averaged_symmetries(fixed.get("symmetries"), symmetry, seconds_left, speeds, size, n_images):
        why = f"test-time augmentation: {SYMMETRY_WORDS[group]} keep the class"
        for strategy in ("svm", "logistic"):
            candidates.append(Candidate(strategy, size, why, weights, group, feature_layers=layers or "bottleneck"))
        if layers is None:
            candidates.append(Candidate("svm", size, f"{STAGES_WHY}; {SYMMETRY_WORDS[group]} keep the class", weights, group,
                                        feature_layers="stages"))
    if "image_size" not in fixed and facts.median_side >= LARGE_IMAGE_SIDE and size > SMALL_SIDE:
        candidates.append(Candidate("svm", SMALL_SIDE, f"large images (median side {facts.median_side:g} px): a smaller input", weights))
    return candidates


def _averaged_symmetries(wanted: str | None, symmetry: Symmetry | None, seconds_left: float | None, speeds: Speeds | None,
                         size: int, n_images: int) -> list[str]:
    """The groups of views (:data:`SYMMETRIES`) whose averaged features become candidates: the
    one the user fixed, else each group whose every view keeps the class and whose extra forward
    passes fit :data:`TTA_SHARE` of what is left of the budget (``flips``: 3 more per image,
    ``dihedral``: 7; ``seconds_left`` None or infinite: no bound)."""
    if wanted is not None:
        return [] if wanted == "none" else [wanted]
    if symmetry is None:
        return []
    groups = []
    for group, kept in (("flips", symmetry.flips), ("dihedral", symmetry.dihedral)):
        cost = (len(SYMMETRIES[group]) - 1) * n_images * speeds.forward(size) if speeds is not None else 0.0
        if kept and (seconds_left is None or cost <= TTA_SHARE * seconds_left):
            groups.append(group)
    return groups


def _better_layers_first(search: Engine, variants: list[Candidate]) -> list[Candidate]:
    """``variants`` with the averaged-view candidates of the feature layers that scored best in
    round 1 first, then the others in their order (a stable sort): where the budget ends before
    the last of them, the likeliest winner has been measured (ELPV, 6 minutes: the multi-layer
    svm + flips, the 10-minute winner, was skipped after a 128 px svm and the flips of the
    bottleneck had taken its time)."""
    first_round = {t.candidate.feature_layers: t.accuracy for t in search.trials.values() if t.accuracy is not None
                   and t.candidate.strategy == "svm" and t.candidate.symmetries == "none" and t.candidate.class_weight is None}
    best = max(first_round, key=first_round.get) if first_round else None
    return sorted(variants, key=lambda c: not (c.symmetries != "none" and c.feature_layers == best))


def _network_augment(fixed, symmetry: Symmetry | None) -> str:
    """The user's augmentation, else translation and small rotations plus the flips and the turns
    by 90 degrees under which the held-out images score as they are (:meth:`Symmetry.unchanged`).

    Not the views only the second test kept (the class survives them, but the images never show
    them): on the digits set a network trained with horizontal flips and quarter turns scored
    0.969 test accuracy, and 0.998 without them (full 64 px, 25 epochs, the same settings). A
    feature candidate that averages such views is measured before it can win; the network's
    augmentation is not."""
    if fixed.get("augment") is not None:
        return fixed["augment"]
    kept = [] if symmetry is None else [op for op, kind in (("hflip", "horizontal"), ("vflip", "vertical"),
                                                            ("rot90", "rotate90")) if symmetry.unchanged(kind)]
    return ",".join([*kept, "rotate", "translate"])


def _network_candidate(recommendation, facts, fixed, search: Engine, speeds: Speeds | None,
                       n_train: int, n_test: int, backbone_size: int, augment: str,
                       min_steps: int = MIN_STEPS) -> Candidate | None:
    """``finetune`` at the advised depth (``full`` where it freezes nothing), at the largest side
    whose epochs (at least ``min_steps`` optimiser steps) fit what is left of the budget, for as
    many epochs as fit there (at most :data:`MAX_NETWORK_EPOCHS`); None when not even the smallest
    side affords :data:`MIN_NETWORK_EPOCHS`."""
    freeze = recommendation.freeze if recommendation.strategy == "finetune" and recommendation.freeze else 0
    strategy = "finetune" if freeze else "full"
    batch = int(search.arena.params.get("batch_size", 32))
    steps_per_epoch = max(1, n_train // batch)
    wanted_epochs = min(MAX_NETWORK_EPOCHS, max(MIN_NETWORK_EPOCHS, math.ceil(min_steps / steps_per_epoch)))
    if fixed.get("image_size"):
        sides = [int(fixed["image_size"])]
    else:
        largest = min(backbone_size, max(64, 2 * int(facts.median_side or backbone_size)))
        sides = [side for side in NETWORK_SIDES if side <= largest] or [NETWORK_SIDES[-1]]
    affordable = {}
    for side in sides:  # largest first; each side's speed is timed only when it is needed
        affordable[side] = wanted_epochs
        if speeds is not None and search.budget_seconds is not None:
            # more epochs than the floor where the budget has room for them (early stopping ends a plateau)
            per_epoch = n_train * speeds.train(side) + n_test * speeds.forward(side)
            affordable[side] = min(MAX_NETWORK_EPOCHS, int(search.left() // per_epoch))
        if affordable[side] >= wanted_epochs:
            break
    # the largest side that affords the whole schedule; failing that, the largest that affords the minimum
    side = next((s for s in affordable if affordable[s] >= wanted_epochs), None)
    side = side or next((s for s in affordable if affordable[s] >= MIN_NETWORK_EPOCHS), None)
    if side is None:
        return None
    epochs = affordable[side]
    why = (f"{facts.n_samples:,} images: train the network ({strategy}{f', freeze {freeze}' if freeze else ''}) at the "
           f"largest side whose {epochs} epochs of ~{steps_per_epoch} steps the budget affords, augmentation {augment}")
    params = (("augment", augment), ("epochs", epochs), ("patience", _network_patience(epochs)))
    return Candidate(strategy, side, why, fixed.get("class_weight", None), freeze=freeze or None, params=params)


def _network_patience(epochs: int) -> int:
    """Epochs without a lower validation loss before ``auto``'s network of ``epochs`` stops early:
    a third of them, at least 3 (the second network's too, for its own epochs)."""
    return max(3, epochs // 3)


@dataclass(frozen=True)
class Pilot:
    """What the learning-rate pilot measured: the factor it chose, the side it trained at, and its
    trials by factor (each :data:`PILOT_EPOCHS` epochs, no regularisers beyond today's recipe)."""

    factor: float
    side: int
    trials: Mapping[float, Trial]


def _learning_rate_pilot(network: Candidate, search: Engine, reasons: list[str], n_train: int,
                         n_test: int, size_fixed: bool = False) -> float | None:
    """The factor :func:`_pilot_learning_rate` chooses, or None where it did not run."""
    pilot = _pilot_learning_rate(network, search, reasons, n_train, n_test, size_fixed)
    return None if pilot is None else pilot.factor


def _pilot_learning_rate(network: Candidate, search: Engine, reasons: list[str], n_train: int,
                         n_test: int, size_fixed: bool = False) -> Pilot | None:
    """Measure the playbook's learning-rate rule on this data: ``network``'s strategy trained
    briefly with each of :data:`PILOT_FACTORS` on the held-out fold. The factor the network
    should use is the playbook's unless the other wins by more than the winner rule's tie
    (:func:`pilot_paired`: the two pilots' per-image outcomes on the same held-out images, which
    separate rates that two accuracies with their own noise each cannot); None when the pilot was
    not run (too costly next to the network, or a pilot failed to fit the budget)."""
    side = _pilot_side(network, size_fixed)
    pilots = [with_params(replace(network, image_size=side, proposed_by=why), epochs=PILOT_EPOCHS, patience=PILOT_EPOCHS,
                          backbone_lr_factor=factor)
              for factor, why in zip(PILOT_FACTORS, ("pilot: the playbook's rule, pretrained layers 10x slower than the head",
                                                     "pilot: every layer at the head's learning rate"))]
    if search.cost is not None and search.budget_seconds is not None:
        pilot_cost = sum(search.cost(p, n_train, n_test, {}) for p in pilots)
        if pilot_cost > PILOT_SHARE * search.cost(network, n_train, n_test, {}):
            reasons.append(f"no learning-rate pilot: ~{pilot_cost:.0f} s is more than {PILOT_SHARE:.0%} of the network's own "
                           f"estimate; pretrained layers train at the playbook's lr x{PLAYBOOK_LR_FACTOR:g}")
            return None
    trials = search.evaluate_candidates(pilots, [0])
    if any(t.accuracy is None for t in trials):
        return None
    playbook, other = trials[0].accuracy, trials[1].accuracy
    paired = pilot_paired(search, trials[1], trials[0])
    factor = PILOT_FACTORS[1] if paired.difference > 0 and not paired.tied else PILOT_FACTORS[0]
    reasons.append(f"learning-rate pilot ({PILOT_EPOCHS} epochs at {side} px): pretrained layers at lr x{PILOT_FACTORS[0]:g} "
                   f"scored {playbook:.3f}, at lr x{PILOT_FACTORS[1]:g} {other:.3f} (paired standard error "
                   f"{paired.standard_error:.3f}): the network trains them at lr x{factor:g}"
                   + ("" if factor == PLAYBOOK_LR_FACTOR else ", the playbook's rule does not hold here"))
    return Pilot(factor=factor, side=side, trials=dict(zip(PILOT_FACTORS, trials)))


def _pilot_side(network: Candidate, size_fixed: bool) -> int:
    """At most :data:`PILOT_SIDE`, and below the network's own side where there is one: pilots compare, cheaply."""
    smaller = [s for s in NETWORK_SIDES if s <= min(PILOT_SIDE, network.image_size * PILOT_SCALE)]
    return network.image_size if size_fixed or not smaller else smaller[0]


def _regularization_pilot(network: Candidate, search: Engine, reasons: list[str], pilot: Pilot, fixed: Mapping[str, Any],
                          imbalance: float | None = None) -> dict[str, str]:
    """Choose the network's regularisation (and, on imbalanced data, its sampling) by measurement.

    The learning-rate pilot's run at the chosen factor is today's recipe (``"none"``); the same
    short training with the ``"light"`` and ``"strong"`` presets joins it, and the network takes
    the strongest setting tied with the best by the winner rule (:func:`pilot_paired`; at
    equal accuracy after a few epochs, the regularised run is the one that overfits later:
    ELPV's network overfitted from epoch 15 of 30). Where the advisor found the classes
    imbalanced (``imbalance``: largest / smallest class, None where its rule did not fire), one
    more run draws class-balanced batches, kept when its balanced accuracy wins by more than a
    paired standard error at no loss of accuracy beyond one (:func:`pilot_paired`). Returns the
    parameters for the network (``regularization``, ``sampling``); those the user fixed are not
    measured. Skipped (returns ``{}``) when the runs would cost more than :data:`PILOT_SHARE` of
    the network's estimate.
    """
    fold = search.folds[0]
    n_train, n_test = len(fold[0]), len(fold[1])
    base = pilot.trials[pilot.factor]
    settings = [] if "regularization" in fixed else [name for name in REGULARIZATION_ORDER if name != "none"]
    balance = "sampling" not in fixed and imbalance is not None
    if not settings and not balance:
        return {}
    runs = [with_params(replace(base.candidate, proposed_by=f"pilot: regularisation {name}"), regularization=name)
            for name in settings]
    if search.cost is not None and search.budget_seconds is not None:
        extra = len(runs) + int(balance)
        pilot_cost = extra * search.cost(base.candidate, n_train, n_test, {})
        if pilot_cost > PILOT_SHARE * search.cost(network, n_train, n_test, {}):
            reasons.append(f"no regularisation pilot: ~{pilot_cost:.0f} s is more than {PILOT_SHARE:.0%} of the network's own "
                           "estimate; the network trains with today's recipe (regularization none)")
            return {}
    chosen: dict[str, str] = {}
    held_out = np.sort(fold[1])
    targets = search.arena.targets[held_out]
    if runs:
        trials = [base, *search.evaluate_candidates(runs, [0])]
        names = ["none", *settings]
        scored = [(name, t) for name, t in zip(names, trials) if t.accuracy is not None]
        best = max((t for _, t in scored), key=lambda t: t.accuracy)  # max keeps the first of equals: the weaker
        paired = {n: pilot_paired(search, best, t) for n, t in scored}
        name = [n for n, _ in scored if paired[n].tied][-1]  # the strongest tied with the best
        chosen["regularization"] = name
        reasons.append(f"regularisation pilot ({PILOT_EPOCHS} epochs at {pilot.side} px, lr x{pilot.factor:g}): "
                       + ", ".join(f"{n} {t.accuracy:.3f}" + ("" if t is best else f" (paired error {paired[n].standard_error:.3f})")
                                   for n, t in scored)
                       + f" held-out: the network trains with {REGULARIZATION_WORDS[name]}, the strongest setting tied with "
                       "the best (within one paired standard error)")
        base = trials[names.index(name)]
    if balance:
        (drawn,) = search.evaluate_candidates([with_params(replace(base.candidate, proposed_by="pilot: class-balanced batches"),
                                                           sampling="balanced")], [0])
        if drawn.accuracy is not None:
            plain_b, drawn_b = (balanced_accuracy(targets, t.predictions[0]) for t in (base, drawn))
            gain, cost = pilot_paired(search, drawn, base, balanced=True), pilot_paired(search, base, drawn)
            keep = gain.difference > 0 and not gain.tied and cost.tied
            chosen["sampling"] = "balanced" if keep else "shuffle"
            reasons.append(f"sampling pilot (imbalanced classes, {imbalance:.1f}:1): class-balanced batches scored "
                           f"balanced accuracy {drawn_b:.3f} and accuracy {drawn.accuracy:.3f}, each image once per epoch "
                           f"{plain_b:.3f} and {base.accuracy:.3f} (paired standard errors {gain.standard_error:.3f} and "
                           f"{cost.standard_error:.3f}): the network "
                           + ("draws class-balanced batches" if keep else "sees each image once per epoch (balanced batches "
                              "did not raise balanced accuracy beyond a paired standard error without costing "
                              "accuracy beyond one)"))
    return chosen


def _shared_feature_pass(search: Engine, size: int, views: tuple[str, ...], warmed: set) -> None:
    """Multi-layer features of every image in each of ``views``, in one pass that also gives the
    bottleneck candidates theirs (their last columns): the stages candidates cost no second pass.

    Skipped when the budget cannot pay for it; the candidates are then costed one by one."""
    arena = search.arena
    todo = [view for view in views if (size, "stages", view) not in warmed]
    group = next((name for name, group_views in SYMMETRIES.items() if set(todo) <= set(group_views)), "dihedral")
    probe = Candidate("svm", size, "", symmetries=group, feature_layers="stages")  # prices the views not yet warmed
    if not todo or (search.cost is not None and search.budget_seconds is not None
                    and search.cost(probe, len(arena.targets), 0, {}) > search.left()):
        return
    started = time.perf_counter()
    extractor = FeatureExtractor.from_params(arena.params, arena.runtime, layers="stages")
    pixels = arena.pixels_at(size)
    for view in todo:
        extractor.transform(pixels, view=view)
        warmed.add((size, "stages", view))
    search.on_event(f"{search.stamp()} multi-layer features of {len(pixels):,} images at {size} px ({', '.join(todo)}) in one "
                    f"pass of {time.perf_counter() - started:.0f} s; the bottleneck features are their last "
                    f"{extractor.model.bottleneck_width:,} values")


def pilot_paired(search: Engine, a: Trial, b: Trial, balanced: bool = False) -> Paired:
    """The winner rule's paired comparison (:func:`~transferkit.selection.winner.paired_difference`)
    of two pilots scored on the first fold: accuracy of ``a`` minus ``b`` image by image on the same
    held-out images, with its standard error. ``.tied``: within
    :data:`~transferkit.selection.winner.TIE_STANDARD_ERRORS` of it.

    ``balanced``: each image's outcome weighted by ``n / (K * n_class)``, so that the mean
    difference is the difference in balanced accuracy (the mean of the per-class recalls)."""
    weights = np.ones(len(search.arena.targets))
    if balanced:
        held_out = np.sort(search.folds[0][1])
        present, index, counts = np.unique(search.arena.targets[held_out], return_inverse=True, return_counts=True)
        weights[held_out] = len(held_out) / (len(present) * counts[index])
    return paired_difference(*(weights * search.results.correct(t.candidate) for t in (a, b)))


def noise_tolerance(accuracy: float, n_images: int) -> float:
    """Two standard errors of an accuracy measured on ``n_images`` images, and never under 0.02."""
    return max(0.02, 2 * math.sqrt(max(accuracy * (1 - accuracy), 0.01) / max(n_images, 1)))


def trial_reasons(trials: list[Trial], decision: Decision, n_holdout: int) -> list[str]:
    """One line per candidate (who proposed it, what it measured) and the decision's own reason."""
    lines = []
    for trial in trials:
        if trial.accuracy is None:
            result = trial.skipped or "not measured"
        else:
            where = "held-out accuracy" if len(trial.folds) == 1 else f"accuracy over {len(trial.folds)} folds"
            result = f"{trial.accuracy:.3f} {where} in {trial.seconds:.0f} s" + (f" ({trial.stopped})" if trial.stopped else "")
        lines.append(f"candidate {trial.candidate.label} ({trial.candidate.proposed_by}): {result}")
    chosen = decision.chosen
    if chosen.accuracy is None:
        lines.append(f"no candidate could be measured within the budget: auto fits {chosen.candidate.label} unmeasured")
    else:
        network = get_strategy(chosen.candidate.strategy).trains_network
        keeps = "the network trained in the search is the model" if network else "auto fits it on all the images"
        if is_ensemble(chosen.candidate):
            trained = "networks" if dict(chosen.candidate.params).get("networks", 1) > 1 else "network"
            keeps = f"the {trained} trained in the search, beside its feature classifier fitted on all the images, is the model"
        lines.append(f"the choice, on the same {n_holdout:,} held-out images (and, for the cheap candidates, every fold "
                     f"they shared): {decision.reason}; {keeps}")
    return lines
