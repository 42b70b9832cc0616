"""``export(model, path)``: one entry point for every artifact torchslim writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from torch import nn

from torchslim.errors import ConfigError
from torchslim.exporters.onnx import export_onnx
from torchslim.exporters.openvino import export_openvino
from torchslim.exporters.qdq import export_qdq

FORMATS = ("onnx", "openvino")


def is_quantized(model: nn.Module) -> bool:
    """True when ``model`` holds fake-quantized weights (a prepared/calibrated model)."""
    return any(hasattr(m, "weight_fake_quant") for m in model.modules())


def export(model: nn.Module, path: str | os.PathLike[str], *, input_shape: tuple[int, ...],
           format: str = "onnx") -> Path:
    """Write ``model`` for a runtime: an FP32 ONNX file for a float model, an INT8 QDQ ONNX
    file for a prepared (calibrated or QAT) model; ``format="openvino"`` converts that ONNX
    file to OpenVINO IR (``.xml`` + ``.bin``). ``input_shape`` excludes the batch axis."""
    if format not in FORMATS:
        raise ConfigError(f"format={format!r}; choose one of {', '.join(FORMATS)}")
    writer = export_qdq if is_quantized(model) else export_onnx
    target = Path(path)
    if format == "onnx":
        return writer(model, target.with_suffix(".onnx"), input_shape=input_shape)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = writer(model, Path(tmp) / "model.onnx", input_shape=input_shape)
        return export_openvino(onnx_path, target.with_suffix(".xml"))
