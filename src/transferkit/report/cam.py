"""Class activation heatmaps: where in the image the network found evidence for a class.

Grad-CAM (Selvaraju et al. 2017) through the maintained ``pytorch-grad-cam`` package (``grad-cam``
on PyPI), on the deepest stage of the backbone (:func:`transferkit.backbones.backbone_stages`)
whose output grid is still at least :data:`MIN_GRID` cells a side *at the input size used*.
The last stage has the most class-specific features but the coarsest grid (input / 32): 7 x 7
at 224 px, 2 x 2 at 64 px and 1 x 1 at 32 px, where every map was one flat tint. So at 224 px
the maps come from the ``neck``, at 32 px from ``stage2`` (8 x 8). A map that is still flat (no
channel's weighted activation rises above the rest: Grad-CAM's ReLU leaves zeros) is retried one stage
earlier, and if it is flat there too it is reported as "no useful map", never drawn as a tint.
Maps are upsampled to the image size and drawn with :data:`COLORMAP` (:func:`colour_scale`).

What is differentiated is the class's logit *margin* (:class:`MarginTarget`): its logit minus the
mean of the others. A softmax does not change when the same amount is added to every logit, so
only such differences carry the evidence; a bare logit can carry none. The feature strategies'
binary heads show it: one decision value d is folded into logits ``[0, d]``, and class 0's logit,
a constant 0, had no gradient at all, so every image predicted as class 0 got no map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from transferkit.backbones import Preprocessing, backbone_stages
from transferkit.backbones.multilayer import inner_network
from transferkit.errors import ConfigError, MissingExtraError
from transferkit.training.inputs import pixels_to_tensor


MIN_GRID = 6
"""Fewest cells a side the Grad-CAM layer's output may have (the neck's is 7 at 224 px)."""

FLAT = 0.05
"""A map whose values span less than this (of [0, 1]) shows nothing: "no useful map"."""

COLORMAP = "jet"
"""Low evidence blue, high evidence red (the usual Grad-CAM colours)."""


@dataclass(frozen=True)
class Heatmaps:
    """Grad-CAM maps of a batch of images and where they come from.

    ``maps`` is float32 (N, H, W) in [0, 1] (zeros where ``useful`` is False); ``layers`` names
    the stage each map was taken at and ``grids`` that stage's output side at this input size.
    """

    maps: np.ndarray
    useful: np.ndarray
    layers: list[str]
    grids: list[int]

    def describe(self, index: int) -> str:
        """One line for a caption: the stage and its grid, or why there is no map."""
        if not self.useful[index]:
            return (f"no useful heatmap: Grad-CAM's map was flat down to {self.layers[index]}, "
                    "so it cannot show where the network looked")
        side = self.grids[index]
        return f"Grad-CAM at {self.layers[index]} ({side} x {side} grid)"


class MarginTarget:
    """Grad-CAM's target: class ``category``'s logit minus the mean of the other classes' logits.

    Adding one amount to every logit changes no probability, so a map of the bare logit may
    show nothing the prediction depends on (a folded binary head's class 0 is the constant 0);
    the margin is what separates the class from the rest. Called with one image's logits (K,).
    """

    def __init__(self, category: int) -> None:
        self.category = int(category)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        others = torch.cat([logits[..., : self.category], logits[..., self.category + 1 :]], dim=-1)
        return logits[..., self.category] - others.mean(dim=-1)


def last_stage_layer(model: nn.Module) -> nn.Module:
    """The last module of the backbone's last stage (the neck of an EfficientNet)."""
    _, modules = backbone_stages(model)[-1]
    return modules[-1]


def stage_grids(model: nn.Module, image_size: int) -> list[tuple[str, nn.Module, int]]:
    """(stage name, its last module, the side of its output grid) per stage, at ``image_size``."""
    stages = [(name, modules[-1]) for name, modules in backbone_stages(model)]
    sides: dict[str, int] = {}

    def record(name: str):
        def hook(_module, _inputs, output) -> None:  # returns None: the output goes on unchanged
            sides.setdefault(name, int(output.shape[-1]))
        return hook

    hooks = [module.register_forward_hook(record(name)) for name, module in stages]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for hook in hooks:
            hook.remove()
    return [(name, module, sides.get(name, 0)) for name, module in stages]


def cam_stages(model: nn.Module, image_size: int) -> list[tuple[str, nn.Module, int]]:
    """The stages to try, best first: the deepest with a grid of at least :data:`MIN_GRID`
    (the finest if none reaches it), then the one before it."""
    grids = stage_grids(model, image_size)
    wide = [i for i, (_, _, side) in enumerate(grids) if side >= MIN_GRID]
    first = wide[-1] if wide else max(range(len(grids)), key=lambda i: (grids[i][2], i))
    return [grids[i] for i in (first, first - 1) if i >= 0]


def activation_maps(
    model: nn.Module,
    pixels: np.ndarray,
    preprocessing: Preprocessing,
    targets: np.ndarray | list[int] | None = None,
    *,
    batch_size: int = 16,
) -> np.ndarray:
    """Grad-CAM heatmaps, float32 (N, H, W) in [0, 1], one per image of uint8 (N, H, W, 3) ``pixels``
    (:func:`heatmaps` says which are useful and where they come from)."""
    return heatmaps(model, pixels, preprocessing, targets, batch_size=batch_size).maps


def heatmaps(
    model: nn.Module,
    pixels: np.ndarray,
    preprocessing: Preprocessing,
    targets: np.ndarray | list[int] | None = None,
    *,
    batch_size: int = 16,
) -> Heatmaps:
    """Grad-CAM heatmaps of uint8 (N, H, W, 3) ``pixels`` at a layer fine enough for their size.

    Parameters
    ----------
    model : torch.nn.Module
        A fitted timm network (``classifier.model_``); used in eval mode on the CPU in fp32.
    targets : sequence of int, optional
        The class index to explain per image (default: the predicted class).
    """
    _check_model(model)
    model = model.cpu().float().eval()
    n = len(pixels)
    maps = np.zeros((n, *pixels.shape[1:3]), np.float32)
    useful = np.zeros(n, bool)
    layers, grids = [""] * n, [0] * n
    if targets is None and n:
        targets = _predicted(model, pixels, preprocessing, batch_size)
    todo = np.arange(n)
    for name, layer, side in cam_stages(model, int(pixels.shape[1])) if n else []:
        found = _grad_cam(model, layer, pixels[todo], preprocessing, [int(targets[i]) for i in todo], batch_size)
        spread = found.max(axis=(1, 2)) - found.min(axis=(1, 2)) if len(found) else np.zeros(0)
        for index, heatmap, span in zip(todo, found, spread):
            layers[index], grids[index] = name, side
            if span >= FLAT:
                maps[index], useful[index] = heatmap, True
        todo = todo[spread < FLAT]
        if not len(todo):
            break
    return Heatmaps(maps=maps, useful=useful, layers=layers, grids=grids)


def _check_model(model: nn.Module) -> None:
    if not callable(getattr(inner_network(model), "group_matcher", None)):
        raise ConfigError(
            f"heatmaps need a convolutional network with stages; this model ({type(model).__name__}, e.g. strategy "
            "pixels: an SVM on the raw pixels) has none."
        )


def _inputs(pixels: np.ndarray, preprocessing: Preprocessing) -> torch.Tensor:
    mean = torch.tensor(preprocessing.mean).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, -1, 1, 1)
    return (pixels_to_tensor(pixels).float() / 255.0 - mean) / std


def _predicted(model: nn.Module, pixels: np.ndarray, preprocessing: Preprocessing, batch_size: int) -> list[int]:
    chosen: list[int] = []
    with torch.no_grad():
        for start in range(0, len(pixels), batch_size):
            chosen += model(_inputs(pixels[start : start + batch_size], preprocessing)).argmax(dim=1).tolist()
    return chosen


def _grad_cam(model: nn.Module, layer: nn.Module, pixels: np.ndarray, preprocessing: Preprocessing,
              targets: list[int], batch_size: int) -> np.ndarray:
    """Grad-CAM of ``targets`` at ``layer``, float32 (N, H, W) in [0, 1]."""
    try:
        from pytorch_grad_cam import GradCAM
    except ImportError as exc:  # pragma: no cover - the dev and report extras install it
        raise MissingExtraError("heatmaps need pytorch-grad-cam; install it with: pip install 'transferkit[report]'") from exc

    maps = [np.zeros((0, *pixels.shape[1:3]), np.float32)]
    with GradCAM(model=model, target_layers=[layer]) as cam:
        for start in range(0, len(pixels), batch_size):
            batch = _inputs(pixels[start : start + batch_size], preprocessing)
            # The feature strategies leave every parameter frozen (requires_grad False); a
            # gradient-requiring input keeps the graph that Grad-CAM differentiates.
            batch.requires_grad_(True)
            chosen = targets[start : start + batch_size]
            maps.append(cam(input_tensor=batch, targets=[MarginTarget(t) for t in chosen]).astype(np.float32))
    # Leave no gradient buffers behind: the model may be served or saved next.
    model.zero_grad(set_to_none=True)
    return np.concatenate(maps)


def overlay(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45, colormap: str = COLORMAP) -> np.ndarray:
    """uint8 RGB ``image`` with ``heatmap`` (values in [0, 1], same height and width) blended on top."""
    from matplotlib import colormaps

    if heatmap.shape != image.shape[:2]:
        raise ConfigError(f"heatmap shape {heatmap.shape} differs from the image's {image.shape[:2]}.")
    colours = colormaps[colormap](np.clip(heatmap, 0, 1))[..., :3]
    blended = (1 - alpha) * image.astype(np.float32) / 255.0 + alpha * colours
    return np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8)


def colour_scale(height: int = 160, width: int = 14, colormap: str = COLORMAP) -> np.ndarray:
    """uint8 (height, width, 3): the heatmap colours from high evidence (top) to low (bottom)."""
    from matplotlib import colormaps

    values = np.linspace(1.0, 0.0, height)[:, None].repeat(width, axis=1)
    return (colormaps[colormap](values)[..., :3] * 255 + 0.5).astype(np.uint8)


def explanation_panel(image: np.ndarray, heatmap: np.ndarray | None, *, size: int = 160, title: str = "",
                      note: str = "") -> np.ndarray:
    """The image, its heatmap overlay and the colour scale side by side, uint8 RGB, with ``title``
    (e.g. the predicted class and its probability) and ``note`` (where the map comes from) written
    below, wrapped between words.

    The image is shown at its own size; one narrower than ``size`` pixels is enlarged to ``size``
    with a Lanczos filter. ``heatmap`` None: the middle panel is the greyed image with "no useful
    map" written on it.
    """
    from PIL import Image, ImageDraw, ImageFont

    width = max(size, int(image.shape[1]))

    def shown(pixels: np.ndarray) -> Image.Image:
        picture = Image.fromarray(np.ascontiguousarray(pixels))
        if picture.width == width:
            return picture
        return picture.resize((width, max(1, round(width * picture.height / picture.width))), Image.Resampling.LANCZOS)

    font = ImageFont.load_default()
    left = shown(image)
    if heatmap is None:
        grey = np.asarray(Image.fromarray(image).convert("L").convert("RGB")) // 2 + 64
        middle = shown(grey)
        ImageDraw.Draw(middle).text((6, 6), "no useful map", fill=(255, 255, 255), font=font)
    else:
        middle = shown(overlay(image, heatmap))
    scale = Image.fromarray(colour_scale(left.height - 24, 14))
    gap, label_width = 8, 34
    panel_width = left.width * 2 + gap * 3 + scale.width + label_width
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = measure.textbbox((0, 0), "Mg", font=font)[3] + 4
    captions = [(line, (0, 0, 0)) for line in caption_lines(title, panel_width - 4, font)]
    captions += [(line, (60, 60, 60)) for line in caption_lines(note, panel_width - 4, font)]
    panel = Image.new("RGB", (panel_width, left.height + (len(captions) * line_height + 4 if captions else 0)), "white")
    panel.paste(left, (0, 0))
    panel.paste(middle, (left.width + gap, 0))
    x = 2 * left.width + 2 * gap
    panel.paste(scale, (x, 12))
    draw = ImageDraw.Draw(panel)
    draw.text((x + scale.width + 3, 8), "high", fill=(0, 0, 0), font=font)
    draw.text((x + scale.width + 3, left.height - 20), "low", fill=(0, 0, 0), font=font)
    for row, (line, colour) in enumerate(captions):
        draw.text((2, left.height + 2 + row * line_height), line, fill=colour, font=font)
    return np.asarray(panel)


def caption_lines(text: str, width: int, font=None) -> list[str]:
    """``text`` in lines at most ``width`` pixels wide in ``font`` (Pillow's default), broken
    between words only (:func:`transferkit.lines.pack`); a word wider than that keeps a line to itself."""
    from PIL import Image, ImageDraw, ImageFont

    from transferkit.lines import pack

    words = text.split()
    if not words:
        return []
    font = font or ImageFont.load_default()
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    characters = len(" ".join(words))
    while True:
        lines = pack(words, characters)
        if characters <= 1 or all(draw.textlength(line, font=font) <= width or " " not in line for line in lines):
            return lines
        characters -= 1
