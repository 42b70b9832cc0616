"""FP32 ONNX export with a dynamic batch axis."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from torchslim import _io
from torchslim.errors import UnsupportedModelError

__all__ = ["OPSET", "export_onnx", "export_proto", "write_checked"]

logger = logging.getLogger(__name__)

OPSET = 17


def export_onnx(model: nn.Module, path: str | os.PathLike[str], *,
                input_shape: tuple[int, ...], opset: int = OPSET) -> Path:
    """Write ``model`` (eval mode, CPU) to ``path``; ``input_shape`` excludes the batch axis."""
    model = model.eval().cpu()
    example = torch.zeros(2, *input_shape)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(tmp), input_names=["input"],
                              output_names=["logits"], opset_version=opset,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              dynamo=False)

    try:
        out = _io.write_with(path, write)
    except Exception as e:
        raise UnsupportedModelError(f"cannot export {type(model).__name__} to ONNX: "
                                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    logger.info("exported %s (%d bytes)", out, out.stat().st_size)
    return out


def export_proto(model: nn.Module, input_shape: tuple[int, ...], opset: int = OPSET
                 ) -> onnx.ModelProto:
    """The graph ``export_onnx`` writes for ``model``, loaded for the integer exporters to
    edit."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = export_onnx(model, Path(tmp) / "raw.onnx", input_shape=input_shape, opset=opset)
        return onnx.load(str(raw))


def write_checked(proto: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Check ``proto`` with the ONNX checker, then write it atomically to ``path``."""
    onnx.checker.check_model(proto)
    return _io.write_bytes(path, proto.SerializeToString())
