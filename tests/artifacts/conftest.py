"""Artifacts of every kind from one tiny model, built once; tiny ONNX graphs for the
registry tests (distinct bytes in milliseconds, no torch export)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import torchslim
from torchslim.artifacts.manifest import write_manifest
from torchslim.artifacts.registry import ModelRegistry
from torchslim.exporters import export_onnx, export_openvino, export_qdq
from torchslim.train import save_checkpoint
from torchslim.zoo import build_model

INPUT_SHAPE = (1, 28, 28)


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """resnet8 (width 8) as a checkpoint, an FP32 ONNX, a static-PTQ QDQ ONNX and an
    OpenVINO IR of the QDQ model, without manifests. Shared: copy before changing."""
    root = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    model = build_model("resnet8", width=8).eval()
    calib = [(torch.randn(8, *INPUT_SHAPE), torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    int8 = torchslim.quantize(model, calibration=calib, num_batches=2)
    qdq = export_qdq(int8, root / "model-int8.onnx", input_shape=INPUT_SHAPE)
    return {"checkpoint": save_checkpoint(root / "model.safetensors", model, dataset="digits",
                                          metrics={"test_top1": 0.5}),
            "onnx-fp32": export_onnx(model, root / "model.onnx", input_shape=INPUT_SHAPE),
            "onnx-qdq": qdq,
            "openvino-ir": export_openvino(qdq, root / "model-int8.xml")}


@pytest.fixture
def copy_of(tmp_path: Path, exported: dict[str, Path]) -> Callable[[str], Path]:
    """``copy_of(kind)``: that artifact's files copied into a fresh directory."""
    def copy(kind: str) -> Path:
        src = exported[kind]
        dest = tmp_path / kind
        dest.mkdir()
        for f in src.parent.glob(src.stem + ".*"):
            if not f.name.endswith(".manifest.json"):
                shutil.copy2(f, dest / f.name)
        return dest / src.name
    return copy


def write_tiny_onnx(path: Path, k: float, *, external: bool = False, width: int = 4) -> Path:
    """y = x + k for x of shape (batch, width): a valid model whose bytes depend on k
    (``width`` floats of weights: 4 for speed, more for a file of several chunks)."""
    const = numpy_helper.from_array(np.full((width,), k, dtype=np.float32), "k")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "k"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])], [const])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=path.name + ".data",
                        size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Callable[..., Path]:
    """``tiny_onnx(k, name="m", width=4, **manifest_fields)``: a tiny ONNX file with its
    manifest."""
    def make(k: float, name: str = "m", width: int = 4, **fields: object) -> Path:
        path = write_tiny_onnx(tmp_path / f"{name}-{k}" / f"{name}.onnx", k, width=width)
        write_manifest(path, **fields)
        return path
    return make


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


def _flip_byte(path: Path, offset: int = -10) -> None:
    path.chmod(0o644)  # blobs are read-only
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def flip_byte() -> Callable[..., None]:
    """``flip_byte(path, offset=-10)``: invert one byte of a file in place."""
    return _flip_byte


@pytest.fixture
def onnx_file(tmp_path: Path) -> Callable[..., Path]:
    """``onnx_file(path, k, external=False)``: write_tiny_onnx, without a manifest."""
    return write_tiny_onnx
