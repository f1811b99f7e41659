"""Test-time views for a saved ELPV ensemble's network: its probabilities averaged over flips and turns (issue 32).

The go/no-go measurement behind auto's test-time-augmented ensemble (benchmarks/RESULTS.md,
twelfth session). Takes a model folder that ``fit elpv:train`` wrote as an ``ensemble`` and
scores, on auto's held-out fifth of ``elpv:train`` (rebuilt as ``search_auto`` builds it: exact
copies grouped, seed 0) and on ``elpv:test``: the feature member, the network with 1, 4 (flips) or 8
(flips and quarter turns) views, and the ensemble with each. On the held-out fifth only the
network's rows are clean: the saved feature member was refitted on every training image. About 5
minutes on 2 cores. No smoke test: it reads ELPV's own images and a 60-minute fit's model.

    python benchmarks/network_views.py runs/elpv60 --json runs/bench/network_views.json
"""
import argparse
import json

import numpy as np
import torch

from transferkit.data import content_digests, duplicate_groups, resolve_data
from transferkit.data.pixels import load_pixels
from transferkit.data.views import SYMMETRIES, view
from transferkit.evaluation.metrics import balanced_accuracy
from transferkit.persistence import load_model
from transferkit.selection.folds import holdout_folds
from transferkit.training.inputs import predict_logits
from transferkit.training.runtime import prediction_runtime

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("model", help="an ensemble model folder fitted on elpv:train")
parser.add_argument("--json", default=None, help="write the figures as JSON")
args = parser.parse_args()

classifier = load_model(args.model)
model, preprocessing, side = classifier.model_, classifier.preprocessing_, classifier.image_size_
runtime = prediction_runtime("auto", "auto")


def probabilities(module, pixels, symmetries):
    """``module``'s class probabilities on uint8 ``pixels``, averaged over the views of ``symmetries``."""
    return np.mean([torch.softmax(predict_logits(module, view(pixels, name), preprocessing, runtime), 1).numpy()
                    for name in SYMMETRIES[symmetries]], axis=0)


def scores(pixels, targets):
    network = {name: probabilities(model.network, pixels, name) for name in SYMMETRIES}
    ensemble = torch.softmax(predict_logits(model, pixels, preprocessing, runtime), 1).numpy()
    features = 2 * ensemble - network[model.network_symmetries]  # the ensemble is the mean of its members
    rows = {"features": features, **{f"network, {name}": p for name, p in network.items()},
            **{f"ensemble, network {name}": (p + features) / 2 for name, p in network.items()}}
    out = {}
    for label, p in rows.items():
        predicted = p.argmax(1)
        out[label] = {"accuracy": float(np.mean(predicted == targets)), "balanced": float(balanced_accuracy(targets, predicted)),
                      "binary": float(np.mean((predicted >= 2) == (targets >= 2)))}  # classes 0.67 and 1.00: defective
    return out


train = resolve_data("elpv:train")
targets = train.targets()
held_out = np.sort(holdout_folds(targets, duplicate_groups(train, content_digests(train)), 0)[0][1])
test = resolve_data("elpv:test")
report = {"held-out": scores(load_pixels(train, side)[held_out], targets[held_out]),
          "test": scores(load_pixels(test, side), test.targets())}
for part, rows in report.items():
    for label, row in rows.items():
        print(f"{part:9s} {label:28s} accuracy {row['accuracy']:.4f}  balanced {row['balanced']:.4f}  binary {row['binary']:.4f}")
if args.json:
    with open(args.json, "w") as handle:
        json.dump(report, handle, indent=2)
