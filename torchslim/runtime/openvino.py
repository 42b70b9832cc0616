"""OpenVINO on the CPU: reads an IR (``.xml`` + ``.bin``) or an ONNX file directly.

A compiled model is shared by every caller; an infer request is not (it owns its input
and output buffers), so each call borrows one from a pool and returns it afterwards. The
pool grows to the number of threads that call at once.
"""

from __future__ import annotations

import os
import queue
from pathlib import Path
from typing import Any

import numpy as np

from torchslim.errors import ArtifactError, MissingDependencyError
from torchslim.runtime.base import Inputs, TensorSpec, as_feeds

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
        self._inputs = tuple(_spec(p, f"input_{i}") for i, p in enumerate(self._compiled.inputs))
        self._outputs = tuple(_spec(p, f"output_{i}")
                              for i, p in enumerate(self._compiled.outputs))
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()

    @property
    def name(self) -> str:
        return f"{self.runtime}-{self.precision}"

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def run(self, inputs: Inputs) -> np.ndarray:
        return self._infer(inputs, first_only=True)[self._outputs[0].name]

    def infer(self, inputs: Inputs) -> dict[str, np.ndarray]:
        return self._infer(inputs, first_only=False)

    def close(self) -> None:
        self._compiled = None
        while not self._requests.empty():
            self._requests.get_nowait()

    def _infer(self, inputs: Inputs, *, first_only: bool) -> dict[str, np.ndarray]:
        compiled = self._compiled
        if compiled is None:
            raise ArtifactError(f"session for {self.artifact} is closed; open it again")
        feeds = as_feeds(self._inputs, inputs)
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = compiled.create_infer_request()
        try:
            result = request.infer([feeds[s.name] for s in self._inputs])
            ports = compiled.outputs[:1] if first_only else compiled.outputs
            # copy: the request reuses its output buffers on its next call
            return {spec.name: np.array(result[port], copy=True)
                    for spec, port in zip(self._outputs, ports)}
        finally:
            self._requests.put(request)


def _spec(port: Any, fallback: str) -> TensorSpec:
    try:
        name = port.get_any_name()
    except RuntimeError:  # a port without a tensor name
        name = fallback
    shape = port.get_partial_shape()
    dims = None if shape.rank.is_dynamic else tuple(
        None if d.is_dynamic else d.get_length() for d in shape)
    return TensorSpec(name, np.dtype(port.get_element_type().to_dtype()).name, dims)


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
