"""``export(model, path)``: one entry point for every artifact torchslim writes.

The writer is chosen from the model's record (``torchslim.record_of(model).quantization``):
the TYPE of the config it was quantized with picks the writer in ``WRITERS``; a model with
no quantization record is float. Module classes are never consulted, so a dynamically
quantized model (whose layers hold weight quantizers too) cannot reach the QDQ writer.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from torchslim._record import record_of
from torchslim.capture.inputs import DynamicDims
from torchslim.errors import ConfigError
from torchslim.exporters.dynamic import export_dynamic
from torchslim.exporters.onnx import export_onnx
from torchslim.exporters.openvino import export_openvino
from torchslim.exporters.qdq import export_qdq
from torchslim.exporters.weight_only import export_weight_only
from torchslim.quant.config import DynamicQuantConfig, QuantConfig, WeightOnlyConfig

__all__ = ["FORMATS", "WRITERS", "export", "is_quantized", "writer_for"]

FORMATS = ("onnx", "openvino")
Writer = Callable[..., Path]
# the config type a model was quantized with -> the ONNX writer for it
WRITERS: dict[type, Writer] = {QuantConfig: export_qdq, DynamicQuantConfig: export_dynamic,
                               WeightOnlyConfig: export_weight_only}


def is_quantized(model: nn.Module) -> bool:
    """True when ``model``'s record says torchslim quantized it."""
    return record_of(model).quantization is not None


def writer_for(model: nn.Module) -> Writer:
    """The ONNX writer for what was done to ``model`` (see the module docstring)."""
    info = record_of(model).quantization
    if info is None:
        if any(hasattr(m, "weight_fake_quant") for m in model.modules()):
            raise ConfigError(
                f"{type(model).__name__} holds fake-quantized layers but no torchslim record "
                "of how they were quantized; quantize it with torchslim.quantize, or call "
                "export_qdq / export_dynamic / export_weight_only yourself")
        return export_onnx
    writer = WRITERS.get(type(info.config))
    if writer is None:
        raise ConfigError(f"a model quantized with {info.kind} has no ONNX writer; "
                          "save an LLM with torchslim.llm.save_quantized")
    return writer


def export(model: nn.Module, path: str | os.PathLike[str], *, example_inputs: Any = None,
           input_shape: tuple[int, ...] | None = None, dynamic_dims: DynamicDims | None = None,
           output_names: Sequence[str] | None = None, format: str = "onnx") -> Path:
    """Write ``model`` for a runtime: FP32 ONNX for a float model, INT8 QDQ ONNX for a static
    (PTQ or QAT) one, integer-MatMul ONNX for a dynamic one, int weights behind
    DequantizeLinear for a weight-only one. ``format="openvino"`` converts that ONNX file to
    OpenVINO IR (``.xml`` + ``.bin``).

    ``example_inputs``: a tensor, a tuple or a dict of the model's inputs (any dtypes);
    ``input_shape`` (batch axis excluded) is the shorthand for one float input. Every
    input's dim 0 is the dynamic "batch"; ``dynamic_dims`` names more, e.g.
    ``{"input_ids": {0: "batch", 1: "sequence"}}``."""
    if format not in FORMATS:
        raise ConfigError(f"format={format!r}; choose one of {', '.join(FORMATS)}")
    writer = writer_for(model)
    target = Path(path)
    kwargs = dict(example_inputs=example_inputs, input_shape=input_shape,
                  dynamic_dims=dynamic_dims, output_names=output_names)
    if format == "onnx":
        return writer(model, target.with_suffix(".onnx"), **kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = writer(model, Path(tmp) / "model.onnx", **kwargs)
        return export_openvino(onnx_path, target.with_suffix(".xml"))
