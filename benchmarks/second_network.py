"""A second network beside a saved ELPV ensemble: does averaging two networks lift the ensemble? (issue 32)

The measurement behind auto's second-network round (benchmarks/RESULTS.md, thirteenth session).
Takes the model folder that ``fit elpv:train --budget-minutes 60`` wrote as an ``ensemble`` of one
network and a feature classifier, and a second network fitted on ``elpv:train`` with
``fit --strategy full`` (another seed, its own validation fifth: as long a schedule as the first,
which auto's round could not afford on a slower machine). Scores on ``elpv:test`` only (the
ensemble's feature member was refitted on every training image, so no held-out rows of it are
clean): each member, the saved ensemble, the ensemble with the two networks' mean as its network
member (what ``NetworkAverage`` does) and the plain mean of all three members. These are read
off the test images: a measurement of the lever, not a choice. About 3 minutes on 2 cores. No
smoke test: it reads ELPV's own images and two long fits' models.

    python benchmarks/second_network.py runs/elpv60 runs/twin --json runs/bench/second_network.json
"""
import argparse
import json

import numpy as np
import torch

from transferkit.data import resolve_data
from transferkit.data.pixels import load_pixels
from transferkit.evaluation.metrics import balanced_accuracy
from transferkit.persistence import load_model
from transferkit.training.inputs import predict_logits
from transferkit.training.runtime import prediction_runtime

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("ensemble", help="an ensemble model folder fitted on elpv:train (one network)")
parser.add_argument("network", help="a full network model folder fitted on elpv:train at the same side")
parser.add_argument("--json", default=None, help="write the figures as JSON")
args = parser.parse_args()

ensemble, second = load_model(args.ensemble), load_model(args.network)
side = ensemble.image_size_
if second.image_size_ != side or second.preprocessing_ != ensemble.preprocessing_:
    parser.error(f"the second network must read the ensemble's pixels: {second.image_size_} px against {side} px")
runtime = prediction_runtime("auto", "auto")
test = resolve_data("elpv:test")
pixels, targets = load_pixels(test, side), test.targets()


def probabilities(module) -> np.ndarray:
    """``module``'s class probabilities on the test pixels (n_test, K)."""
    return torch.softmax(predict_logits(module, pixels, ensemble.preprocessing_, runtime), 1).numpy()


saved = probabilities(ensemble.model_)
first, other = probabilities(ensemble.model_.network), probabilities(second.model_)
features = 2 * saved - first  # the saved ensemble is the mean of its two members
rows = {"network 1 (the ensemble's)": first, "network 2 (fit --strategy full, seed 1)": other, "feature member": features,
        "networks 1 + 2": (first + other) / 2, "ensemble as saved (network 1 + features)": saved,
        "ensemble, network member = mean of networks 1 and 2": ((first + other) / 2 + features) / 2,
        "mean of all three members": (first + other + features) / 3}
report = {}
for label, p in rows.items():
    predicted = p.argmax(1)
    report[label] = {"accuracy": float(np.mean(predicted == targets)), "balanced": float(balanced_accuracy(targets, predicted)),
                     "binary": float(np.mean((predicted >= 2) == (targets >= 2)))}  # classes 0.67 and 1.00: defective
    row = report[label]
    print(f"{label:55s} accuracy {row['accuracy']:.4f}  balanced {row['balanced']:.4f}  binary {row['binary']:.4f}")
if args.json:
    with open(args.json, "w") as handle:
        json.dump(report, handle, indent=2)
