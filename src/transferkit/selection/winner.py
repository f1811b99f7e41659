"""The one winner rule: compare candidates image by image, and within the noise follow the playbook.

Every schedule ends here (scikit-learn's ``_select_best_index``; successive halving passes the
last round's candidates, as ``HalvingGridSearchCV`` overrides it to look at its last iteration
only). Two means over 30-40 held-out images cannot tell candidates apart (one image is 2.5-3.3
points), so the rule reads the evidence the engine kept, the held-out outcome of every image:

1. **The best**: the highest accuracy on the images every candidate was scored on (the held-out
   fifth in ``auto``, every image in ``compare``). A trained network's score also chose its best
   epoch, so it counts :data:`NETWORK_MARGIN` less.
2. **The tie**: each other candidate is compared with the best on the images *both* were scored
   on (all the images, and every repeat, for the cheap candidates of a small set), by the mean of
   the per-image differences and its standard error. A candidate within :data:`TIE_STANDARD_ERRORS`
   standard errors of the best is not measurably worse: the scores cannot separate them.
3. **The choice** among the tied: the playbook's order for the data size (:func:`playbook_order`:
   frozen features and a linear classifier first), then the smaller difference, then the earlier
   candidate. This is the one-standard-error rule (Hastie, Tibshirani & Friedman, *The Elements of
   Statistical Learning*, 7.10): the simplest model whose score is within one standard error of
   the best, on paired differences rather than two means.

Averaging the tied candidates' probabilities is the alternative the issue names; it is not the
rule because an average of several candidates is not one saved network (a feature classifier and
an RBF kernel machine cannot be folded into one head), and ``benchmarks/winner_rule.py`` measures
it against the rule with the engine's out-of-fold probabilities and the test parts
(``benchmarks/RESULTS.md``, "The winner rule").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from transferkit.selection.results import Results, Trial

TIE_STANDARD_ERRORS = 1.0
"""Candidates within this many standard errors of the paired difference from the best tie."""
NETWORK_MARGIN = 0.01
"""A trained network's score also chose its best epoch (slightly optimistic): it counts this much
less in every comparison."""
SMALL_DATA = 1_000
"""Below this many images the playbook ranks pixels before a trained network (the rules'
``small_data`` threshold, :class:`transferkit.advise.AdviceThresholds`)."""
KIND_WORDS = {"features": "frozen features + a linear classifier", "pixels": "a kernel machine on the pixels",
              "network": "a trained network"}


def playbook_order(n_images: int) -> tuple[str, ...]:
    """The kinds of candidate (:attr:`Candidate.kind`) in the playbook's order for ``n_images``:
    frozen features + a linear classifier first (cheap, calibrated, the recipe for small data);
    then, on small data, the pixels before a network, and on larger data the network first."""
    return ("features", "pixels", "network") if n_images < SMALL_DATA else ("features", "network", "pixels")


@dataclass(frozen=True)
class Paired:
    """The mean per-image accuracy difference (best - other) on the images both were scored on."""

    difference: float
    standard_error: float
    n_images: int

    @property
    def tied(self) -> bool:
        return self.difference <= TIE_STANDARD_ERRORS * self.standard_error + 1e-12


@dataclass
class Decision:
    """What the rule chose and why: the chosen trial, the best-scoring one, the tied set (with
    each one's paired comparison against the best) and one sentence for the reasons."""

    chosen: Trial
    best: Trial
    tied: list[Trial] = field(default_factory=list)
    paired: dict[int, Paired] = field(default_factory=dict, repr=False)
    reason: str = ""


def paired_difference(a: np.ndarray, b: np.ndarray) -> Paired:
    """Paired comparison of two (repeats, n_images) outcome arrays (NaN: not scored): per image,
    the mean over the repeats both scored of ``a - b``; then the mean over images and its
    standard error (images are the independent units; repeats of one image are not)."""
    both = ~np.isnan(a) & ~np.isnan(b)
    count = both.sum(axis=0)
    shared = count > 0
    if not shared.any():
        return Paired(0.0, math.inf, 0)
    differences = np.where(both, a - b, 0.0).sum(axis=0)[shared] / count[shared]
    n = len(differences)
    error = float(differences.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return Paired(float(differences.mean()), error, n)


def choose(results: Results, trials: Sequence[Trial] | None = None) -> Decision:
    """The winner among ``trials`` (default: every trial of ``results``); see the module docstring.

    With no trial measured, the first one (the budget allowed nothing: it is fitted unmeasured).
    """
    pool = list(results.trials.values()) if trials is None else list(trials)
    measured = [t for t in pool if t.scores]
    if not measured:
        return Decision(chosen=pool[0], best=pool[0], reason="no candidate was measured")
    others = any(t.candidate.kind != "network" for t in measured)
    outcome = {id(t): results.correct(t.candidate) - (NETWORK_MARGIN if others and t.candidate.kind == "network" else 0.0)
               for t in measured}
    shared = np.logical_and.reduce([~np.isnan(outcome[id(t)]) for t in measured])

    def reference(trial: Trial) -> float:
        values = outcome[id(trial)]
        return float(np.mean(values[shared])) if shared.any() else float(np.nanmean(values))

    best = max(measured, key=reference)  # max keeps the first of equals: the earlier candidate
    paired = {id(t): paired_difference(outcome[id(best)], outcome[id(t)]) for t in measured}
    paired[id(best)] = Paired(0.0, 0.0, int(shared.sum()))
    tied = [t for t in measured if paired[id(t)].tied]
    order = playbook_order(results.n_images)
    chosen = min(tied, key=lambda t: (order.index(t.candidate.kind), paired[id(t)].difference, measured.index(t)))
    return Decision(chosen=chosen, best=best, tied=tied, paired=paired, reason=_reason(results, chosen, best, tied, paired, order))


def _reason(results: Results, chosen: Trial, best: Trial, tied: list[Trial], paired: dict[int, Paired], order) -> str:
    n = results.n_images
    shared = paired[id(best)].n_images
    score = f"{best.candidate.label} scored best on the {shared:,} images every candidate was scored on"
    if len(tied) == 1:
        runner = sorted((p.difference, p.standard_error) for key, p in paired.items() if key != id(best))
        if not runner:
            return f"{score}, the only candidate measured"
        difference, error = runner[0]
        return (f"{score}, ahead of every other candidate beyond the noise (the closest by {difference:.3f} per image, "
                f"paired standard error {error:.3f})")
    others = ", ".join(t.candidate.label for t in tied if t is not chosen)
    ranking = " > ".join(KIND_WORDS[kind] for kind in order)
    if chosen is best:
        return (f"{score}; {others} within {TIE_STANDARD_ERRORS:g} paired standard error of it: the playbook's order for "
                f"{n:,} images ({ranking}) keeps it")
    pair = paired[id(chosen)]
    more = len(tied) - 2
    also = f", as {'is' if more == 1 else 'are'} {more} other{'s' if more > 1 else ''}" if more else ""
    within = "of those, it did best against the best image by image" if chosen.candidate.kind == best.candidate.kind else \
        f"it prefers {KIND_WORDS[chosen.candidate.kind]}"
    return (f"{score}, but {chosen.candidate.label} is within {TIE_STANDARD_ERRORS:g} paired standard error of it "
            f"({pair.difference:+.3f} per image, standard error {pair.standard_error:.3f} over {pair.n_images:,} images){also}: "
            f"the scores cannot tell them apart, and the playbook's order for {n:,} images ({ranking}) decides; {within}")
