"""Models nobody here wrote (issue 14): a Conv2d subclass with "same" padding, a functional
``F.conv2d`` model, an SE block, two inputs one of them integer, a dynamic sequence length,
and a model with nothing to quantize. Each checks the coverage, the op types ONNX Runtime
runs after its own graph optimisation, and the outputs against the fake-quant model."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchslim._record import record_of
from torchslim.errors import UnsupportedModelError
from torchslim.exporters import export_qdq
from torchslim.quant import QuantConfig, quantize
from torchslim.runtime import open as open_session


class Conv2dSame(nn.Conv2d):
    """TF-style "same" padding computed in forward, as third-party EfficientNets do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class SameNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = Conv2dSame(3, 16, 3, stride=2, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = Conv2dSame(16, 32, 3, stride=1, bias=False), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


class Functional(nn.Module):
    """Weights as bare parameters used through F.conv2d / F.linear."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(16, 3, 3, 3) * 0.2)
        self.b1 = nn.Parameter(torch.zeros(16))
        self.w2 = nn.Parameter(torch.randn(32, 16, 3, 3) * 0.1)
        self.fc_w = nn.Parameter(torch.randn(10, 32) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.conv2d(x, self.w1, self.b1, padding=1))
        x = F.relu(F.conv2d(x, self.w2, None, stride=2, padding=1))
        return F.linear(x.mean((2, 3)), self.fc_w)


class SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * s


class SENet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.se = SE(32)
        self.c2 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(F.relu(self.b1(self.c1(x))))
        x = F.relu(self.c2(x))
        return self.fc(x.mean((2, 3)))


class ImageAndClass(nn.Module):
    """An image and an integer id (e.g. a camera or a class condition)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.embed = nn.Embedding(5, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, image: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(image)).mean((2, 3))
        return self.fc(x + self.embed(ids))


class SeqModel(nn.Module):
    """(batch, seq, features) -> per-step logits: the sequence length is dynamic."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(12, 32), nn.Linear(32, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.inp(x)))


def _batches(make, n: int = 8):
    torch.manual_seed(1)
    return [make() for _ in range(n)]


def _optimised_ops(path: Path, tmp_path: Path) -> Counter:
    """Op types of the graph ONNX Runtime runs, after its own (extended) optimisation."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)


def _agree(prepared: nn.Module, session, inputs) -> float:
    with torch.no_grad():
        ref = prepared(*inputs) if isinstance(inputs, tuple) else prepared(inputs)
    out = session.run(tuple(t.numpy() for t in inputs) if isinstance(inputs, tuple)
                      else inputs.numpy())
    out = np.asarray(out)
    assert out.shape == tuple(ref.shape)
    return float(np.mean(out.reshape(-1, out.shape[-1]).argmax(-1)
                         == ref.numpy().reshape(-1, ref.shape[-1]).argmax(-1)))


@pytest.mark.parametrize("net", [SameNet, Functional], ids=["conv2d-subclass-same", "functional"])
def test_convs_written_in_forward_are_quantized_and_run_as_integer_convs(net, tmp_path) -> None:
    torch.manual_seed(0)
    model = net().eval()
    data = _batches(lambda: torch.randn(4, 3, 17, 17))
    prepared = quantize(model, QuantConfig(), data)
    cov = record_of(prepared).quantization.coverage
    assert cov.macs_fraction == 1.0, cov.float_ops
    assert cov.macs_quantized == cov.macs_quantizable > 0
    path = export_qdq(prepared, tmp_path / "m.onnx", example_inputs=data[0])
    ops = _optimised_ops(path, tmp_path)
    assert ops["QLinearConv"] == 2 and ops["Conv"] == 0, ops
    assert ops["Pad"] == 0 or ops["Pad"] <= ops["QLinearConv"], ops   # never float between DQ/Q
    session = open_session(path, threads=1)
    x = torch.randn(16, 3, 17, 17)
    assert _agree(prepared, session, x) >= 0.9


def test_se_block_gate_and_scale_run_in_int8(tmp_path) -> None:
    torch.manual_seed(0)
    model = SENet().eval()
    data = _batches(lambda: torch.randn(4, 3, 12, 12))
    prepared = quantize(model, QuantConfig(), data)
    cov = record_of(prepared).quantization.coverage
    assert cov.macs_fraction == 1.0, cov.float_ops
    path = export_qdq(prepared, tmp_path / "se.onnx", example_inputs=data[0])
    ops = _optimised_ops(path, tmp_path)
    # the SE's pool, sigmoid and channel scale stay in the integer domain
    assert ops["Conv"] == 0 and ops["Sigmoid"] == 0 and ops["Mul"] == 0, ops
    assert ops["QLinearConv"] == 4, ops
    session = open_session(path, threads=1)
    assert _agree(prepared, session, torch.randn(16, 3, 12, 12)) >= 0.9


def test_two_inputs_one_integer_keeps_the_ids_exact(tmp_path) -> None:
    torch.manual_seed(0)
    model = ImageAndClass().eval()
    # batches of (inputs, target): the inputs a tuple of an image and integer ids
    data = _batches(lambda: ((torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))),
                             torch.zeros(4, dtype=torch.long)))
    prepared = quantize(model, QuantConfig(), data)
    cov = record_of(prepared).quantization.coverage
    assert cov.macs_fraction == 1.0, cov.float_ops
    path = export_qdq(prepared, tmp_path / "two.onnx", example_inputs=data[0][0])
    graph = onnx.load(path).graph
    kinds = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    assert kinds == {"image": onnx.TensorProto.FLOAT, "ids": onnx.TensorProto.INT64}
    # the ids feed the Gather as they are: no QuantizeLinear consumes them
    assert not [n for n in graph.node if n.op_type == "QuantizeLinear" and "ids" in n.input]
    session = open_session(path, threads=1)
    image, ids = torch.randn(16, 3, 8, 8), torch.arange(16) % 5
    assert _agree(prepared, session, (image, ids)) >= 0.9
    ops = _optimised_ops(path, tmp_path)
    assert ops["QLinearConv"] == 1 and ops["Conv"] == 0, ops


def test_dynamic_sequence_length_exports_and_runs_at_any_length(tmp_path) -> None:
    torch.manual_seed(0)
    model = SeqModel().eval()
    data = _batches(lambda: torch.randn(4, 7, 12))
    prepared = quantize(model, QuantConfig(), data)
    assert record_of(prepared).quantization.coverage.macs_fraction == 1.0
    path = export_qdq(prepared, tmp_path / "seq.onnx", example_inputs=data[0],
                      dynamic_dims={"input": {0: "batch", 1: "seq"}})
    dims = [d.dim_param or d.dim_value
            for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]
    assert dims[:2] == ["batch", "seq"], dims
    session = open_session(path, threads=1)
    for length in (3, 7, 19):
        assert _agree(prepared, session, torch.randn(2, length, 12)) >= 0.9
    ops = _optimised_ops(path, tmp_path)
    assert ops["MatMul"] == 0 and ops["Gemm"] == 0, ops   # both linears run as integer matmuls


class NothingToQuantize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(3, 3, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.up(x))


def test_a_model_that_cannot_be_quantized_is_a_coverage_error() -> None:
    data = _batches(lambda: torch.randn(2, 3, 8, 8), 2)
    with pytest.raises(UnsupportedModelError, match="only 0.0% of the MACs.*transposed "
                                                    "convolution"):
        quantize(NothingToQuantize().eval(), QuantConfig(), data)
