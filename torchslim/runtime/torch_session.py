"""PyTorch eager on the CPU.

torch's intra-op thread pool is process-wide: the session sets it once, when it is
opened, and never per call (a per-call set-and-restore races between threads). Calls
from several threads run the model concurrently in inference mode, which changes no
module state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.errors import ArtifactError
from torchslim.runtime.base import Inputs, TensorSpec, as_feeds

__all__ = ["TorchSession", "register_model_loader", "open_checkpoint"]

# file suffix -> loader(path) -> nn.Module; the training layer registers its checkpoint
# loader here, so this layer does not import the one above it
_LOADERS: dict[str, Callable[[Path], nn.Module]] = {}


def register_model_loader(suffix: str, loader: Callable[[Path], nn.Module]) -> None:
    _LOADERS[suffix] = loader


def open_checkpoint(path: Path, *, threads: int | None = None,
                    precision: str | None = None) -> TorchSession:
    loader = _LOADERS.get(path.suffix)
    if loader is None:
        raise ArtifactError(f"no torch loader for {path.name!r}; pass a .safetensors "
                            "checkpoint written by torchslim")
    return TorchSession(loader(path), threads=threads, precision=precision or "fp32",
                        artifact=path)


class TorchSession:
    runtime = "torch"

    def __init__(self, model: nn.Module, *, threads: int | None = None, precision: str = "fp32",
                 channels_last: bool = True, artifact: Path | None = None,
                 example_inputs: Any = None) -> None:
        self.model = model.eval()
        if threads:
            torch.set_num_threads(threads)
        self.threads = threads or torch.get_num_threads()
        self.precision = precision
        self.artifact = artifact
        self._kwargs = isinstance(example_inputs, Mapping)
        self._inputs = _input_specs(example_inputs)
        # oneDNN runs convolutions about 2x faster on NHWC on this class of CPU.
        self._channels_last = channels_last and _has_conv2d(model)
        if self._channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._outputs: tuple[TensorSpec, ...] = ()
        if example_inputs is not None:
            self._outputs = tuple(TensorSpec(k, str(v.dtype), tuple(v.shape))
                                  for k, v in self.infer(example_inputs).items())

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
        return next(iter(self.infer(inputs).values()))

    def infer(self, inputs: Inputs) -> dict[str, np.ndarray]:
        feeds = {k: self._tensor(v) for k, v in as_feeds(self._inputs, inputs).items()}
        with torch.inference_mode():
            out = self.model(**feeds) if self._kwargs else self.model(*feeds.values())
        return _named_outputs(out)

    def close(self) -> None:
        pass  # the model belongs to the caller

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(array)
        if self._channels_last and x.dim() == 4 and x.is_floating_point():
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def _input_specs(example: Any) -> tuple[TensorSpec, ...]:
    """The signature from example inputs, or one float input of unknown shape when there
    are none (the classifier case). Axis 0 is the batch; the other dims stay unnamed and
    dynamic, since one example cannot tell a fixed size from a sequence length (the
    model itself rejects a size it cannot take)."""
    if example is None:
        return (TensorSpec("input", "float32", None),)
    items = example.items() if isinstance(example, Mapping) else (
        [(f"input_{i}", v) for i, v in enumerate(example)] if isinstance(example, (tuple, list))
        else [("input", example)])
    return tuple(TensorSpec(str(k), _dtype_name(v), ("batch", *[None] * (len(v.shape) - 1)))
                 for k, v in items)


def _dtype_name(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return str(value.dtype).removeprefix("torch.")
    return np.asarray(value).dtype.name


def _named_outputs(out: Any) -> dict[str, np.ndarray]:
    """A tensor -> {"output"}; a tuple -> {"output_i"}; a mapping (a transformers
    ModelOutput) -> its tensor entries by key."""
    if isinstance(out, torch.Tensor):
        return {"output": _array(out)}
    if isinstance(out, Mapping):
        return {str(k): _array(v) for k, v in out.items() if isinstance(v, torch.Tensor)}
    if isinstance(out, (tuple, list)):
        return {f"output_{i}": _array(v) for i, v in enumerate(out)
                if isinstance(v, torch.Tensor)}
    raise ArtifactError(f"the model returned {type(out).__name__}; a session needs a tensor, "
                        "a tuple or a mapping of tensors")


def _array(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.is_floating_point() and t.dtype != torch.float32:
        t = t.float()
    return t.contiguous().numpy()


def _has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())
