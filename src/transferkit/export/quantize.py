"""int8 quantisation of an exported model (onnxruntime.quantization) and its measured cost.

``dynamic``: weights stored as int8, activations quantised on the fly per batch, no
calibration data; onnxruntime runs its convolutions as ConvInteger, which is slow on CPUs (it
suits MatMul-heavy networks better). ``static``: activation ranges calibrated on images of the
user's data (QDQ format, per-channel weights, percentile ranges), the faster of the two for
convolutional networks. The head (Gemm) stays fp32 in ``static``: folded from a scaler and a
linear SVM, its weights span a wide range that int8 flattens (svm model on a 200-image sample
of elpv:test, fp32 accuracy 0.760: head in fp32 0.625, plus percentile instead of min/max
ranges 0.645; with an int8 head the whole test part gave 0.576 against fp32's 0.777).
:func:`measure_onnx` reports accuracy and images/s of each file on the same pixels, so that
int8 is judged against fp32 on the user's own test data, never assumed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from transferkit.errors import ConfigError
from transferkit.export.predictor import INPUT_NAME, OnnxClassifier

Quantization = Literal["dynamic", "static"]
CALIBRATION_IMAGES = 64


def quantize_onnx(
    source: str | os.PathLike,
    target: str | os.PathLike,
    mode: Quantization = "dynamic",
    *,
    calibration: np.ndarray | None = None,
) -> Path:
    """Write an int8 version of the fp32 ONNX model ``source`` to ``target``.

    Parameters
    ----------
    mode : {"dynamic", "static"}
    calibration : uint8 (N, S, S, 3) pixels
        ``static`` only: images whose activations set the int8 ranges (a few dozen suffice).
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in get_args(Quantization):
        raise ConfigError(f"quantization expected one of {', '.join(get_args(Quantization))}. Received: {mode!r}")
    if mode == "static" and (calibration is None or len(calibration) == 0):
        raise ConfigError("static quantization needs calibration images; pass calibration=pixels (e.g. training images).")
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    metadata = OnnxClassifier(source).metadata_
    prepared = target.with_suffix(".prepared.onnx")
    with _quiet_quantizer():
        # Shape inference and graph clean-up first, as onnxruntime's quantisation guide advises.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        _quantize(prepared, target, mode, source, calibration)
    _copy_metadata(target, metadata, quantization=mode)
    return target


def _quantize(prepared: Path, target: Path, mode: str, source: Path, calibration: np.ndarray | None) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    try:
        if mode == "dynamic":
            quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
        else:
            fp32 = OnnxClassifier(source)

            # Equal batches only: the percentile calibrator stacks them (a ragged last batch fails).
            size = min(8, len(calibration))
            starts = range(0, len(calibration) - size + 1, size)

            class Reader(CalibrationDataReader):
                def __init__(self) -> None:
                    self._batches = iter(fp32.normalise(calibration[start : start + size]) for start in starts)

                def get_next(self):
                    batch = next(self._batches, None)
                    return None if batch is None else {INPUT_NAME: batch}

            head = [node.name for node in onnx.load(str(prepared)).graph.node if node.op_type in ("Gemm", "MatMul")]
            quantize_static(
                str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=head,
                calibrate_method=CalibrationMethod.Percentile,
            )
    finally:
        prepared.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet_quantizer():
    """onnxruntime's quantiser logs a warning per untyped tensor on the root logger and prints
    its calibration steps; neither says anything a user can act on."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _copy_metadata(path: Path, metadata: dict[str, Any], *, quantization: str) -> None:
    import json

    import onnx

    from transferkit.export.predictor import METADATA_PREFIX

    proto = onnx.load(str(path))
    values = {**metadata, "quantization": quantization}
    onnx.helper.set_model_props(proto, {METADATA_PREFIX + key: json.dumps(value) for key, value in values.items()})
    onnx.save(proto, str(path))


@dataclass(frozen=True)
class Measurement:
    """Accuracy and speed of one model file on the same pixels."""

    name: str
    accuracy: float | None
    images_per_second: float
    size_mb: float
    agreement: float | None = None
    """Share of images where this model's predicted class equals the reference's."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_onnx(
    path: str | os.PathLike,
    pixels: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    name: str | None = None,
    reference: np.ndarray | None = None,
    batch_size: int = 32,
    threads: int | None = None,
) -> tuple[Measurement, np.ndarray]:
    """Time one ONNX model over ``pixels`` (after one warm-up batch); also its predictions."""
    model = OnnxClassifier(path, threads=threads)
    model.logits(pixels[:batch_size], batch_size=batch_size)  # warm-up: allocations, kernel choice
    started = time.perf_counter()
    predicted = model.classes_[model.logits(pixels, batch_size=batch_size).argmax(axis=1)]
    seconds = time.perf_counter() - started
    measurement = Measurement(
        name=name or Path(path).name,
        accuracy=None if labels is None else float(np.mean(predicted == np.asarray(labels).astype(str))),
        images_per_second=round(len(pixels) / seconds, 1),
        size_mb=round(Path(path).stat().st_size / 2**20, 2),
        agreement=None if reference is None else float(np.mean(predicted == reference)),
    )
    return measurement, predicted
