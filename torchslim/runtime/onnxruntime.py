"""ONNX Runtime on the CPU.

``InferenceSession.run`` is documented as safe to call from several threads on one
session, so this adapter holds no per-call state of its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from torchslim.errors import ArtifactError
from torchslim.runtime.base import Inputs, TensorSpec, as_feeds

__all__ = ["OnnxRuntimeSession", "ort_dtype"]

# ONNX Runtime's type strings -> numpy dtype names
_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64",
           "tensor(float16)": "float16", "tensor(int64)": "int64", "tensor(int32)": "int32",
           "tensor(int16)": "int16", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
           "tensor(bool)": "bool"}


def ort_dtype(type_string: str) -> str:
    return _DTYPES.get(type_string, type_string.removeprefix("tensor(").rstrip(")"))


def _specs(args: Any) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(a.name, ort_dtype(a.type),
                            tuple(d if isinstance(d, (int, str)) else None for d in a.shape))
                 for a in args)


class OnnxRuntimeSession:
    runtime = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None,
                 precision: str | None = None, spin: bool | None = None) -> None:
        """``spin``: whether the intra-op threads busy-wait for work between runs (None:
        ONNX Runtime's default, on). Off suits a process whose other threads need the
        cores between runs, such as a server parsing requests."""
        import onnxruntime as ort

        self.artifact = Path(path)
        if not self.artifact.is_file():
            raise ArtifactError(f"ONNX file not found: {self.artifact}; "
                                "check the path (torchslim.export() in Python, or `torchslim "
                                "quantize` / `prune` / `run`, write one)")
        self.threads = threads or min(os.cpu_count() or 1, 4)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if spin is not None:
            options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spin)))
        try:
            self._session = ort.InferenceSession(str(self.artifact), options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ArtifactError(f"ONNX Runtime cannot load {self.artifact}: {first}; "
                                "it is not a valid ONNX model: write it again with "
                                "torchslim.export() in Python, or with `torchslim quantize` "
                                "/ `prune` / `run`, which export ONNX") from e
        self._inputs = _specs(self._session.get_inputs())
        self._outputs = _specs(self._session.get_outputs())
        self.precision = precision or _guess_precision(self.artifact)

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
        return self._run(inputs, [self._outputs[0].name])[0]

    def infer(self, inputs: Inputs) -> dict[str, np.ndarray]:
        names = [o.name for o in self._outputs]
        return dict(zip(names, self._run(inputs, names)))

    def close(self) -> None:
        self._session = None

    def _run(self, inputs: Inputs, names: list[str]) -> list[np.ndarray]:
        session = self._session
        if session is None:
            raise ArtifactError(f"session for {self.artifact} is closed; open it again")
        return session.run(names, as_feeds(self._inputs, inputs))


def _guess_precision(path: Path) -> str:
    """"int8" when the graph holds quantized ops, else "fp32"."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return "fp32"
    ops = {node.op_type for node in model.graph.node}
    if ops & {"MatMulNBits"}:
        return "int4"
    quantized = {"QuantizeLinear", "QLinearConv", "MatMulInteger", "DynamicQuantizeLinear",
                 "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QLinearMatMul"}
    return "int8" if ops & quantized else "fp32"
