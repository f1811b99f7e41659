"""One forward pass of a pretrained backbone over the data: per-stage features and domain shift.

The BatchNorm layers of a pretrained network remember the per-channel mean and variance of
their input over the pretraining data (``running_mean``, ``running_var``). Feeding the new
data through the network in eval mode and measuring the same statistics of each BatchNorm's
input tells, layer by layer, how far the data is from what the network was trained on: a
shift in the stem is about intensities and colours; a shift in late stages about shapes and
objects. Where the shift first becomes large is where freezing should stop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from transferkit.backbones import Preprocessing, backbone_stages
from transferkit.errors import ConfigError, DataError
from transferkit.training.allocator import release_freed_memory
from transferkit.training.inputs import pixels_to_tensor, to_model_input
from transferkit.training.runtime import Runtime, resolve_runtime


@dataclass(frozen=True)
class Probe:
    """What one forward pass of a backbone over the data measured.

    Attributes
    ----------
    stage_names : tuple of str
        The backbone's stages, input side first (``stem``, ``stage1`` ... ``neck``).
    stage_features : dict of str to numpy.ndarray
        Per stage, its globally average-pooled output, ``(N, channels)`` float32: features
        for a per-stage LogME. A stage whose modules never ran (e.g. a ViT's parameter
        holder) is missing.
    stage_shift : dict of str to float
        Per stage, the mean over its BatchNorm layers of :func:`batchnorm_shift`; 0 means
        the data looks like the pretraining data to that stage. Stages without BatchNorm
        are missing.
    bottleneck : numpy.ndarray
        ``(N, feature_dim)`` float32: the input of the classifier.
    imagenet_entropy : float or None
        Mean normalised entropy (entropy / log(number of classes), in [0, 1]) of the
        pretrained classifier's softmax; high means the images look like none of the
        pretraining classes. None when the model has no classifier or it was not asked for.
    """

    stage_names: tuple[str, ...]
    stage_features: dict[str, np.ndarray]
    stage_shift: dict[str, float]
    bottleneck: np.ndarray
    imagenet_entropy: float | None


@dataclass(frozen=True)
class DomainShift:
    """How far the data is from the backbone's pretraining data: the summary the rules read.

    Attributes
    ----------
    stage_shift : dict of str to float
        Per stage, input side first, the BatchNorm shift (see :class:`Probe`).
    imagenet_entropy : float or None
        Mean normalised entropy of the pretrained classifier (see :class:`Probe`).
    """

    stage_shift: dict[str, float] = field(default_factory=dict)
    imagenet_entropy: float | None = None

    @property
    def score(self) -> float | None:
        """The mean shift over the stages; None when no stage has BatchNorm statistics."""
        if not self.stage_shift:
            return None
        return float(np.mean(list(self.stage_shift.values())))

    @classmethod
    def from_probe(cls, probe: Probe) -> DomainShift:
        return cls(stage_shift=dict(probe.stage_shift), imagenet_entropy=probe.imagenet_entropy)

    def to_dict(self) -> dict:
        return {
            "score": self.score,
            "stages": {name: float(value) for name, value in self.stage_shift.items()},
            "imagenet_entropy": self.imagenet_entropy,
        }


def batchnorm_shift(
    data_mean: torch.Tensor,
    data_var: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float = 1e-5,
) -> float:
    """How far per-channel statistics of the data are from a BatchNorm's stored statistics.

    Each channel is seen as two Gaussians, ``N(data_mean, data_var)`` (the new data) and
    ``N(running_mean, running_var)`` (the pretraining data); their symmetric Kullback-Leibler
    divergence ``KL(p||q) + KL(q||p) = 1/2 [v_p/v_q + v_q/v_p - 2 + (mu_p - mu_q)^2 (1/v_p + 1/v_q)]``
    is 0 for identical statistics and grows with a mean offset (in units of the standard
    deviations) and with a variance ratio. The score is the mean over channels of
    ``log(1 + divergence)``: the logarithm keeps a few near-dead channels (tiny running
    variance) from drowning the rest, which the plain mean of the divergence does not.
    BatchNorm's ``eps`` is added to both variances, as the layer itself does.

    Measured on the real EfficientNet-Lite0 (per-stage means): natural photos about 0.1-0.25,
    uniform noise 0.5-2, 8x8 digits upsampled 0.7-1.6.

    Parameters
    ----------
    data_mean, data_var : torch.Tensor
        Per-channel mean and (biased) variance of the layer's input over the data.
    running_mean, running_var : torch.Tensor
        The layer's stored statistics.
    eps : float
        The layer's ``eps``.

    Returns
    -------
    float
        0 for identical statistics; larger is farther.
    """
    data_var = data_var.double() + eps
    running_var = running_var.double() + eps
    offset2 = (data_mean.double() - running_mean.double()) ** 2
    ratio = data_var / running_var
    divergence = 0.5 * (ratio + 1 / ratio - 2 + offset2 * (1 / data_var + 1 / running_var))
    return float(torch.log1p(divergence.clamp_min(0)).mean())


# long: one pass with hooks on every stage; its pieces share the hook state and the running sums
@torch.no_grad()
def probe_backbone(
    model: nn.Module,
    pixels: np.ndarray,
    preprocessing: Preprocessing,
    *,
    runtime: Runtime | None = None,
    batch_size: int = 32,
    entropy: bool = True,
) -> Probe:
    """Run ``model`` (in eval mode) once over ``pixels`` and measure every stage.

    Parameters
    ----------
    model : torch.nn.Module
        A timm model, e.g. from ``create_backbone(name, num_classes=1000)``, which keeps the
        pretrained ImageNet classifier for the registered backbones. It is moved to the
        runtime's device and memory format; its train/eval mode is restored afterwards.
    pixels : numpy.ndarray
        ``uint8`` images of shape ``(N, S, S, 3)`` (see :func:`transferkit.data.decode_images`).
    preprocessing : Preprocessing
        The backbone's own normalisation.
    runtime : Runtime, optional
        Device and precision; default ``resolve_runtime("auto")``.
    batch_size : int, default 32
    entropy : bool, default True
        Measure the entropy of the model's classifier; pass False when the classifier is not
        the pretrained one (a random head's entropy means nothing).

    Returns
    -------
    Probe

    Raises
    ------
    DataError
        ``pixels`` is not a non-empty uint8 ``(N, S, S, 3)`` array.
    ConfigError
        ``batch_size`` is not a positive integer.
    """
    _check_pixels(pixels)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: expected a positive integer. Received: batch_size={batch_size!r}")
    runtime = runtime or resolve_runtime("auto")
    stages = backbone_stages(model)
    stage_names = tuple(name for name, _ in stages)
    batchnorms = {
        layer: name
        for name, modules in stages
        for module in modules
        for layer in module.modules()
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.running_var is not None
    }
    classifier = model.get_classifier()
    classifier = classifier[0] if isinstance(classifier, tuple) else classifier
    with_entropy = entropy and int(getattr(model, "num_classes", 0) or 0) > 1

    last_output: dict[str, torch.Tensor] = {}
    moments = {layer: _Moments() for layer in batchnorms}
    pooled: dict[str, list[np.ndarray]] = {name: [] for name in stage_names}
    bottleneck: list[np.ndarray] = []
    entropies: list[np.ndarray] = []

    def remember(stage: str):
        def hook(module: nn.Module, inputs: tuple, output) -> None:
            # the stage's output is that of whichever of its modules ran last
            last_output[stage] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    def measure(module: nn.Module, inputs: tuple) -> None:
        moments[module].add(inputs[0])

    def capture(module: nn.Module, inputs: tuple) -> None:
        last_output["__bottleneck__"] = inputs[0]

    handles = [layer.register_forward_pre_hook(measure) for layer in batchnorms]
    handles += [module.register_forward_hook(remember(name)) for name, modules in stages for module in modules]
    handles.append(classifier.register_forward_pre_hook(capture))
    was_training = model.training
    model.to(runtime.device, memory_format=runtime.memory_format())
    model.eval()
    try:
        for start in range(0, len(pixels), batch_size):
            batch = pixels_to_tensor(pixels[start : start + batch_size])
            last_output.clear()
            with runtime.autocast():
                logits = model(to_model_input(batch, preprocessing, runtime))
            for name in stage_names:
                if name in last_output:
                    pooled[name].append(_global_pool(last_output[name]))
            bottleneck.append(_global_pool(last_output.get("__bottleneck__", logits)))
            if with_entropy:
                entropies.append(_normalised_entropy(logits))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
        release_freed_memory()  # the pass is over: its activations' heap must not add to the next pass's

    per_stage: dict[str, list[float]] = {}
    for layer, stage in batchnorms.items():
        mean, var = moments[layer].result()
        per_stage.setdefault(stage, []).append(
            batchnorm_shift(mean, var, layer.running_mean.cpu(), layer.running_var.cpu(), layer.eps)
        )
    return Probe(
        stage_names=stage_names,
        stage_features={name: np.concatenate(parts) for name, parts in pooled.items() if parts},
        stage_shift={name: float(np.mean(per_stage[name])) for name in stage_names if name in per_stage},
        bottleneck=np.concatenate(bottleneck),
        imagenet_entropy=float(np.concatenate(entropies).mean()) if with_entropy else None,
    )


class _Moments:
    """Per-channel mean and variance over batches, merged exactly (Chan et al.) in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        # channels are dim 1 for (N, C), (N, C, L) and (N, C, H, W) inputs
        dims = [d for d in range(x.ndim) if d != 1]
        var, mean = torch.var_mean(x.float(), dim=dims, correction=0)
        count = x.numel() // x.shape[1]
        mean, var = mean.double().cpu(), var.double().cpu()
        if self.mean is None:
            self.count, self.mean, self.m2 = count, mean, var * count
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + var * count + delta**2 * (self.count * count / total)
        self.count = total

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean, self.m2 / self.count


def _global_pool(output: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) -> mean over H, W; (N, T, C) tokens -> mean over T; (N, C) unchanged."""
    output = output.float()
    if output.ndim == 4:
        output = output.mean(dim=(2, 3))
    elif output.ndim == 3:
        output = output.mean(dim=1)
    elif output.ndim != 2:
        output = output.flatten(1)
    return output.cpu().numpy()


def _normalised_entropy(logits: torch.Tensor) -> np.ndarray:
    log_p = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(log_p.exp() * log_p).sum(dim=-1)
    return (entropy / math.log(logits.shape[-1])).cpu().numpy()


def _check_pixels(pixels: np.ndarray) -> None:
    shape = getattr(pixels, "shape", None)
    if (
        not isinstance(pixels, np.ndarray)
        or pixels.dtype != np.uint8
        or pixels.ndim != 4
        or pixels.shape[-1] != 3
        or len(pixels) == 0
    ):
        dtype = getattr(pixels, "dtype", type(pixels).__name__)
        raise DataError(
            "probe_backbone expected a non-empty uint8 array of shape (N, S, S, 3). "
            f"Received: shape={shape}, dtype={dtype}"
        )
