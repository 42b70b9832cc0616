from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

import torchslim
from torchslim.errors import ConfigError
from torchslim.zoo import build_model


@pytest.fixture(scope="module")
def float_and_int8():
    torch.manual_seed(0)
    model = build_model("resnet8", width=8).eval()
    calib = [(torch.randn(16, 1, 28, 28), torch.zeros(16, dtype=torch.long)) for _ in range(2)]
    return model, torchslim.quantize(model, calibration=calib, num_batches=2)


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_export_picks_fp32_or_qdq_from_the_model(float_and_int8, tmp_path: Path) -> None:
    model, int8 = float_and_int8
    fp32_path = torchslim.export(model, tmp_path / "m", input_shape=(1, 28, 28))
    int8_path = torchslim.export(int8, tmp_path / "q.onnx", input_shape=(1, 28, 28))
    assert fp32_path.suffix == ".onnx" and "QuantizeLinear" not in _ops(fp32_path)
    assert "QuantizeLinear" in _ops(int8_path) and "DequantizeLinear" in _ops(int8_path)


def test_export_to_openvino_ir(float_and_int8, tmp_path: Path) -> None:
    _, int8 = float_and_int8
    xml = torchslim.export(int8, tmp_path / "q", input_shape=(1, 28, 28), format="openvino")
    assert xml.suffix == ".xml" and xml.with_suffix(".bin").is_file()
    session = torchslim.load_session(xml, threads=1)
    assert session.runtime == "openvino" and session.precision == "int8"


def test_unknown_format_names_the_choices(float_and_int8, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="openvino"):
        torchslim.export(float_and_int8[0], tmp_path / "m", input_shape=(1, 28, 28), format="trt")
