"""The selection wing: every choice between ways to fit, made one way (scikit-learn's ``model_selection``).

- :mod:`~transferkit.selection.candidates`: :class:`Candidate` (a strategy and its settings; the
  estimator fits ``candidate.settings()``) and the one builder from estimator parameters;
- :mod:`~transferkit.selection.folds`: identical folds for every candidate (``make_folds``);
- :mod:`~transferkit.selection.engine`: :class:`Engine`, the one evaluation of (candidate, fold)
  pairs through each strategy's ``score``, in a budget, through joblib or Dask;
- :mod:`~transferkit.selection.cost`: the one cost model (:class:`Speeds`, timed once);
- :mod:`~transferkit.selection.results`: :class:`Results`, per-fold scores, intervals and the
  out-of-fold class probabilities of every image (``results.oof_proba(candidate)``);
- :mod:`~transferkit.selection.winner`: :func:`choose`, the one winner rule (paired, per image);
- schedules: ``every_fold`` (``compare``, ``fit --cv``), ``successive_halving`` (``advise
  --measure``), ``learning_curve``, and ``auto``'s rounds (:mod:`~transferkit.selection.auto`);
- :mod:`~transferkit.selection.compare` and :mod:`~transferkit.selection.race`: those schedules as
  cross-validation tables.
"""

from transferkit.selection.candidates import Candidate, candidate_from_params, candidates_for, with_params
from transferkit.selection.engine import Arena, Engine
from transferkit.selection.folds import make_folds
from transferkit.selection.results import CVResult, FoldScore, Results, Trial
from transferkit.selection.schedules import LearningCurve, every_fold, learning_curve, successive_halving
from transferkit.selection.winner import Decision, choose

__all__ = [
    "Arena", "CVResult", "Candidate", "Decision", "Engine", "FoldScore", "LearningCurve", "Results", "Trial",
    "candidate_from_params", "candidates_for", "choose", "every_fold", "learning_curve", "make_folds", "successive_halving",
    "with_params",
]
