"""ImageClassifier honours scikit-learn's estimator contract and the fit options."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score

from conftest import make_images
from transferkit import ConfigError, DataError, ImageClassifier, NotFittedError
from transferkit.data import resolve_data


def test_init_only_stores_parameters_and_clone_round_trips(tiny_params):
    clf = ImageClassifier(**dict(tiny_params, strategy="head"))
    assert clf.get_params()["strategy"] == "head"
    twin = clone(clf)
    assert twin.get_params() == clf.get_params()
    assert not hasattr(twin, "model_")
    # Invalid values are accepted by __init__ and rejected by fit (scikit-learn's rule).
    bad = ImageClassifier(epochs=0)
    with pytest.raises(ConfigError, match="epochs expected a positive integer. Received: epochs=0"):
        bad.fit(*make_images(2))


def test_fit_on_arrays_learns_and_predicts_class_names(tiny_params):
    images, labels = make_images(8, 32)
    clf = ImageClassifier(**dict(tiny_params, epochs=6, strategy="full")).fit(images, labels)
    assert list(clf.classes_) == ["blue", "green", "red"]
    proba = clf.predict_proba(images)
    assert proba.shape == (24, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert set(clf.predict(images)) <= set(clf.classes_)
    assert clf.score(images, labels) > 0.6  # colours are easy; chance is 0.33
    assert clf.history_["history"][0]["images_per_second"] > 0


def test_fit_on_a_folder(tiny_params, image_folder):
    clf = ImageClassifier(**tiny_params).fit(str(image_folder))
    assert list(clf.classes_) == ["blue", "green", "red"]
    images = resolve_data(str(image_folder))
    expected = np.mean(clf.predict(str(image_folder)) == np.array(images.labels))
    assert clf.score(str(image_folder)) == pytest.approx(expected)  # labels read from the folder names
    assert clf.plan_.frozen_stages[0] == "stem"


def test_same_seed_gives_the_same_model(tiny_params):
    images, labels = make_images(4, 32)
    a = ImageClassifier(**tiny_params, augment="strong", dropout=0.3).fit(images, labels).predict_proba(images)
    b = ImageClassifier(**tiny_params, augment="strong", dropout=0.3).fit(images, labels).predict_proba(images)
    np.testing.assert_array_equal(a, b)
    c = ImageClassifier(**tiny_params, augment="strong", dropout=0.3, seed=1).fit(images, labels).predict_proba(images)
    assert not np.array_equal(a, c)


def test_cross_val_score_and_grid_search_work(tiny_params):
    images, labels = make_images(6, 32)
    params = dict(tiny_params, epochs=1, val_fraction=0.0)
    folds = StratifiedKFold(2)
    scores = cross_val_score(ImageClassifier(**params), images, np.array(labels), cv=folds)
    by_hand = [
        clone(ImageClassifier(**params)).fit(images[train], np.array(labels)[train]).score(images[test], np.array(labels)[test])
        for train, test in folds.split(images, labels)
    ]
    np.testing.assert_allclose(scores, by_hand)  # same folds, same seed: scikit-learn drives it like a user would
    search = GridSearchCV(ImageClassifier(**params), {"lr": [1e-3, 1e-2]}, cv=2).fit(images, np.array(labels))
    assert search.best_params_["lr"] in (1e-3, 1e-2)
    assert search.predict(images[:2]).shape == (2,)


def test_balanced_class_weights_are_accepted_and_unknown_ones_rejected(tiny_params):
    images, labels = make_images(4, 32)
    keep = [i for i, label in enumerate(labels) if label != "red" or i % 4 == 0]
    clf = ImageClassifier(**tiny_params, class_weight="balanced", val_fraction=0.0)
    clf.fit(images[keep], [labels[i] for i in keep])
    assert clf.n_train_ == len(keep)
    with pytest.raises(ConfigError, match="class_weight"):
        ImageClassifier(**tiny_params, class_weight="inverse").fit(images, labels)


def test_predict_before_fit_is_a_clear_error():
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError

    with pytest.raises(NotFittedError, match="not fitted yet") as info:
        ImageClassifier().predict(make_images(1)[0])
    assert isinstance(info.value, SklearnNotFittedError)


def test_a_class_too_small_for_the_validation_split_is_a_clear_error(tiny_params):
    images, labels = make_images(4, 32)
    labels[0] = "lonely"
    with pytest.raises(DataError, match="lonely"):
        ImageClassifier(**tiny_params).fit(images, labels)


def test_unknown_strategy_is_a_clear_error(tiny_params):
    with pytest.raises(ConfigError, match="Received: strategy='magic'"):
        ImageClassifier(**dict(tiny_params, strategy="magic")).fit(*make_images(2))


def test_auto_strategy_follows_the_advisor_and_says_why(tiny_params):
    images, labels = make_images(6, 32)
    clf = ImageClassifier(**dict(tiny_params, strategy="auto", image_size="auto")).fit(images, labels)
    # 18 images are far below the small-data threshold: the playbook says features + SVM.
    assert clf.settings_["strategy"] == "svm"
    assert clf.advice_.recommendation.strategy == "svm"
    assert any("1,000" in reason or "1000" in reason for reason in clf.advice_.recommendation.rule_reasons)  # the rule, as proposed
    assert clf.advice_.recommendation.proposed.startswith("svm")
    assert clf.settings_["image_size"] == clf.image_size_ == clf.advice_.recommendation.image_size
    assert clf.predict(images).shape == (18,)


def test_auto_strategy_keeps_what_the_user_set(tiny_params):
    images, labels = make_images(6, 32)
    clf = ImageClassifier(**dict(tiny_params, strategy="auto", freeze=1, class_weight="balanced")).fit(images, labels)
    # symmetries and feature layers: measured, see test_select and test_multilayer
    chosen = {k: v for k, v in clf.settings_.items() if k not in ("symmetries", "feature_layers")}
    assert chosen == {"strategy": "svm", "freeze": None, "image_size": 32, "class_weight": "balanced"}


def test_budget_minutes_reaches_the_advisor_and_is_validated(tiny_params, monkeypatch):
    images, labels = make_images(4, 32)
    seen = {}
    import transferkit.estimator as estimator_module

    original = estimator_module.advise
    monkeypatch.setattr(estimator_module, "advise", lambda *a, **k: seen.update(k) or original(*a, **k))
    ImageClassifier(**dict(tiny_params, strategy="auto"), budget_minutes=2).fit(images, labels)
    assert seen["budget_seconds"] == 120.0 and seen["epochs"] == tiny_params["epochs"]
    with pytest.raises(ConfigError, match="budget_minutes"):
        ImageClassifier(**tiny_params, budget_minutes=0).fit(images, labels)


def test_class_weight_none_overrides_the_advisors_balanced_weights(tiny_params, monkeypatch):
    import transferkit.selection.auto as select

    images, labels = make_images(6, 32)
    keep = [i for i, label in enumerate(labels) if label != "red" or i % 3 == 0]  # red: 2 of 6 -> imbalance 3
    images, labels = images[keep], [labels[i] for i in keep]
    # the imbalance rule proposes balanced weights; make the measurement pick that candidate where it ran
    def balanced_wins(results, trials=None):
        trials = list(results.trials.values())
        chosen = next((t for t in trials if t.candidate.class_weight == "balanced"), trials[0])
        return select.Decision(chosen=chosen, best=chosen, reason="the test's choice")

    monkeypatch.setattr(select, "choose", balanced_wins)
    advised = ImageClassifier(**dict(tiny_params, strategy="auto", budget_minutes=None)).fit(images, labels)
    assert advised.settings_["class_weight"] == "balanced"
    mine = ImageClassifier(**dict(tiny_params, strategy="auto", class_weight="none", budget_minutes=None)).fit(images, labels)
    assert mine.settings_["class_weight"] is None
    assert all(t.candidate.class_weight is None for t in mine.advice_.search.trials)  # every candidate kept the user's choice


@pytest.mark.parametrize("kind", ["int", "numpy-int", "categorical"])
def test_labels_keep_their_type_like_a_scikit_learn_classifier(tiny_params, kind, tmp_path):
    """Integer labels (load_digits' y) come back as ints from classes_ and predict, in numeric
    order (2 before 10); sklearn's scorers then work, and so do a save and a load."""
    import pandas as pd
    from sklearn.metrics import accuracy_score

    from transferkit import load, save

    images, names = make_images(6, 32)
    codes = {"blue": 2, "green": 10, "red": 7}
    y = {"int": [codes[n] for n in names], "numpy-int": np.array([codes[n] for n in names]),
         "categorical": pd.Categorical([codes[n] for n in names])}[kind]
    params = dict(tiny_params, strategy="pixels")
    clf = ImageClassifier(**params).fit(images, y)
    assert list(clf.classes_) == [2, 7, 10] and clf.classes_.dtype.kind == "i"
    predicted = clf.predict(images)
    assert predicted.dtype.kind == "i" and set(predicted) <= {2, 7, 10}
    assert accuracy_score(np.asarray(y), predicted) == clf.score(images, y)
    for scoring in ("accuracy", "f1_macro", "roc_auc_ovr"):
        scores = cross_val_score(ImageClassifier(**params), images, y, cv=StratifiedKFold(2), scoring=scoring, error_score="raise")
        assert np.all(np.isfinite(scores)), scoring
    save(clf, tmp_path / "model")
    loaded = load(tmp_path / "model")
    assert list(loaded.classes_) == [2, 7, 10]
    np.testing.assert_array_equal(loaded.predict(images), predicted)


def test_string_labels_stay_strings_and_mixed_labels_are_refused(tiny_params):
    images, names = make_images(4, 32)
    clf = ImageClassifier(**dict(tiny_params, strategy="pixels")).fit(images, names)
    assert clf.classes_.dtype.kind == "U"
    mixed = [1 if n == "red" else n for n in names]
    with pytest.raises(DataError, match="one type of class label"):
        ImageClassifier(**dict(tiny_params, strategy="pixels")).fit(images, mixed)
