"""OpenVINO on the CPU: reads an IR (``.xml`` + ``.bin``) or an ONNX file directly."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from torchslim.errors import ArtifactError, MissingDependencyError

__all__ = ["OpenVinoSession", "import_openvino"]

# Graph ops that mean the model computes in int8: NNCF/POT insert FakeQuantize, an ONNX QDQ
# model read directly keeps QuantizeLinear until compilation folds it.
_INT8_OPS = frozenset({"FakeQuantize", "QuantizeLinear", "DequantizeLinear", "FakeConvert"})


def import_openvino() -> Any:
    """The ``openvino`` module, or a MissingDependencyError naming the extra."""
    try:
        import openvino
    except ImportError as e:
        raise MissingDependencyError(
            "OpenVINO needs: pip install 'torchslim[openvino]'") from e
    return openvino


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class OpenVinoSession:
    """A model compiled for the CPU with a fixed thread count and the latency hint.

    ``INFERENCE_PRECISION_HINT`` is pinned to f32: on CPUs with bf16/fp16 units OpenVINO
    would otherwise silently compute an FP32 model in lower precision, and the FP32 row of
    a benchmark would not be FP32. Int8 models still run their int8 kernels (the hint
    only governs the float parts).
    """

    runtime = "openvino"

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None,
                 precision: str | None = None) -> None:
        ov = import_openvino()
        self.artifact = Path(path)
        if not self.artifact.is_file():
            raise ArtifactError(f"OpenVINO model not found: {self.artifact}; export one with "
                                "torchslim.exporters.export_openvino or check the path")
        self.threads = threads or min(os.cpu_count() or 1, 4)
        core = ov.Core()
        try:
            model = core.read_model(str(self.artifact))
        except Exception as e:  # OpenVINO raises a bare RuntimeError for any parse failure
            raise ArtifactError(f"OpenVINO cannot read {self.artifact}: {_first_line(e)}; "
                                "re-export the model (an .xml needs its .bin next to it)") from e
        self.precision = precision or _guess_precision(model)
        _make_batch_dynamic(ov, model)
        config = {
            ov.properties.inference_num_threads: self.threads,
            ov.properties.hint.performance_mode: ov.properties.hint.PerformanceMode.LATENCY,
            ov.properties.hint.inference_precision: ov.Type.f32,
        }
        try:
            self._compiled = core.compile_model(model, "CPU", config)
        except Exception as e:
            raise ArtifactError(f"OpenVINO cannot compile {self.artifact} for the CPU: "
                                f"{_first_line(e)}") from e
        self._request = self._compiled.create_infer_request()
        self._output = self._compiled.output(0)

    @property
    def name(self) -> str:
        return f"{self.runtime}-{self.precision}"

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        result = self._request.infer({0: x})
        # copy: the request reuses its output buffer on the next call
        return np.array(result[self._output], dtype=np.float32, copy=True)


def _guess_precision(model: Any) -> str:
    ops = {op.get_type_name() for op in model.get_ops()}
    return "int8" if ops & _INT8_OPS else "fp32"


def _make_batch_dynamic(ov: Any, model: Any) -> None:
    """Let axis 0 of every input take any size (an IR exported with batch 1 stays usable)."""
    shapes = {}
    for inp in model.inputs:
        shape = inp.get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() == 0 or shape[0].is_dynamic:
            continue
        shape[0] = ov.Dimension.dynamic()
        shapes[inp.get_any_name()] = shape
    if shapes:
        model.reshape(shapes)
