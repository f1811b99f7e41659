"""Every ``ImageClassifier`` parameter's default, in one table (no imports: any layer may read it).

The estimator's signature, the training loop's ``TrainConfig``, the command line's options and
the candidate builder of :mod:`transferkit.selection` read their defaults from here, the way
nanoGPT keeps every default at the top of ``train.py``: a default changed here changes
everywhere. The constraints of each parameter are declared once too, beside the strategies that
define the valid names (:data:`transferkit.strategies.parameters.PARAMETER_CONSTRAINTS`).
"""

from __future__ import annotations

from types import MappingProxyType

AUTO = "auto"

DEFAULTS = MappingProxyType({
    "backbone": "efficientnet_lite0",
    "strategy": AUTO,
    "freeze": AUTO,
    "epochs": 10,
    "lr": 1e-3,
    "backbone_lr_factor": AUTO,
    "image_size": AUTO,
    "augment": AUTO,
    "batch_size": 32,
    "val_fraction": 0.15,
    "patience": 3,
    "class_weight": AUTO,
    "dropout": 0.2,
    "head_init": "random",
    "label_smoothing": 0.1,
    "regularization": AUTO,
    "sampling": AUTO,
    "weight_decay": 1e-4,
    "seed": 0,
    "weights": None,
    "skip_bad": False,
    "cache_dir": None,
    "checkpoint_dir": None,
    "resume": False,
    "device": AUTO,
    "precision": AUTO,
    "C": AUTO,
    "feature_views": 0,
    "prefix_views": 0,
    "budget_minutes": AUTO,
    "symmetries": AUTO,
    "feature_layers": AUTO,
    "verbose": False,
})
"""``ImageClassifier``'s parameters and their defaults, in the signature's order."""
