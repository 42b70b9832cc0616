"""ONNX Runtime on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from torchslim.errors import ArtifactError


class OnnxRuntimeSession:
    runtime = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None,
                 precision: str | None = None) -> None:
        import onnxruntime as ort

        self.artifact = Path(path)
        if not self.artifact.is_file():
            raise ArtifactError(f"ONNX file not found: {self.artifact}; "
                                "export one with `torchslim export` or check the path")
        self.threads = threads or min(os.cpu_count() or 1, 4)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(self.artifact), options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ArtifactError(f"ONNX Runtime cannot load {self.artifact}: {first}; "
                                "re-export the model with `torchslim export`") from e
        self._input = self._session.get_inputs()[0].name
        self.precision = precision or _guess_precision(self._session)

    @property
    def name(self) -> str:
        return f"{self.runtime}-{self.precision}"

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return self._session.run(None, {self._input: x})[0]


def _guess_precision(session: object) -> str:
    """"int8" when the graph holds QuantizeLinear nodes, else "fp32"."""
    import onnx

    try:
        path = session._model_path  # type: ignore[attr-defined]
    except AttributeError:
        return "fp32"
    model = onnx.load(path, load_external_data=False)
    ops = {node.op_type for node in model.graph.node}
    return "int8" if ops & {"QuantizeLinear", "QLinearConv", "MatMulInteger"} else "fp32"
