"""auto decided by one candidate search: what the rules propose, the symmetry test, the budget
with a fake clock, a trained network among the candidates, and pixels."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.svm import SVC

import transferkit
from conftest import TINY_BACKBONE, make_images
from transferkit.advise import DataFacts
from transferkit.advise.rules import Recommendation
from transferkit.selection.auto import (
    MAX_NETWORK_EPOCHS,
    MIN_NETWORK_EPOCHS,
    PILOT_FACTORS,
    PILOT_SHARE,
    Symmetry,
    cheap_repeats,
    _learning_rate_pilot,
    _network_augment,
    _network_candidate,
    _variants,
    measure_symmetry,
    search_auto,
    trial_reasons,
)
from transferkit.backbones import get_backbone_spec
from transferkit.selection import Arena, Candidate, Engine, Results, Trial, choose
from transferkit.data.views import SYMMETRIES
from transferkit.selection.cost import CostModel, Speeds
from transferkit.strategies.pixels import _inputs, fit_pixel_classifier, pixel_kernel_from
from transferkit.training.callbacks import Deadline
from transferkit.training.inputs import pixels_to_tensor
from transferkit.training.runtime import resolve_runtime

CPU = resolve_runtime("cpu", "fp32")


def recommendation(class_weight=None, strategy="finetune", freeze=3) -> Recommendation:
    return Recommendation(strategy=strategy, backbone="b", freeze=freeze, lr=1e-3, backbone_lr_factor=0.1, augment="standard",
                          image_size=224, class_weight=class_weight)


def facts(n: int, side: int) -> DataFacts:
    return DataFacts(n_samples=n, n_classes=2, height=(side, float(side), side), width=(side, float(side), side))


def ramps(n_per_class: int = 10, side: int = 32, seed: int = 0, vertical: bool = False) -> tuple[np.ndarray, list[str]]:
    """Two classes a horizontal flip swaps (brightness rising to the right / to the left) and a
    vertical flip keeps; with ``vertical``, two more that a quarter turn makes of the first two
    (rising upwards / downwards), so that a turn changes the class too."""
    rng = np.random.default_rng(seed)
    ramp = np.broadcast_to(np.linspace(20, 235, side)[None, :, None], (side, side, 3))
    profiles = {"rising": ramp, "falling": ramp[:, ::-1]}
    if vertical:
        profiles |= {"upwards": ramp.transpose(1, 0, 2)[::-1], "downwards": ramp.transpose(1, 0, 2)}
    images, labels = [], []
    for label, profile in profiles.items():
        for _ in range(n_per_class):
            image = profile + rng.normal(0, 8, (side, side, 3))
            images.append(np.clip(image, 0, 255).astype(np.uint8))
            labels.append(label)
    return np.stack(images), labels


def arena_of(images, labels, tiny_params, tmp_path, **params) -> Arena:
    classes = np.array(sorted(set(labels)))
    estimator = transferkit.ImageClassifier(**dict(tiny_params, cache_dir=str(tmp_path), **params))
    return Arena(pixels_at=lambda size: images, targets=np.searchsorted(classes, labels), classes=classes,
                 params=estimator.get_params(), runtime=CPU)


class FakeSpeeds(Speeds):
    """Seconds per image fixed by the test instead of timed."""

    def __init__(self, forward: float, train: float):
        super().__init__("x", None, CPU)
        self.forward_seconds, self.train_seconds = forward, train

    def forward(self, size: int) -> float:
        return self.forward_seconds * (size / 32) ** 2

    def train(self, size: int) -> float:
        return self.train_seconds * (size / 32) ** 2


def test_cheap_variants_follow_the_facts_and_the_symmetry_test():
    kept = Symmetry({"none": 0.9, "horizontal": 0.9, "vertical": 0.9}, 0.02, True, True)
    small = _variants(facts(300, 25), recommendation(), 224, {}, kept, None, None, 300)
    assert [c.label for c in small] == ["pixels 25 px", "svm 224 px, flips", "logistic 224 px, flips",
                                        "svm 224 px, stages features, flips"]
    changed = Symmetry({"none": 0.9, "horizontal": 0.5, "vertical": 0.9}, 0.02, False, True)
    large = _variants(facts(20_000, 300), recommendation("balanced"), 224, {}, changed, None, None, 20_000)
    assert [c.label for c in large] == ["svm 224 px, balanced", "svm 128 px"]  # no flips, no pixels
    # the user's image size: every candidate at that size, no smaller-input variant
    fixed = _variants(facts(300, 300), recommendation(), 32, {"image_size": 32}, kept, None, None, 300)
    assert {c.image_size for c in fixed} == {32}
    # a turn by 90 degrees keeps the class too: the 8 views of the square are candidates as well
    square = Symmetry({"none": 0.9, "horizontal": 0.9, "vertical": 0.9, "rotate90": 0.9}, 0.02, True, True, rotation=True)
    labels = [c.label for c in _variants(facts(300, 25), recommendation(), 224, {}, square, None, None, 300)]
    assert labels[1:] == ["svm 224 px, flips", "logistic 224 px, flips", "svm 224 px, stages features, flips",
                          "svm 224 px, dihedral", "logistic 224 px, dihedral", "svm 224 px, stages features, dihedral"]
    # what the user fixed is the only group; "none" is none
    assert {c.symmetries for c in _variants(facts(300, 25), recommendation(), 224, {"symmetries": "dihedral"}, None, None, None, 300)
            if c.strategy != "pixels"} == {"dihedral"}
    assert {c.symmetries for c in _variants(facts(300, 25), recommendation(), 224, {"symmetries": "none"}, square, None, None, 300)} == {"none"}


def test_flip_averaging_is_dropped_when_it_would_eat_the_networks_budget():
    kept = Symmetry({"none": 0.9, "horizontal": 0.9, "vertical": 0.9}, 0.02, True, True)
    slow = FakeSpeeds(forward=0.1, train=0.3)  # 3 x 2,000 images x 0.1 s x 49 = far over 30 % of the 600 s left
    labels = [c.label for c in _variants(facts(2000, 224), recommendation(), 224, {}, kept, 600.0, slow, 2000)]
    assert not any("flips" in label for label in labels)
    # 0.02 s per image at 224 px: 3 more passes (118 s) fit 30 % of the 600 s left, 7 (274 s) do not: flips yes, dihedral no
    square = Symmetry({"none": 0.9, "horizontal": 0.9, "vertical": 0.9, "rotate90": 0.9}, 0.02, True, True, rotation=True)
    labels = [c.label for c in _variants(facts(2000, 224), recommendation(), 224, {}, square, 600.0, FakeSpeeds(0.0004, 0.3), 2000)]
    assert "svm 224 px, flips" in labels and not any("dihedral" in label for label in labels)


def test_the_network_augmentation_keeps_only_the_views_the_images_look_alike_under():
    flipped = {"none": 0.80, "horizontal": 0.79, "vertical": 0.50, "rotate90": 0.30}
    assert _network_augment({}, Symmetry(flipped, 0.02, horizontal=True, vertical=False)) == "hflip,rotate,translate"
    square = {"none": 0.80, "horizontal": 0.80, "vertical": 0.79, "rotate90": 0.81}
    assert _network_augment({}, Symmetry(square, 0.02, True, True, rotation=True)) == "hflip,vflip,rot90,rotate,translate"
    assert _network_augment({"augment": "strong"}, Symmetry(square, 0.02, False, False)) == "strong"  # the user's wins
    # the digits: a flip and a quarter turn the svm learns beside the upright images (the second test keeps them),
    # but no held-out digit looks like that: the network trains without them
    digits = Symmetry({"none": 0.922, "horizontal": 0.881, "vertical": 0.541, "rotate90": 0.40}, 0.02, horizontal=True,
                      vertical=False, rotation=True, trained_with={"horizontal": 0.919, "vertical": 0.870, "rotate90": 0.915})
    assert _network_augment({}, digits) == "rotate,translate"


def test_the_network_candidate_takes_the_largest_side_the_budget_affords(tiny_params, tmp_path):
    images, labels = make_images(6, 32)
    arena = arena_of(images, labels, tiny_params, tmp_path, batch_size=32)
    fold = (np.arange(14), np.arange(14, 18))
    speeds = FakeSpeeds(forward=0.001, train=0.01)  # at 32 px; x (side / 32)^2
    search = Engine(arena, [fold], budget_seconds=100.0, cost=None, clock=itertools.repeat(0.0).__next__)
    candidate = _network_candidate(recommendation(strategy="full", freeze=0), facts(2000, 300), {}, search, speeds, 1600, 400,
                                   224, "rotate,translate")
    # an epoch costs (1,600 x 0.01 + 400 x 0.001) x (s/32)^2 = 16.4 s at 32 px: of the 12 epochs wanted
    # (600 steps of 50) none fits 100 s, and only 32 px affords the minimum of 6
    assert (candidate.strategy, candidate.image_size, dict(candidate.params)["epochs"]) == ("full", 32, MIN_NETWORK_EPOCHS)
    assert dict(candidate.params)["augment"] == "rotate,translate"
    roomier = Engine(arena, [fold], budget_seconds=1000.0, cost=None, clock=itertools.repeat(0.0).__next__)
    wide = _network_candidate(recommendation(strategy="full", freeze=0), facts(2000, 300), {}, roomier, speeds, 1600, 400,
                              224, "rotate,translate")
    # 80 px affords 9 epochs (103 s each), 64 px all 12 (66 s each): the whole schedule at the smaller side wins,
    # with the 15 epochs that fit there
    assert (wide.image_size, dict(wide.params)["epochs"]) == (64, 15)
    # a budget with room to spare: the largest side, and the most epochs (a 60-minute ELPV fit had trained 7 of 30)
    ample = Engine(arena, [fold], budget_seconds=100_000.0, cost=None, clock=itertools.repeat(0.0).__next__)
    large = _network_candidate(recommendation(strategy="full", freeze=0), facts(2000, 300), {}, ample, speeds, 1600, 400,
                               224, "rotate,translate", min_steps=300)
    assert (large.image_size, dict(large.params)["epochs"]) == (224, MAX_NETWORK_EPOCHS)
    # after a pilot that chose lr x1, 300 steps (6 epochs) suffice: 96 px affords them (6 x 148 s), 112 px does not
    fast = _network_candidate(recommendation(strategy="full", freeze=0), facts(2000, 300), {}, roomier, speeds, 1600, 400,
                              224, "rotate,translate", min_steps=300)
    assert (fast.image_size, dict(fast.params)["epochs"]) == (96, 6)
    fine = _network_candidate(recommendation(freeze=2), facts(2000, 300), {}, search, None, 1600, 400, 224, "x")
    assert (fine.strategy, fine.freeze, fine.image_size) == ("finetune", 2, 224)
    # small data: a schedule in steps, not epochs: 150 images are 4 steps an epoch -> more epochs
    small = _network_candidate(recommendation(strategy="full", freeze=0), facts(150, 25), {}, search, None, 120, 30, 224, "x")
    assert dict(small.params)["epochs"] > 10 and small.image_size <= 64
    hopeless = FakeSpeeds(forward=1.0, train=10.0)
    assert _network_candidate(recommendation(), facts(2000, 300), {}, search, hopeless, 1600, 400, 224, "x") is None


def scored(candidates_and_outcomes, targets=None):
    """A Results table with one fold holding out every image, and each candidate's per-image
    outcomes (1 right, 0 wrong) as its predictions."""
    n = len(candidates_and_outcomes[0][1])
    targets = np.zeros(n, dtype=int) if targets is None else targets
    results = Results([(np.arange(0), np.arange(n))], targets, 2)
    for candidate, outcome in candidates_and_outcomes:
        right = np.asarray(outcome, dtype=bool)
        results.trials[candidate] = Trial(candidate, [float(right.mean())], [0], [np.where(right, targets, 1 - targets)])
    return results


def test_the_best_wins_when_it_is_ahead_beyond_the_paired_noise():
    a, b = Candidate("svm", 224, ""), Candidate("logistic", 224, "")
    # b right on 20 more of 100 images, a right on none that b misses: far beyond one standard error
    results = scored([(a, [1] * 70 + [0] * 30), (b, [1] * 90 + [0] * 10)])
    decision = choose(results)
    assert decision.chosen.candidate is b and decision.tied == [decision.chosen]
    assert "beyond the noise" in decision.reason


def test_held_out_scores_that_tie_are_decided_by_the_playbooks_order_not_by_cost_or_accident():
    """The issue's face crops: pixels and the feature classifiers all near the top of 30 held-out
    images; within the paired noise the playbook's order for small data (features first) decides,
    whichever candidate came first or was cheaper, and the reasons say so."""
    pixels, svm, logistic = Candidate("pixels", 25, ""), Candidate("svm", 224, ""), Candidate("logistic", 224, "")
    # pixels first (cheap and earliest), one image ahead of svm on 30: within one paired standard error
    results = scored([(pixels, [1] * 30), (svm, [1] * 29 + [0]), (logistic, [1] * 28 + [0, 0])])
    decision = choose(results)
    assert decision.best.candidate is pixels
    assert decision.chosen.candidate is svm  # features first; of the tied features the closer to the best
    assert {t.candidate for t in decision.tied} == {pixels, svm}  # two images behind (0.067, SE 0.046) is beyond the noise
    assert "cannot tell them apart" in decision.reason and "playbook" in decision.reason
    # the same scores in another order: the same choice (not the earlier one)
    assert choose(scored([(svm, [1] * 29 + [0]), (pixels, [1] * 30)])).chosen.candidate is svm


def test_a_network_counts_its_margin_and_wins_only_beyond_the_noise():
    a, network = Candidate("svm", 224, ""), Candidate("full", 128, "")
    # one image better on 100: within the noise, and the network's score chose its epoch: features
    assert choose(scored([(a, [1] * 90 + [0] * 10), (network, [1] * 91 + [0] * 9)])).chosen.candidate is a
    # 15 images better: the network
    assert choose(scored([(a, [1] * 75 + [0] * 25), (network, [1] * 90 + [0] * 10)])).chosen.candidate is network
    # a skipped candidate never wins; nothing measured: the first, unmeasured
    skipped = Trial(Candidate("logistic", 224, ""), skipped="skipped")
    results = scored([(a, [1] * 10)])
    assert choose(results, [*results.trials.values(), skipped]).chosen.candidate is a
    assert choose(results, [skipped]).chosen is skipped


def test_paired_comparison_pairs_images_across_repeats():
    from transferkit.selection.winner import paired_difference

    a = np.array([[1, 1, 0, np.nan], [1, 0, 1, 1.0]])
    b = np.array([[1, 0, 0, 1.0], [np.nan, 0, 0, 1.0]])
    paired = paired_difference(a, b)
    # image 0: (1-1)/1; image 1: ((1-0)+(0-0))/2; image 2: (0-0 + 1-0)/2; image 3: (1-1)/1
    assert paired.n_images == 4 and paired.difference == pytest.approx(np.mean([0, 0.5, 0.5, 0]))


def test_the_budget_skips_candidates_that_no_longer_fit_with_a_fake_clock(tiny_params, tmp_path):
    images, labels = make_images(6, 32)
    arena = arena_of(images, labels, tiny_params, tmp_path, strategy="svm")
    ticks = itertools.count(0.0, 1.0)  # every clock reading is one second later
    cost = lambda candidate, n_train, n_test, trials: 0.0 if candidate.strategy == "pixels" else 18.0  # noqa: E731
    search = Engine(arena, [(np.arange(0, 18, 2), np.arange(1, 18, 2))], budget_seconds=10.0, cost=cost,
                             clock=lambda: next(ticks))
    trials = search.evaluate_candidates([Candidate("svm", 32, "always"), Candidate("pixels", 16, "y")])
    assert trials[0].skipped.startswith("skipped: ~18 s to measure") and trials[1].accuracy is not None
    decision = choose(search.results)
    assert decision.chosen.candidate.strategy == "pixels"
    assert trial_reasons(trials, decision, 9)[-1].startswith("the choice, on the same 9 held-out images")
    assert "pixels 16 px scored best" in trial_reasons(trials, decision, 9)[-1]


def test_a_deadline_stops_training_before_the_budget_ends_with_a_fake_clock(tiny_params):
    images, labels = make_images(6, 32)
    now = [0.0]

    def clock() -> float:
        now[0] += 10.0  # each reading (one per epoch end, and the start) is 10 s later
        return now[0]

    deadline = Deadline(45.0, clock=clock)
    from transferkit.strategies import FitRequest, Settings, get_strategy

    classes = np.array(sorted(set(labels)))
    params = transferkit.ImageClassifier(**dict(tiny_params, strategy="full", epochs=20)).get_params()
    request = FitRequest(pixels=images, targets=np.searchsorted(classes, labels), classes=classes,
                         settings=Settings("full", None, 32, None), params=params, runtime=CPU,
                         console=transferkit.ImageClassifier()._console(), callbacks=(deadline,))
    outcome = get_strategy("full").fit(request)
    epochs = len(outcome.history["history"])
    # start 10, epochs end at 20, 30, 40: another 10 s epoch would pass 45 -> stop after 3 of 20
    assert deadline.stopped and epochs == 3 and "time budget" in deadline.reason


def test_the_symmetry_test_finds_the_flip_that_changes_the_class(tiny_weights, tiny_params, tmp_path):
    images, labels = ramps()
    arena = arena_of(images, labels, tiny_params, tmp_path)
    fold = (np.r_[0:8, 10:18], np.r_[8:10, 18:20])
    symmetry = measure_symmetry(arena, fold, 32, None)
    assert symmetry.accuracy["none"] >= 0.75 and not symmetry.horizontal and symmetry.vertical
    # trained on flipped copies too, rising and falling contradict each other: still refused
    assert symmetry.trained_with["horizontal"] < symmetry.accuracy["none"] - symmetry.tolerance
    assert "horizontal flip: " in symmetry.describe() and "it changes the class" in symmetry.describe()
    # a quarter turn makes a left-right ramp a vertical one, which no class here is: the first test
    # fails (the features differ), the second finds training on turned copies harmless
    assert symmetry.accuracy["rotate90"] < symmetry.accuracy["none"] - symmetry.tolerance
    assert symmetry.rotation and not symmetry.dihedral and "the class is kept (the features alone differ)" in symmetry.describe()
    assert "vertical" not in symmetry.trained_with  # passed the first test: no second one paid for
    colours, colour_labels = make_images(8, 32)
    kept = measure_symmetry(arena_of(colours, colour_labels, tiny_params, tmp_path), (np.r_[0:6, 8:14, 16:22], np.r_[6:8, 14:16, 22:24]), 32, None)
    assert kept.horizontal and kept.vertical and kept.rotation and kept.dihedral
    assert kept.to_dict()["rotation"] is True and kept.to_dict()["trained_with"] == {}


def test_the_symmetry_test_refuses_a_turn_where_it_makes_another_class(tiny_weights, tiny_params, tmp_path):
    # enough held-out images per class that a coin's guesses between two contradicting classes show
    images, labels = ramps(n_per_class=40, vertical=True)
    arena = arena_of(images, labels, tiny_params, tmp_path)
    test = np.concatenate([np.r_[k * 40 + 25:k * 40 + 40] for k in range(4)])
    symmetry = measure_symmetry(arena, (np.setdiff1d(np.arange(160), test), test), 32, None)
    assert symmetry.accuracy["none"] >= 0.75
    # rising turned a quarter is upwards (or downwards): trained on turned copies, the classes contradict
    assert not symmetry.rotation and not symmetry.horizontal and not symmetry.vertical and symmetry.kept == []
    assert set(symmetry.trained_with) == {"horizontal", "vertical", "rotate90"}
    assert "a turn by 90 degrees: " in symmetry.describe() and "it changes the class" in symmetry.describe()


def test_a_network_is_raced_and_trains_without_the_flip_the_data_rejects(tiny_params, tmp_path, monkeypatch):
    import transferkit.strategies.network as network

    import transferkit.selection.auto as select

    monkeypatch.setattr(select, "PERFECT", 1.01)  # the frozen features separate the ramps perfectly: race a network anyway
    augments = []
    real = network.build_augmentation
    monkeypatch.setattr(network, "build_augmentation", lambda spec: augments.append(spec) or real(spec))
    images, labels = ramps(12)
    arena = arena_of(images, labels, tiny_params, tmp_path, strategy="auto", image_size="auto")
    found = search_auto(arena, facts(2000, 32), recommendation(strategy="full", freeze=0), backbone_size=32, fixed={},
                        speeds=None, budget_seconds=None)
    labels_run = [t.candidate.label for t in found.trials]
    network_trial = next(t for t in found.trials if t.candidate.strategy == "full")
    assert network_trial.accuracy is not None and network_trial.outcome is not None
    # the ramps run left to right: a turned ramp is no held-out image's view (harmless to an svm, the
    # second test says, but the network trains only on views the images show)
    assert augments and all("hflip" not in spec for spec in augments) and found.augment == "vflip,rotate,translate"
    assert found.symmetry.rotation and not found.symmetry.unchanged("rotate90")
    assert "svm 32 px" in labels_run and any(r.startswith("symmetry test") for r in found.reasons)
    assert sum(r.startswith("candidate ") for r in found.reasons) == len(found.trials)


def test_an_auto_fit_keeps_the_network_the_search_trained(tiny_params, tmp_path, monkeypatch):
    import transferkit.selection.auto as select
    import transferkit.strategies.network as network

    monkeypatch.setattr(select, "PERFECT", 1.01)
    fits = []
    real = network.NetworkStrategy.fit
    monkeypatch.setattr(network.NetworkStrategy, "fit", lambda self, request: fits.append(1) or real(self, request))
    # make the network (the last one trained, after the learning-rate pilot) win whatever it scores, to see the fit reuse it
    def network_wins(results, trials=None):
        network = [t for t in results.trials.values() if t.candidate.strategy in ("full", "finetune")][-1]
        return select.Decision(chosen=network, best=network, reason="the test's choice")

    monkeypatch.setattr(select, "choose", network_wins)
    images, labels = ramps(12)
    clf = transferkit.ImageClassifier(**dict(tiny_params, strategy="auto", image_size=32, cache_dir=str(tmp_path),
                                              budget_minutes=None)).fit(images, labels)
    # the learning-rate pilots, the regularisation pilots (light, strong) and the network, all in the search; none after it
    assert clf.settings_["strategy"] in ("full", "finetune") and len(fits) == len(PILOT_FACTORS) + 2 + 1
    assert clf.history_["regularization"]["preset"] == dict(clf.advice_.search.chosen.candidate.params)["regularization"]
    assert clf.model_ is clf.advice_.search.chosen.outcome.model
    assert clf.advice_.recommendation.reasons[-1].endswith("the network trained in the search is the model")
    assert clf.predict(images).shape == (24,)


def test_every_candidate_is_measured_at_the_size_the_user_fixed(tiny_params, tmp_path):
    images, labels = make_images(6, 32)
    clf = transferkit.ImageClassifier(**dict(tiny_params, strategy="auto", image_size=24, cache_dir=str(tmp_path),
                                              budget_minutes=None)).fit(images, labels)
    assert {t.candidate.image_size for t in clf.advice_.search.trials} == {24} and clf.image_size_ == 24


@pytest.mark.parametrize("n_classes", [2, 3])
def test_pixel_kernel_computes_the_svcs_own_decision_values(n_classes):
    images, labels = make_images(8, 12, seed=1)
    keep = np.isin(labels, ["red", "green", "blue"][:n_classes])
    images, targets = images[keep], np.unique(np.array(labels)[keep], return_inverse=True)[1]
    svc, grey, _ = fit_pixel_classifier(images, targets, seed=0, class_weight=None)
    preprocessing = get_backbone_spec("efficientnet_lite0").preprocessing
    model = pixel_kernel_from(svc, side=12, grey=grey, n_classes=n_classes, preprocessing=preprocessing)
    x = (pixels_to_tensor(images).float() / 255 - torch.tensor(preprocessing.mean).view(1, 3, 1, 1)) / torch.tensor(preprocessing.std).view(1, 3, 1, 1)
    scores = model(x).detach().numpy()
    reference = svc.decision_function(_inputs(images, grey))
    if n_classes == 2:
        reference = np.stack([np.zeros_like(reference), reference], axis=1)
    np.testing.assert_allclose(scores, reference, atol=1e-4)
    assert isinstance(svc, SVC) and (scores.argmax(1) == svc.predict(_inputs(images, grey))).all()


def test_pixels_fits_saves_loads_and_predicts_the_same(tmp_path):
    images, labels = make_images(6, 20)
    clf = transferkit.ImageClassifier(strategy="pixels", image_size=16, device="cpu", precision="fp32", cache_dir=False).fit(images, labels)
    assert clf.plan_.side == 16 and clf.score(images, labels) == 1.0
    transferkit.save(clf, tmp_path / "model")
    loaded = transferkit.load(tmp_path / "model", precision="fp32", cache_dir=False)
    np.testing.assert_allclose(loaded.predict_proba(images), clf.predict_proba(images), atol=1e-6)


def test_an_auto_fit_records_its_estimate_next_to_its_measured_time(tiny_params, tmp_path):
    images, labels = make_images(6, 32)
    clf = transferkit.ImageClassifier(**dict(tiny_params, strategy="auto", image_size="auto", cache_dir=str(tmp_path))).fit(images, labels)
    assert clf.advice_.seconds <= clf.estimated_fit_seconds_ and clf.fit_seconds_ > 0
    assert transferkit.ImageClassifier(**dict(tiny_params, strategy="svm")).fit(images, labels).estimated_fit_seconds_ is None


def test_flips_average_the_features_of_the_four_views_at_fit_and_predict(tiny_weights, tmp_path):
    from transferkit.strategies.features import FeatureExtractor, symmetric_features

    images, labels = make_images(6, 32)
    extractor = FeatureExtractor(TINY_BACKBONE, weights=str(tiny_weights), runtime=CPU, cache_dir=str(tmp_path))
    views = [images, images[:, :, ::-1], images[:, ::-1], images[:, ::-1, ::-1]]
    expected = np.mean([extractor.transform(np.ascontiguousarray(v)) for v in views], axis=0)
    np.testing.assert_allclose(symmetric_features(extractor, images, "flips"), expected, rtol=1e-5)
    # a flipped image has the same averaged features: the model's answer is flip-invariant
    flipped = np.ascontiguousarray(images[:, :, ::-1])
    np.testing.assert_allclose(symmetric_features(extractor, flipped, "flips"), expected, rtol=1e-4, atol=1e-5)
    params = dict(backbone=TINY_BACKBONE, weights=str(tiny_weights), strategy="logistic", image_size=32, C=0.1,
                  device="cpu", precision="fp32", cache_dir=str(tmp_path))
    clf = transferkit.ImageClassifier(**params, symmetries="flips").fit(images, labels)
    assert clf.settings_["symmetries"] == "flips"
    np.testing.assert_allclose(clf.predict_proba(flipped), clf.predict_proba(images), atol=1e-5)
    plain = transferkit.ImageClassifier(**params).fit(images, labels)
    assert plain.settings_["symmetries"] == "none"
    transferkit.save(clf, tmp_path / "m")
    loaded = transferkit.load(tmp_path / "m", precision="fp32", cache_dir=str(tmp_path))
    np.testing.assert_allclose(loaded.predict_proba(flipped), clf.predict_proba(images), atol=1e-5)
    # the 8 views of the square: the features of an image turned by 90 degrees are the same
    turned = np.ascontiguousarray(np.rot90(images, 1, axes=(1, 2)))
    np.testing.assert_allclose(symmetric_features(extractor, turned, "dihedral"), symmetric_features(extractor, images, "dihedral"),
                               rtol=1e-4, atol=1e-5)
    assert not np.allclose(symmetric_features(extractor, turned, "flips"), symmetric_features(extractor, images, "flips"), atol=1e-3)


def test_when_the_budget_measures_nothing_auto_falls_back_to_svm_and_says_so():
    trials = [Trial(Candidate("svm", 224, "always"), skipped="skipped: ~90 s to measure, 3 s of the budget left"),
              Trial(Candidate("logistic", 224, "x"), skipped="skipped: ~90 s to measure, 3 s of the budget left")]
    decision = choose(Results([(np.arange(0), np.arange(4))], np.zeros(4, dtype=int), 2), trials)
    assert decision.chosen.candidate.strategy == "svm"
    assert trial_reasons(trials, decision, 100)[-1] == "no candidate could be measured within the budget: auto fits svm 224 px unmeasured"


def done(*candidates: Candidate) -> dict[Candidate, Trial]:
    """Trials of candidates already scored (no fold timings recorded)."""
    return {c: Trial(c, [0.9]) for c in candidates}


def test_the_budget_counts_cached_features_as_free():
    cost = CostModel(FakeSpeeds(forward=1.0, train=1.0), 18)
    svm, logistic, flips = Candidate("svm", 32, "a"), Candidate("logistic", 32, "b"), Candidate("logistic", 32, "c", symmetries="flips")
    assert cost(svm, 14, 4, {}) == 18.0
    assert cost(logistic, 14, 4, done(svm)) == 0.0  # reads the features svm extracted at the same size
    assert cost(flips, 14, 4, done(svm)) == 3 * 18.0  # three flipped views not extracted yet
    assert cost(Candidate("full", 32, "d", params=(("epochs", 2),)), 14, 4, done(svm)) == 2 * (14 * 1.0 + 4 * 1.0)
    # a candidate already scored on a fold costs what its last fold took, less the features it cached
    timed = Trial(svm, [0.9, 0.8], [0, 1], fold_seconds=[12.0, 2.0], extract_seconds=10.0)
    assert cost(svm, 14, 4, {svm: timed}) == 2.0
    assert cost(svm, 14, 4, {svm: Trial(svm, [0.9], [0], fold_seconds=[12.0], extract_seconds=10.0)}) == 2.0


def test_the_budget_counts_reading_cached_views_at_the_rate_a_scored_candidate_took():
    # every view warmed by a shared pass: no extraction left, yet a 7-minute ELPV fit once started the
    # 8 symmetries of the square 23 s before its deadline on that estimate of 0 s, and took 74 s
    warmed = {(32, "stages", view) for view in SYMMETRIES["dihedral"]}
    cost = CostModel(FakeSpeeds(forward=1.0, train=1.0), 18, warmed)
    svm, dihedral = Candidate("svm", 32, "a"), Candidate("svm", 32, "b", symmetries="dihedral")
    scored = {svm: Trial(svm, [0.9], [0], fold_seconds=[13.0], extract_seconds=3.0)}  # 10 s a view beyond its extraction
    assert cost(dihedral, 14, 4, scored) == 8 * 10.0
    flips = Candidate("svm", 32, "c", symmetries="flips")
    scored[flips] = Trial(flips, [0.9], [0], fold_seconds=[24.0])  # 6 s a view: the least per view counts
    assert cost(dihedral, 14, 4, scored) == 8 * 6.0
    # other layers, another side or another classifier say nothing about these features
    assert cost(Candidate("svm", 32, "d", symmetries="dihedral", feature_layers="stages"), 14, 4, scored) == 0.0
    assert cost(Candidate("svm", 64, "e"), 14, 4, scored) == 18.0 * 4
    logistic = Candidate("logistic", 32, "f")
    assert cost(Candidate("logistic", 32, "g", symmetries="dihedral"), 14, 4,
                {logistic: Trial(logistic, [0.9], [0], fold_seconds=[1.0])}) == 8 * 1.0


def test_averaged_views_of_the_layers_that_scored_best_come_first():
    from transferkit.selection.auto import _better_layers_first

    class Search:
        trials = {c: Trial(c, [a], [0]) for c, a in ((Candidate("svm", 32, "a"), 0.75),
                                                     (Candidate("svm", 32, "b", feature_layers="stages"), 0.78))}
    balanced = Candidate("svm", 32, "c", "balanced")
    flips = [Candidate(strategy, 32, "d", None, group, feature_layers=layers)
             for group in ("flips", "dihedral") for strategy, layers in (("svm", "bottleneck"), ("logistic", "bottleneck"), ("svm", "stages"))]
    ordered = _better_layers_first(Search(), [balanced, *flips])
    assert [c.feature_layers for c in ordered[:2]] == ["stages", "stages"] and [c.symmetries for c in ordered[:2]] == ["flips", "dihedral"]
    assert ordered[2:] == [balanced, *[c for c in flips if c.feature_layers == "bottleneck"]]  # the others in their order
    assert _better_layers_first(type("Empty", (), {"trials": {}})(), [balanced, *flips]) == [balanced, *flips]


def test_multi_layer_features_cover_the_bottleneck_in_the_budget():
    warmed = set()
    cost = CostModel(FakeSpeeds(forward=1.0, train=1.0), 18, warmed)
    svm, stages = Candidate("svm", 32, "a"), Candidate("svm", 32, "b", feature_layers="stages")
    assert cost(stages, 14, 4, done(svm)) == 18.0  # the bottleneck's features are not the stages'
    assert cost(svm, 14, 4, done(stages)) == 0.0  # the stages' features end with the bottleneck's
    warmed.add((32, "stages", "identity"))  # a shared pass computed them
    assert cost(stages, 14, 4, {}) == cost(svm, 14, 4, {}) == 0.0
    assert cost(Candidate("logistic", 32, "c", symmetries="flips"), 14, 4, {}) == 3 * 18.0


def test_auto_races_multi_layer_features_from_one_shared_pass(tiny_params, tmp_path, monkeypatch):
    from transferkit.backbones.multilayer import StagePooledNetwork
    from transferkit.strategies.features import FeatureExtractor

    computed = {"stages": 0, "bottleneck": 0}
    original = FeatureExtractor._forward

    def counting(self, runtime, batch):
        computed["stages" if isinstance(self.model, StagePooledNetwork) else "bottleneck"] += len(batch)
        return original(self, runtime, batch)

    monkeypatch.setattr(FeatureExtractor, "_forward", counting)
    images, labels = ramps(12)
    arena = arena_of(images, labels, tiny_params, tmp_path, strategy="auto", image_size="auto")
    lines = []
    found = search_auto(arena, facts(2000, 32), recommendation(strategy="full", freeze=0), backbone_size=32, fixed={},
                        speeds=None, budget_seconds=None, on_event=lines.append)
    labels_run = [t.candidate.label for t in found.trials if t.accuracy is not None]
    assert labels_run[:3] == ["svm 32 px", "logistic 32 px", "svm 32 px, stages features"]
    assert any("multi-layer features of 24 images at 32 px (identity) in one pass" in line for line in lines)
    held_out = len(found.trials[0].predictions[0])
    assert computed["stages"] == 24  # one pass over every image
    # the bottleneck candidates read the shared pass: only the symmetry test's flipped and turned held-out images are new,
    # and the training images under the two views that failed its first test (horizontal flip, quarter turn)
    assert computed["bottleneck"] == 3 * held_out + 2 * (24 - held_out)

    fixed = search_auto(arena_of(images, labels, tiny_params, tmp_path / "b", strategy="auto", image_size="auto"),
                        facts(2000, 32), recommendation(strategy="full", freeze=0), backbone_size=32,
                        fixed={"feature_layers": "bottleneck"}, speeds=None, budget_seconds=None)
    assert all(t.candidate.feature_layers == "bottleneck" for t in fixed.trials)
    chosen = search_auto(arena_of(images, labels, tiny_params, tmp_path / "c", strategy="auto", image_size="auto"),
                         facts(2000, 32), recommendation(strategy="full", freeze=0), backbone_size=32,
                         fixed={"feature_layers": "stages"}, speeds=None, budget_seconds=None)
    assert {t.candidate.feature_layers for t in chosen.trials if t.candidate.strategy in ("svm", "logistic")} == {"stages"}


def test_the_estimate_counts_the_probe_the_search_and_the_winners_refit():
    from types import SimpleNamespace

    from transferkit.selection.cost import estimated_fit_seconds

    plain = Trial(Candidate("svm", 224, ""), [0.70], seconds=10.0, extract_seconds=8.0)
    search = SimpleNamespace(chosen=plain, seconds=30.0)
    assert estimated_fit_seconds(SimpleNamespace(search=search, seconds=5.0)) == 5.0 + 30.0 + 2.0
    network = Trial(Candidate("full", 128, ""), [0.9], seconds=100.0, outcome=object())
    search = SimpleNamespace(chosen=network, seconds=130.0)
    assert estimated_fit_seconds(SimpleNamespace(search=search, seconds=5.0)) == 135.0  # kept, not trained again


def test_a_network_that_cannot_catch_the_leader_is_stopped_after_two_thirds_of_its_epochs():
    from types import SimpleNamespace

    from transferkit.training.callbacks import FallingBehind

    check = FallingBehind(0.90, after=4, margin=0.15)
    state = SimpleNamespace(result=SimpleNamespace(history=[]), stop=False, epoch=0, console=SimpleNamespace(print=lambda *a: None))
    check.on_train_start(state)
    for epoch, accuracy in enumerate([0.40, 0.55, 0.70, 0.74], start=1):
        state.result.history.append(SimpleNamespace(val_accuracy=accuracy))
        state.epoch = epoch
        check.on_epoch_end(state)
        assert state.stop == (epoch == 4)  # not before `after` epochs, and 0.74 < 0.90 - 0.15
    close = FallingBehind(0.90, after=2, margin=0.15)
    close.on_train_start(state)
    state.stop, state.result.history = False, [SimpleNamespace(val_accuracy=0.70), SimpleNamespace(val_accuracy=0.80)]
    close.on_epoch_end(state)
    assert not state.stop and not close.stopped


def test_no_network_is_trained_when_the_features_are_already_perfect(tiny_params, tmp_path):
    images, labels = ramps(12)
    arena = arena_of(images, labels, tiny_params, tmp_path, strategy="auto", image_size="auto")
    found = search_auto(arena, facts(2000, 32), recommendation(strategy="full", freeze=0), backbone_size=32, fixed={},
                        speeds=None, budget_seconds=None)
    assert max(t.accuracy for t in found.trials if t.accuracy is not None) == 1.0
    assert not any(t.candidate.strategy in ("full", "finetune") for t in found.trials)
    assert any("already classifies every held-out image correctly" in r for r in found.reasons)


class PilotSearch:
    """A search over 400 held-out images whose trials score what ``scores`` says for each
    pretrained-layer lr factor: lr x0.1 errs on the first images, lr x1 on the last (disjoint
    errors: the two pilots disagree wherever either errs), unless ``wrong`` names the images."""

    def __init__(self, scores, budget_seconds=None, cost=None, wrong=None):
        self.scores, self.budget_seconds, self.cost, self.ran = scores, budget_seconds, cost, []
        self.arena = SimpleNamespace(targets=np.arange(400) % 2)
        self.folds = [(np.arange(0), np.arange(400))]
        self.results = Results(self.folds, self.arena.targets, 2)
        self.wrong = wrong or {0.1: np.arange(round((1 - scores.get(0.1, 1.0)) * 400)),
                               1.0: 399 - np.arange(round((1 - scores.get(1.0, 1.0)) * 400))}

    def evaluate_candidates(self, candidates, folds=None):
        self.ran += candidates
        trials = [Trial(c) for c in candidates]
        for trial in trials:
            factor = dict(trial.candidate.params)["backbone_lr_factor"]
            trial.scores.append(self.scores[factor])
            trial.folds.append(0)
            trial.predictions.append(_predictions(self.arena.targets, self.wrong[factor]))
            self.results.trials[trial.candidate] = trial
        return trials


@pytest.mark.parametrize("scores, expected", [({0.1: 0.31, 1.0: 0.43}, 1.0),  # the spatial set after one epoch
                                              ({0.1: 0.70, 1.0: 0.72}, 0.1),  # within a paired standard error (0.038)
                                              ({0.1: 0.80, 1.0: 0.60}, 0.1)])
def test_the_learning_rate_pilot_keeps_the_playbooks_rate_unless_the_other_wins_beyond_the_tie(scores, expected):
    network = Candidate("full", 96, "a network", params=(("augment", "rotate"), ("epochs", 12)))
    search, reasons = PilotSearch(scores), []
    assert _learning_rate_pilot(network, search, reasons, 1600, 400) == expected
    assert [dict(c.params)["backbone_lr_factor"] for c in search.ran] == list(PILOT_FACTORS)
    assert all(c.image_size == 64 and dict(c.params)["epochs"] == 2 and c.strategy == "full" for c in search.ran)
    assert reasons[-1].startswith("learning-rate pilot (2 epochs at 64 px)") and f"lr x{expected:g}" in reasons[-1]
    assert "paired standard error" in reasons[-1]


@pytest.mark.parametrize("wrong_x1, expected", [
    (np.arange(108), 1.0),       # lr x1 errs only where lr x0.1 does: 12 images better, none worse (error 0.009)
    (399 - np.arange(108), 0.1),  # errs elsewhere: 120 images better, 108 worse (error 0.038)
])
def test_the_learning_rate_pilot_reads_the_images_not_only_the_two_accuracies(wrong_x1, expected):
    """0.70 against 0.73 both times: image by image, the lead of 0.03 is beyond its error when
    lr x1 corrects images and errs on none that lr x0.1 got right, and within it when the two err
    on different images."""
    search = PilotSearch({0.1: 0.70, 1.0: 0.73}, wrong={0.1: np.arange(120), 1.0: wrong_x1})
    assert _learning_rate_pilot(Candidate("full", 96, "a network", params=(("epochs", 12),)), search, [], 1600, 400) == expected


def test_the_learning_rate_pilot_is_skipped_when_it_would_cost_too_much_of_the_networks_time():
    network = Candidate("full", 32, "a network", params=(("epochs", 6),))
    per_epoch = lambda candidate, n_train, n_test, done: float(dict(candidate.params)["epochs"])  # noqa: E731
    search, reasons = PilotSearch({0.1: 0.3, 1.0: 0.9}, budget_seconds=600, cost=per_epoch), []
    # two pilots of 2 epochs at the network's own side: 4 of its 6 epochs, more than PILOT_SHARE
    assert 4 / 6 > PILOT_SHARE and _learning_rate_pilot(network, search, reasons, 100, 20) is None
    assert search.ran == [] and reasons[-1].startswith("no learning-rate pilot")


def test_the_pilot_trains_at_the_size_the_user_fixed():
    network = Candidate("finetune", 160, "a network", freeze=2, params=(("epochs", 6),))
    search = PilotSearch({0.1: 0.5, 1.0: 0.5})
    assert _learning_rate_pilot(network, search, [], 100, 20, size_fixed=True) == 0.1
    assert {c.image_size for c in search.ran} == {160} and {c.freeze for c in search.ran} == {2}


@pytest.mark.parametrize("network_side, pilot_side", [(224, 64), (80, 48), (64, 48), (48, 32), (32, 32), (24, 24)])
def test_the_pilot_trains_below_the_networks_side(network_side, pilot_side):
    search = PilotSearch({0.1: 0.5, 1.0: 0.5})
    _learning_rate_pilot(Candidate("full", network_side, "a network", params=(("epochs", 6),)), search, [], 100, 20)
    assert {c.image_size for c in search.ran} == {pilot_side}


class RegularizationSearch:
    """A search over one held-out fold whose trials score (accuracy, predictions) by regularisation and sampling."""

    def __init__(self, outcomes, targets, budget_seconds=None, cost=None):
        self.outcomes, self.budget_seconds, self.cost, self.ran = outcomes, budget_seconds, cost, []
        self.arena = SimpleNamespace(targets=np.asarray(targets))
        self.folds = [(np.arange(0), np.arange(len(targets)))]
        self.results = Results(self.folds, self.arena.targets, int(self.arena.targets.max()) + 1)

    def evaluate_candidates(self, candidates, folds=None):
        self.ran += candidates
        trials = []
        for candidate in candidates:
            params = dict(candidate.params)
            predictions = self.outcomes[params.get("regularization", "none"), params.get("sampling", "shuffle")]
            trial = Trial(candidate)
            trial.scores.append(float(np.mean(predictions == self.arena.targets)))
            trial.folds.append(0)
            trial.predictions.append(predictions)
            self.results.trials[trial.candidate] = trial
            trials.append(trial)
        return trials


def _predictions(targets, wrong):
    """``targets`` with the images at ``wrong`` predicted as another class."""
    predictions = np.array(targets)
    predictions[wrong] = (predictions[wrong] + 1) % 2
    return predictions


def _regularization_case(accuracy, fixed=None, imbalance=None, outcomes=None, targets=None):
    from transferkit.selection.auto import Pilot, _regularization_pilot

    targets = np.arange(400) % 2 if targets is None else targets
    n = len(targets)  # each setting errs on its own stretch of images: the runs disagree wherever one errs
    outcomes = outcomes or {(name, "shuffle"): _predictions(targets, (130 * i + np.arange(round((1 - a) * n))) % n)
                            for i, (name, a) in enumerate(accuracy.items())}
    search = RegularizationSearch(outcomes, targets)
    base = Candidate("full", 64, "pilot", params=(("epochs", 2), ("backbone_lr_factor", 0.1)))
    (none,) = search.evaluate_candidates([base])
    search.ran.clear()
    reasons = []
    chosen = _regularization_pilot(Candidate("full", 224, "a network"), search, reasons,
                                   Pilot(factor=0.1, side=64, trials={0.1: none}), fixed or {}, imbalance)
    return chosen, search, reasons


@pytest.mark.parametrize("accuracy, expected", [
    ({"none": 0.70, "light": 0.71, "strong": 0.69}, "strong"),  # all tied (paired errors 0.038): the strongest
    ({"none": 0.70, "light": 0.72, "strong": 0.60}, "light"),   # strong loses by 0.12, paired error 0.041
    ({"none": 0.80, "light": 0.65, "strong": 0.64}, "none"),    # both regularised runs lose
])
def test_the_regularisation_pilot_keeps_the_strongest_setting_tied_with_the_best(accuracy, expected):
    chosen, search, reasons = _regularization_case(accuracy)
    assert chosen == {"regularization": expected}
    assert [dict(c.params)["regularization"] for c in search.ran] == ["light", "strong"]
    assert all(c.image_size == 64 and dict(c.params)["backbone_lr_factor"] == 0.1 for c in search.ran)
    assert reasons[-1].startswith(f"regularisation pilot (2 epochs at 64 px, lr x0.1): none {accuracy['none']:.3f}")
    assert f"trains with {expected} (" in reasons[-1]


def test_a_regularisation_the_user_fixed_is_not_measured():
    chosen, search, reasons = _regularization_case({"none": 0.7}, fixed={"regularization": "light", "sampling": "shuffle"},
                                                   imbalance=5.0)
    assert chosen == {} and search.ran == [] and reasons == []


@pytest.mark.parametrize("common_missed, expected", [
    (60, "balanced"),  # balanced accuracy 0.625 -> 0.844 (paired error 0.045), accuracy 0.850 -> 0.825 (error 0.026)
    (120, "shuffle"),  # balanced accuracy rises too, but accuracy falls to 0.675: beyond its error
])
def test_the_sampling_pilot_keeps_balanced_batches_only_when_balanced_accuracy_gains_at_no_cost(common_missed, expected):
    targets = np.where(np.arange(400) % 5 == 0, 0, 1)  # 80 rare (0), 320 common (1)
    rare, common = np.flatnonzero(targets == 0), np.flatnonzero(targets == 1)
    plain = _predictions(targets, rare[:60])  # misses 60 of the 80 rare images: accuracy 0.85, balanced 0.625
    drawn = _predictions(targets, np.r_[rare[:10], common[:common_missed]])
    outcomes = {("none", "shuffle"): plain, ("light", "shuffle"): plain, ("strong", "shuffle"): plain,
                ("strong", "balanced"): drawn}
    chosen, search, reasons = _regularization_case({}, imbalance=4.0, outcomes=outcomes, targets=targets)
    assert chosen == {"regularization": "strong", "sampling": expected}
    assert dict(search.ran[-1].params)["sampling"] == "balanced" and dict(search.ran[-1].params)["regularization"] == "strong"
    assert reasons[-1].startswith("sampling pilot (imbalanced classes, 4.0:1)")


def test_the_regularisation_pilot_is_skipped_when_it_would_cost_too_much_of_the_networks_time():
    from transferkit.selection.auto import Pilot, _regularization_pilot

    targets = np.arange(100) % 2
    search = RegularizationSearch({("none", "shuffle"): targets}, targets, budget_seconds=600,
                                  cost=lambda candidate, n_train, n_test, done: 10.0 if candidate.image_size == 64 else 50.0)
    (none,) = search.evaluate_candidates([Candidate("full", 64, "pilot", params=(("epochs", 2),))])
    reasons = []
    # two more pilots of 10 s against a network of 50 s: 0.4 > PILOT_SHARE
    assert _regularization_pilot(Candidate("full", 224, "a network"), search, reasons, Pilot(0.1, 64, {0.1: none}), {}) == {}
    assert reasons[-1].startswith("no regularisation pilot") and len(search.ran) == 1


def test_a_factor_the_user_sets_skips_the_pilot_and_auto_means_the_playbooks_elsewhere():
    from transferkit.strategies.network import lr_factor_value

    assert lr_factor_value("auto") == PILOT_FACTORS[0] == 0.1 and lr_factor_value(0.3) == 0.3
    assert transferkit.ImageClassifier(backbone_lr_factor=0.3)._fixed_settings() == {"backbone_lr_factor": 0.3}
    assert transferkit.ImageClassifier(regularization="strong", sampling="shuffle")._fixed_settings() == {
        "regularization": "strong", "sampling": "shuffle"}
    assert "backbone_lr_factor" not in transferkit.ImageClassifier()._fixed_settings()


def test_a_network_trains_at_the_rate_the_user_fixed_without_a_pilot(tiny_params, tmp_path, monkeypatch):
    import transferkit.selection.auto as select

    monkeypatch.setattr(select, "PERFECT", 1.01)
    images, labels = ramps(8)
    arena = arena_of(images, labels, tiny_params, tmp_path, strategy="auto", image_size="auto", backbone_lr_factor=0.3)
    found = search_auto(arena, facts(2000, 32), recommendation(strategy="full", freeze=0), backbone_size=32,
                        fixed={"backbone_lr_factor": 0.3}, speeds=None, budget_seconds=None)
    networks = [t.candidate for t in found.trials if t.candidate.strategy == "full"]
    assert len(networks) == 1 and dict(networks[0].params)["backbone_lr_factor"] == 0.3  # no pilot ran
    assert networks[0].label.endswith("pretrained lr x0.3") and not any("pilot" in r for r in found.reasons)


def test_a_small_set_scores_its_cheap_candidates_by_repeated_k_fold_on_every_image(tiny_params, tmp_path):
    assert cheap_repeats(2000, 400) == 0  # a held-out fifth of 400 images: one fold suffices
    assert cheap_repeats(1347, 270) == 1 and cheap_repeats(150, 30) == 2  # digits: 5 folds; 150 face crops: 2 x 5
    images, labels = make_images(6, 32)
    arena = arena_of(images, labels, tiny_params, tmp_path, strategy="auto", image_size="auto")
    found = search_auto(arena, facts(18, 32), recommendation(strategy="svm", freeze=None), backbone_size=32, fixed={},
                        speeds=None, budget_seconds=None)
    results = found.results
    assert len(results.folds) == 10 and results.repeats == 2  # 6 images a class: 5 folds, twice
    cheap = [t for t in found.trials if t.candidate.kind != "network"]
    assert cheap and all(sorted(t.folds) == list(range(10)) for t in cheap)
    for trial in cheap:  # every image held out in each repeat: out-of-fold probabilities for all of them
        assert not np.isnan(results.oof_proba(trial.candidate)).any()
        assert (results.held_out_fold(trial.candidate, repeat=1) >= 5).all()
        assert not np.isnan(results.correct(trial.candidate)).any()
    assert any(f"{len(cheap)} of the {len(cheap)} cheap candidates were also scored by 2 x 5-fold cross-validation on all 18 images"
               in r for r in found.reasons)
    assert found.decision.chosen is found.chosen and found.reasons[-1].startswith("the choice")


def test_a_cheap_leader_keeps_its_final_fit_back_before_the_next_candidate_is_costed():
    from transferkit.selection.auto import FINAL_FIT_FACTOR, _evaluate_cheap

    stages = Candidate("svm", 224, "multi-layer", feature_layers="stages", symmetries="flips")
    plain = Candidate("logistic", 224, "flips", symmetries="flips")
    trials, reserve_when_costed = {}, []

    class Search:
        budget_seconds, reserve = 600.0, 30.0

        def evaluate_candidates(self, candidates, folds):
            reserve_when_costed.append(self.reserve)
            (candidate,) = candidates  # one at a time under a budget
            slow = candidate is stages
            trials[candidate] = Trial(candidate, scores=[0.9 if slow else 0.8], folds=[0], seconds=140.0 if slow else 5.0,
                                      extract_seconds=3.0)

        def leader(self):
            return max(trials.values(), key=lambda t: t.accuracy)

    search = Search()
    _evaluate_cheap(search, [stages, plain])
    # the multi-layer svm leads after 140 s: its refit (137 s) is kept back before the logistic is costed
    assert reserve_when_costed == [30.0, pytest.approx(FINAL_FIT_FACTOR * 137.0)]
    assert search.reserve == pytest.approx(FINAL_FIT_FACTOR * 137.0)


def test_the_network_leaves_the_leaders_final_fit_its_time():
    from transferkit.selection.auto import FINAL_FIT_FACTOR, _reserve_final_fit

    leader = Trial(Candidate("svm", 224, "features"), scores=[0.8], folds=[0], seconds=94.0, extract_seconds=4.0)
    search = SimpleNamespace(budget_seconds=600.0, reserve=30.0, leader=lambda: leader)
    _reserve_final_fit(search)
    assert search.reserve == pytest.approx(FINAL_FIT_FACTOR * 90.0)  # more than 5 % of 10 minutes: the network stops sooner
    search.reserve = 180.0  # a 60-minute budget's share already covers it
    _reserve_final_fit(search)
    assert search.reserve == 180.0
    network = SimpleNamespace(budget_seconds=600.0, reserve=30.0,
                              leader=lambda: Trial(Candidate("full", 64, "a network"), scores=[0.9], folds=[0], seconds=300.0))
    _reserve_final_fit(network)  # a network leader is kept, not fitted again
    assert network.reserve == 30.0


def test_the_network_leaves_the_ensemble_round_the_time_to_rescore_the_features_at_its_side():
    from transferkit.selection.auto import _ensemble_seconds

    stages = Candidate("svm", 224, "multi-layer", feature_layers="stages", symmetries="flips")
    trials = {stages: Trial(stages, scores=[0.79], folds=[0], seconds=71.0, extract_seconds=11.0),
              Candidate("svm", 224, "plain"): Trial(Candidate("svm", 224, "plain"), scores=[0.75], folds=[0], seconds=12.0)}
    weighted = Candidate("svm", 224, "plain", class_weight="balanced")  # scored best, but no partner for an unweighted network
    trials[weighted] = Trial(weighted, scores=[0.80], folds=[0], seconds=12.0)
    costed = []

    def cost(candidate, n_train, n_test, known):
        costed.append(candidate)
        return 94.0  # the four flips at 300 px, not cached

    cost.speeds = FakeSpeeds(forward=0.01, train=0.03)  # at 32 px; x (side / 32)^2
    right = {stages: 311, Candidate("svm", 224, "plain"): 296, weighted: 315}  # of the 394 held-out images, as the scores say
    results = SimpleNamespace(n_images=1968, correct=lambda candidate: (np.arange(394) < right[candidate]).astype(float))
    search = SimpleNamespace(budget_seconds=3600.0, cost=cost, trials=trials, results=results,
                             folds=[(np.arange(1574), np.arange(394))])
    network = Candidate("full", 300, "a network", params=(("augment", "rotate,translate"),))
    # the ensemble round's feature member (the best with the network's class weights), at the network's side,
    # calibrated: its extraction plus its measured fit (60 s)
    assert _ensemble_seconds(search, network) == pytest.approx(94.0 + 60.0)
    assert (costed[0].image_size, costed[0].feature_layers, dict(costed[0].params)["calibrated"]) == (300, "stages", True)
    # a network trained with both flips: 3 more forward passes of the 394 held-out images (test-time augmentation)
    flipped = Candidate("full", 32, "a network", params=(("augment", "hflip,vflip,rotate"),))
    assert _ensemble_seconds(search, flipped) == pytest.approx(94.0 + 60.0 + 3 * 394 * 0.01)
    # with a second network: each network's views once (the first's are reused by the pair's ensemble)
    assert _ensemble_seconds(search, flipped, networks=2) == pytest.approx(94.0 + 60.0 + 2 * 3 * 394 * 0.01)
    assert _ensemble_seconds(SimpleNamespace(**{**vars(search), "budget_seconds": None}), network) == 0.0
    assert _ensemble_seconds(SimpleNamespace(**{**vars(search), "trials": {}}), network) == 0.0


@pytest.mark.parametrize("budget, kept_back", [(3600.0, True), (300.0, False)])
def test_the_network_is_sized_and_stopped_without_the_ensemble_rounds_time_where_it_is_a_tenth_of_what_is_left(budget, kept_back):
    from transferkit.selection.auto import _network_round

    stages = Candidate("svm", 32, "multi-layer", feature_layers="stages", symmetries="flips")
    trials = {stages: Trial(stages, scores=[0.79], folds=[0], seconds=21.0, extract_seconds=1.0)}

    def cost(candidate, n_train, n_test, known):
        return 10.0  # the feature member's views at the network's side

    cost.speeds = FakeSpeeds(forward=0.001, train=0.003)
    seen = []

    class Search:
        arena = SimpleNamespace(runtime=SimpleNamespace(distributed=False), params={"batch_size": 32})
        folds = [(np.arange(1600), np.arange(400))]
        results = SimpleNamespace(n_images=2000, correct=lambda candidate: np.ones(400))
        budget_seconds, reserve = budget, 0.0

        def __init__(self):
            self.trials, self.cost = trials, cost

        def leader(self):
            return trials[stages]

        def left(self):
            return self.budget_seconds - self.reserve

        def evaluate_candidates(self, candidates, folds):
            seen.append((candidates[0], self.reserve))

    search = Search()
    _network_round(search, recommendation(strategy="full", freeze=0), facts(2000, 32), {"backbone_lr_factor": 1.0}, cost.speeds,
                   32, "hflip,vflip,rotate,translate", [])
    (network, reserve), = seen
    # the round's time: the member's 10 s, its classifier's 20 s fit, 3 flipped passes of 400 held-out images at 1 ms
    expected = 10.0 + 20.0 + 3 * 400 * 0.001
    assert reserve == (pytest.approx(expected) if kept_back else 0.0)  # 31.2 s is 0.9 % of an hour, 10.4 % of 300 s
    assert network.strategy == "full" and search.reserve == 0.0  # given back once the network has trained


def test_a_training_step_is_timed_in_the_precision_training_will_use(tiny_weights, monkeypatch):
    """Where ``auto`` resolved bf16 on a CPU, the cost model times the step in the precision the
    training measurement picks (fp32 here, by a stand-in), not in the resolved bf16."""
    import contextlib
    import dataclasses

    import transferkit.training.runtime as runtime_module
    from transferkit.selection.cost import _time_training_step
    from transferkit.training.runtime import Runtime, resolve_runtime

    asked, timed = [], []
    monkeypatch.setattr(runtime_module, "fastest_training_precision",
                        lambda runtime, model, batch: asked.append(runtime.precision) or dataclasses.replace(runtime, precision="fp32"))
    monkeypatch.setattr(Runtime, "autocast", lambda self: timed.append(self.precision) or contextlib.nullcontext())
    auto_bf16 = dataclasses.replace(resolve_runtime("cpu", "fp32"), precision="bf16", auto_precision=True)
    assert _time_training_step(TINY_BACKBONE, tiny_weights, auto_bf16, 32, batch=4) > 0
    assert asked == ["bf16"] and timed == ["fp32", "fp32"]  # the warm-up and the timed step
