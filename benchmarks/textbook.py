"""The textbook transfer-learning loop: the baseline transferkit is measured against.

Written the way the usual PyTorch transfer-learning tutorial writes it, habits included:
torchvision ``ImageFolder`` decodes and resizes every image again on every epoch in
DataLoader workers, fp32, the default (contiguous) memory format, ``model.train()`` for the
whole network, constant learning rates, no label smoothing, no gradient clipping.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from transferkit.backbones import create_backbone


def run_textbook(
    train_dir: str,
    test_dir: str,
    *,
    epochs: int = 3,
    image_size: int = 224,
    freeze_stages: int | None = 3,
    batch_size: int = 32,
    lr: float = 1e-3,
    num_workers: int = 2,
    seed: int = 0,
) -> dict:
    """Fine-tune EfficientNet-Lite0 on ``train_dir`` and score it on ``test_dir`` after every epoch.

    ``freeze_stages``: the stem and the first N ``model.blocks`` get no gradient; None freezes
    every layer but the classifier (head only), 0 freezes nothing.

    Test evaluation is kept off the clock: ``curve[i]["seconds"]`` is the wall time since the
    start (data set, model, training) at the end of epoch i, minus the time spent evaluating.
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    normalize = transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    train_transform = transforms.Compose([
        transforms.Resize((image_size, image_size)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomAffine(10, translate=(0.1, 0.1)),
        transforms.ToTensor(),
        normalize,
    ])
    test_transform = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor(), normalize])
    train_set = datasets.ImageFolder(train_dir, train_transform)
    test_set = datasets.ImageFolder(test_dir, test_transform)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=num_workers)
    test_loader = DataLoader(test_set, batch_size=batch_size, shuffle=False, num_workers=num_workers)

    # A tutorial calls timm.create_model("tf_efficientnet_lite0", pretrained=True, num_classes=K),
    # which downloads the weights; create_backbone loads the same ImageNet weights from the
    # offline package, so both sides of the benchmark start from identical weights.
    model, _ = create_backbone("efficientnet_lite0", num_classes=len(train_set.classes))
    if freeze_stages is None:
        frozen = [module for name, module in model.named_children() if name != "classifier"]
    else:
        frozen = [model.conv_stem, model.bn1, *model.blocks[:freeze_stages]] if freeze_stages > 0 else []
    for module in frozen:
        for parameter in module.parameters():
            parameter.requires_grad = False

    head = list(model.classifier.parameters())
    backbone = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("classifier.")]
    groups = [{"params": head, "lr": lr}] + ([{"params": backbone, "lr": lr * 0.1}] if backbone else [])
    optimizer = torch.optim.AdamW(groups)
    criterion = nn.CrossEntropyLoss()

    curve, epoch_seconds, images_seen, off_clock = [], [], 0, 0.0
    for epoch in range(epochs):
        # Like most tutorials: model.train() puts the frozen layers' BatchNorm in train mode too,
        # so their running statistics drift to the new data (transferkit keeps them in eval mode).
        model.train()
        epoch_started = time.perf_counter()
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            images_seen += len(labels)
        epoch_seconds.append(time.perf_counter() - epoch_started)

        eval_started = time.perf_counter()
        accuracy = evaluate(model, test_loader)
        eval_seconds = time.perf_counter() - eval_started
        curve.append({"epoch": epoch + 1, "seconds": eval_started - started - off_clock, "test_accuracy": accuracy})
        off_clock += eval_seconds

    fit_seconds = curve[-1]["seconds"]
    return {
        "train_images": len(train_set),
        "test_images": len(test_set),
        "epoch_seconds": epoch_seconds,
        "train_images_per_second": images_seen / sum(epoch_seconds),
        # The last evaluation is the final model's inference on the test set (decoding included).
        "inference_images_per_second": len(test_set) / eval_seconds,
        "fit_seconds": fit_seconds,
        "total_seconds": fit_seconds + eval_seconds,
        "test_accuracy": curve[-1]["test_accuracy"],
        "curve": curve,
    }


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> float:
    """Accuracy of ``model`` on ``loader``."""
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += (model(images).argmax(1) == labels).sum().item()
        total += len(labels)
    return correct / total
