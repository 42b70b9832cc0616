"""PyTorch eager on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


class TorchSession:
    runtime = "torch"

    def __init__(self, model: nn.Module, *, threads: int | None = None, precision: str = "fp32",
                 channels_last: bool = True, artifact: Path | None = None) -> None:
        self.model = model.eval()
        self.threads = threads or torch.get_num_threads()
        self.precision = precision
        self.artifact = artifact
        # oneDNN runs convolutions about 2x faster on NHWC on this class of CPU.
        self._channels_last = channels_last and _has_conv2d(model)
        if self._channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    @property
    def name(self) -> str:
        return f"{self.runtime}-{self.precision}"

    def run(self, batch: np.ndarray) -> np.ndarray:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            if self._channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                return self.model(x).float().numpy()
        finally:
            torch.set_num_threads(previous)


def _has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())
