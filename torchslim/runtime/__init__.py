"""Sessions that run a model on a runtime: ``load(path) -> Session``."""

from __future__ import annotations

import os
from pathlib import Path

from torchslim.errors import ArtifactError
from torchslim.runtime.base import Session
from torchslim.runtime.onnxruntime import OnnxRuntimeSession
from torchslim.runtime.openvino import OpenVinoSession  # imports openvino only when used
from torchslim.runtime.torch_session import TorchSession

__all__ = ["Session", "TorchSession", "OnnxRuntimeSession", "OpenVinoSession", "load"]


def load(path: str | os.PathLike[str], *, threads: int | None = None) -> Session:
    """Open an artifact on the runtime its file type implies."""
    p = Path(path)
    if p.suffix == ".onnx":
        return OnnxRuntimeSession(p, threads=threads)
    if p.suffix == ".xml":
        return OpenVinoSession(p, threads=threads)
    raise ArtifactError(f"no runtime for {p.name!r} (suffix {p.suffix or 'none'}); "
                        "pass an .onnx file, an OpenVINO .xml, or a checkpoint directory "
                        "to evaluate in PyTorch")
