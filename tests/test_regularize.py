"""Issue 32: each regulariser, switched on, is used in training (timm's Mixup/cutmix, random
erasing, stochastic depth, the weight average; class-balanced sampling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY_BACKBONE, make_images
from transferkit import ImageClassifier
from transferkit.backbones import create_backbone
from transferkit.strategies.network import configure_network
from transferkit.training import loop
from transferkit.training.inputs import TrainData
from transferkit.training.loop import TrainConfig, train_model
from transferkit.training.regularize import REGULARIZATION, BatchMixer, Regularization, balanced_sampler, soft_target_loss
from transferkit.training.runtime import resolve_runtime

CPU = resolve_runtime("cpu", "fp32")


def _data(n_per_class=6, size=32):
    images, labels = make_images(n_per_class, size)
    return images, np.searchsorted(sorted(set(labels)), labels)


def _train(tiny_weights, setting: Regularization, *, val=True, **config):
    model, preprocessing = create_backbone(TINY_BACKBONE, num_classes=3, weights_path=tiny_weights,
                                           drop_path_rate=setting.drop_path_rate)
    head, backbone, _ = configure_network(model, "full", freeze_stages=None, backbone_lr_factor=0.1)
    images, targets = _data()
    validation = (images[::3], targets[::3]) if val else None
    data = TrainData((images, targets), validation, preprocessing)
    settings = dict(epochs=2, batch_size=6, lr=1e-2, patience=10, regularization=setting) | config
    return model, train_model(model, (head, backbone), data, config=TrainConfig(**settings), runtime=CPU, verbose=False)


def test_mixed_targets_reach_the_loss(tiny_weights, monkeypatch):
    seen = []
    real = loop.soft_target_loss
    monkeypatch.setattr(loop, "soft_target_loss", lambda logits, soft, **kw: seen.append(soft.clone()) or real(logits, soft, **kw))
    _train(tiny_weights, Regularization(mixup_alpha=0.4, cutmix_alpha=1.0, mix_prob=1.0))
    assert seen, "the soft-target loss was never called"
    mixed = torch.cat(seen)
    assert ((mixed > 0.01) & (mixed < 0.99)).any(), "no target was mixed"
    np.testing.assert_allclose(mixed.sum(dim=1).numpy(), 1.0, atol=1e-5)


def test_soft_target_loss_equals_torch_for_one_hot_targets():
    logits, targets = torch.randn(8, 3), torch.randint(0, 3, (8,))
    one_hot = torch.nn.functional.one_hot(targets, 3).float()
    weights = torch.tensor([1.0, 2.0, 3.0])
    for smoothing in (0.0, 0.1):
        expected = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)(logits, targets)
        assert soft_target_loss(logits, one_hot, label_smoothing=smoothing).item() == pytest.approx(expected.item(), rel=1e-6)
    expected = torch.nn.CrossEntropyLoss(weight=weights)(logits, targets)
    assert soft_target_loss(logits, one_hot, class_weights=weights).item() == pytest.approx(expected.item(), rel=1e-6)


def test_random_erasing_changes_training_images_only_where_asked():
    torch.manual_seed(0)
    batch = torch.zeros(4, 3, 16, 16)
    erased, soft = BatchMixer(Regularization(random_erasing=1.0), 3)(batch.clone(), torch.tensor([0, 1, 2, 0]))
    assert (erased != 0).any() and soft.shape == (4, 3)
    kept, _ = BatchMixer(Regularization(random_erasing=1.0), 3, images=False)(batch.clone(), torch.tensor([0, 1, 2, 0]))
    assert torch.equal(kept, batch)  # cached activations are never erased


def test_stochastic_depth_reaches_the_network(tiny_weights):
    model, _ = create_backbone(TINY_BACKBONE, num_classes=3, weights_path=tiny_weights, drop_path_rate=0.2)
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) > 0


def test_the_weight_average_differs_from_the_raw_weights_and_the_better_is_kept(tiny_weights):
    model, result = _train(tiny_weights, Regularization(ema_decay=0.99), epochs=3)
    ema = result.ema
    assert ema["kept"] in ("ema", "raw")
    assert ema["ema"]["val_loss"] != ema["raw"]["val_loss"]  # the average is other weights
    better = min(ema["ema"]["val_loss"], ema["raw"]["val_loss"])
    assert ema[ema["kept"]]["val_loss"] == better


def test_balanced_sampling_draws_rare_classes_as_often():
    targets = np.array([0] * 90 + [1] * 10)
    drawn = np.array(list(balanced_sampler(targets, 2000, seed=0)))
    share = np.mean(targets[drawn] == 1)
    assert 0.4 < share < 0.6  # plain shuffling gives 0.1


def test_presets_through_the_estimator_are_recorded(tiny_params):
    images, labels = make_images(4, 32)
    clf = ImageClassifier(**dict(tiny_params, strategy="full", regularization="strong", sampling="balanced")).fit(images, labels)
    recorded = clf.history_["regularization"]
    assert recorded["preset"] == "strong" and recorded["mixup_alpha"] == REGULARIZATION["strong"].mixup_alpha
    assert clf.history_["sampling"] == "balanced" and clf.history_["ema"]["kept"] in ("ema", "raw")
