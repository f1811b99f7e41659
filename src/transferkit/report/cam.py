"""Class activation heatmaps: where in the image the network found evidence for a class.

Grad-CAM (Selvaraju et al. 2017) through the maintained ``pytorch-grad-cam`` package (``grad-cam``
on PyPI), on the backbone's last stage (:func:`transferkit.backbones.backbone_stages`: the
``neck`` of an EfficientNet, the last block group otherwise). That layer has the most
class-specific features but the coarsest grid (input / 32: 7 x 7 at 224 px), so the heatmap
is smooth; it is upsampled to the image size.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from transferkit.backbones import Preprocessing, backbone_stages
from transferkit.errors import ConfigError
from transferkit.training.inputs import pixels_to_tensor


def last_stage_layer(model: nn.Module) -> nn.Module:
    """The module whose output Grad-CAM weighs: the last module of the backbone's last stage."""
    _, modules = backbone_stages(model)[-1]
    return modules[-1]


def activation_maps(
    model: nn.Module,
    pixels: np.ndarray,
    preprocessing: Preprocessing,
    targets: np.ndarray | list[int] | None = None,
    *,
    batch_size: int = 16,
) -> np.ndarray:
    """Grad-CAM heatmaps, float32 (N, H, W) in [0, 1], one per image of uint8 (N, H, W, 3) ``pixels``.

    Parameters
    ----------
    model : torch.nn.Module
        A fitted timm network (``classifier.model_``); used in eval mode on the CPU in fp32.
    targets : sequence of int, optional
        The class index to explain per image (default: the predicted class).
    """
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as exc:  # pragma: no cover - the dev and report extras install it
        raise ConfigError("heatmaps need pytorch-grad-cam; install it with: pip install 'transferkit[report]'") from exc

    if not callable(getattr(model, "group_matcher", None)):
        raise ConfigError(
            f"heatmaps need a convolutional network with stages; this model ({type(model).__name__}, e.g. strategy "
            "pixels: an SVM on the raw pixels) has none."
        )
    model = model.cpu().float().eval()
    maps = [np.zeros((0, *pixels.shape[1:3]), np.float32)]
    mean = torch.tensor(preprocessing.mean).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, -1, 1, 1)
    with GradCAM(model=model, target_layers=[last_stage_layer(model)]) as cam:
        for start in range(0, len(pixels), batch_size):
            batch = (pixels_to_tensor(pixels[start : start + batch_size]).float() / 255.0 - mean) / std
            # The feature strategies leave every parameter frozen (requires_grad False); a
            # gradient-requiring input keeps the graph that Grad-CAM differentiates.
            batch.requires_grad_(True)
            if targets is None:
                with torch.no_grad():
                    chosen = model(batch).argmax(dim=1).tolist()
            else:
                chosen = [int(t) for t in targets[start : start + batch_size]]
            maps.append(cam(input_tensor=batch, targets=[ClassifierOutputTarget(t) for t in chosen]).astype(np.float32))
    # Leave no gradient buffers behind: the model may be served or saved next.
    model.zero_grad(set_to_none=True)
    return np.concatenate(maps)


def overlay(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45, colormap: str = "jet") -> np.ndarray:
    """uint8 RGB ``image`` with ``heatmap`` (values in [0, 1], same height and width) blended on top."""
    from matplotlib import colormaps

    if heatmap.shape != image.shape[:2]:
        raise ConfigError(f"heatmap shape {heatmap.shape} differs from the image's {image.shape[:2]}.")
    colours = colormaps[colormap](np.clip(heatmap, 0, 1))[..., :3]
    blended = (1 - alpha) * image.astype(np.float32) / 255.0 + alpha * colours
    return np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8)
