"""HardSigmoid / HardSwish between QDQ pairs run on ONNX Runtime's integer Add and Mul."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchslim.exporters._qdq_gates import hard_gates_to_integer_
from torchslim.exporters.qdq import export_qdq, ort_fused_ops
from torchslim.quant.api import quantize
from torchslim.quant.config import QuantConfig


class HardNet(nn.Module):
    """MobileNetV3's pattern: conv -> HardSwish, a squeeze-excite gate with HardSigmoid."""

    def __init__(self) -> None:
        from torchvision.ops import SqueezeExcitation

        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.Hardswish()
        self.se = SqueezeExcitation(16, 8, scale_activation=nn.Hardsigmoid)
        self.conv2 = nn.Conv2d(16, 16, 1)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.conv2(self.se(self.act(self.conv(x))))))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    torch.manual_seed(0)
    model = HardNet().eval()
    x = torch.randn(64, 3, 16, 16) * 2
    prepared = quantize(model, QuantConfig(), calibration=DataLoader(
        TensorDataset(x, torch.zeros(64, dtype=torch.long)), batch_size=32), num_batches=2)
    path = export_qdq(prepared, tmp_path_factory.mktemp("gates") / "int8.onnx",
                      input_shape=(3, 16, 16))
    return path, prepared, model, x


def _run(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def test_no_float_gate_is_left(artifact) -> None:
    path, *_ = artifact
    ops = ort_fused_ops(path)
    assert not {"HardSigmoid", "HardSwish", "Mul", "Add", "DequantizeLinear"} & set(ops), ops
    assert ops["QLinearMul"] == 2 and ops["QLinearAdd"] == 2


def test_outputs_match_the_fake_quant_model(artifact) -> None:
    path, prepared, model, x = artifact
    with torch.inference_mode():
        simulated, fp32 = prepared(x[:16]).numpy(), model(x[:16]).numpy()
    out = _run(path, x[:16].numpy())
    scale = np.abs(fp32).max()
    assert np.abs(out - simulated).max() < 0.05 * scale  # the gate held to 1/255 steps
    assert np.abs(out - fp32).max() < 0.1 * scale


def test_a_gate_whose_grid_is_not_the_clip_stays(artifact, tmp_path) -> None:
    path, *_ = artifact
    model = onnx.load(str(path))
    # a HardSigmoid whose output quantizer has a zero point: the u8 range is not its clip
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"]),
         onnx.helper.make_node("HardSigmoid", ["xf"], ["h"], name="gate"),
         onnx.helper.make_node("QuantizeLinear", ["h", "s", "z"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.UINT8, [4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.UINT8, [4])],
        [onnx.numpy_helper.from_array(np.array(0.01, np.float32), "s"),
         onnx.numpy_helper.from_array(np.array(10, np.uint8), "z")])
    assert hard_gates_to_integer_(graph) == 0
    assert [n.op_type for n in graph.node] == ["DequantizeLinear", "HardSigmoid", "QuantizeLinear"]
    assert model.graph.node  # the module fixture's graph is untouched by this test
