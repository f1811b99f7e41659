"""The winner rule measured: the playbook's order within the tie against averaging the tied candidates.

For each data set (``datasets.py``), on its training part only:

1. the selection engine scores ``auto``'s cheap candidates (svm, logistic, svm on multi-layer
   features, pixels, svm and logistic with flip-averaged features) by 2 x 5-fold cross-validation
   (the schedule ``auto`` now uses on small sets), and :func:`transferkit.selection.choose` picks;
2. three ways to decide are then fitted on the whole training part and scored on the test part:
   - ``rule``: the chosen candidate (the playbook's order within one paired standard error);
   - ``average``: the mean of the tied candidates' predicted probabilities (one model per tied
     candidate; not a single saved network);
   - ``old``: the previous rule, the highest mean held-out accuracy on the first fold alone,
     ties within 0.002 to the earlier candidate;
   and, for reference, every candidate alone, and the out-of-fold accuracy of the average (from
   the engine's ``oof_proba``: what the rule could have measured without the test part).

    python benchmarks/winner_rule.py --sets lfw letters textures --json runs/bench/winner_rule.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datasets import BUILDERS, materialise  # noqa: E402

OLD_TIE = 0.002


def cheap_candidates(size: int, pixel_side: int):
    from transferkit.selection import Candidate

    return [
        Candidate("svm", size, "baseline"), Candidate("logistic", size, "same features"),
        Candidate("svm", size, "multi-layer", feature_layers="stages"), Candidate("pixels", pixel_side, "pixels"),
        Candidate("svm", size, "flips", symmetries="flips"), Candidate("logistic", size, "flips", symmetries="flips"),
    ]


def measure(name: str, bench, base: dict) -> dict:
    from transferkit import ImageClassifier
    from transferkit.data import resolve_data
    from transferkit.selection import choose
    from transferkit.selection.compare import cross_validate

    train, test = resolve_data(bench.train), resolve_data(bench.test)
    side = int(np.median([np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(p)).shape[0] for p in train.sources[:20]]))
    candidates = cheap_candidates(224, max(16, min(32, side)))
    started = time.perf_counter()
    engine, trials, decision = cross_validate(train, candidates, cv=5, repeats=2, base=base)
    cv_seconds = time.perf_counter() - started
    # the old rule: first fold only, best mean, ties within 0.002 to the earlier candidate
    first = [t.scores[t.folds.index(0)] for t in trials]
    old = next(t for t, s in zip(trials, first) if s >= max(first) - OLD_TIE)

    def fitted(candidate):
        params = {**base, **dict(candidate.params), "strategy": candidate.strategy, "image_size": candidate.image_size,
                  "symmetries": candidate.symmetries, "feature_layers": candidate.feature_layers}
        return ImageClassifier(**params).fit(train)

    labels = np.asarray(test.labels).astype(str)
    probabilities, alone = {}, {}
    for trial in trials:
        model = fitted(trial.candidate)
        probabilities[trial.candidate] = model.predict_proba(test)
        alone[trial.candidate.label] = float((np.asarray(model.classes_).astype(str)[probabilities[trial.candidate].argmax(1)] == labels).mean())
        classes = np.asarray(model.classes_).astype(str)
    tied = [t.candidate for t in decision.tied]
    average = np.mean([probabilities[c] for c in tied], axis=0)
    oof = np.nanmean([engine.results.oof_proba(c) for c in tied], axis=0)
    targets = engine.arena.targets
    return {
        "set": name, "n_train": len(train), "n_test": len(test), "cv_seconds": round(cv_seconds, 1),
        "cv_accuracy": {t.candidate.label: round(float(np.mean(t.scores)), 4) for t in trials},
        "first_fold": {t.candidate.label: round(s, 4) for t, s in zip(trials, first)},
        "tied": [c.label for c in tied], "rule": decision.chosen.candidate.label, "reason": decision.reason,
        "old": old.candidate.label,
        "test": {"rule": alone[decision.chosen.candidate.label], "old": alone[old.candidate.label],
                 "average": float((classes[average.argmax(1)] == labels).mean()), "alone": alone},
        "oof": {"rule": float(np.mean(engine.results.correct(decision.chosen.candidate))),
                "average": float((oof.argmax(1) == targets).mean())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", choices=list(BUILDERS), default=["lfw", "letters", "textures"])
    parser.add_argument("--data-root", default="runs/bench/data")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from transferkit.training.allocator import keep_freed_memory

    keep_freed_memory()
    base = {"seed": 0, "device": "cpu"}
    rows = []
    for name, bench in materialise(args.data_root, args.sets).items():
        row = measure(name, bench, base)
        rows.append(row)
        print(f"{name}: rule {row['rule']} {row['test']['rule']:.3f} | average of {len(row['tied'])} tied "
              f"{row['test']['average']:.3f} | old {row['old']} {row['test']['old']:.3f} | oof rule {row['oof']['rule']:.3f} "
              f"average {row['oof']['average']:.3f}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
