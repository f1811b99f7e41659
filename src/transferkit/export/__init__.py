"""Ship a fitted model: ONNX export with its preprocessing, a torch-free predictor, int8 quantisation.

Examples
--------
>>> from transferkit.export import export_onnx, OnnxClassifier
>>> result = export_onnx("runs/model", "model.onnx", check_images="elpv:test")  # doctest: +SKIP
>>> OnnxClassifier("model.onnx").predict(["cell.png"])  # doctest: +SKIP
"""

from transferkit.export.predictor import OnnxClassifier, read_metadata

__all__ = ["OnnxClassifier", "export_onnx", "quantize_onnx", "read_metadata"]


def __getattr__(name: str):
    # export_onnx needs torch; the predictor must not (PEP 562 keeps the import lazy).
    if name == "export_onnx":
        from transferkit.export.onnx import export_onnx

        return export_onnx
    if name == "quantize_onnx":
        from transferkit.export.quantize import quantize_onnx

        return quantize_onnx
    raise AttributeError(f"module 'transferkit.export' has no attribute {name!r}")
