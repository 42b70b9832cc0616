"""The one interface every runtime adapter implements."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Session(Protocol):
    """Runs a batch on some runtime.

    ``runtime`` names the engine ("torch", "onnxruntime", "openvino"); ``precision`` what it
    computes in ("fp32", "int8", ...); ``artifact`` is the file the session was loaded from,
    or None for an in-memory model.
    """

    runtime: str
    precision: str
    threads: int
    artifact: Path | None

    @property
    def name(self) -> str: ...

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, *input_shape) float32 -> (N, num_outputs) float32."""
        ...
