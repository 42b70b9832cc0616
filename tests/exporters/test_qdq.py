"""QDQ export: the artifact computes what the fake-quant model computes, holds integer
weights, and ONNX Runtime runs it with its integer kernels."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn import functional as F

from torchslim.errors import ConfigError
from torchslim.exporters import export_onnx, export_qdq
from torchslim.exporters.qdq import ort_fused_ops
from torchslim.quant import FakeQuantize, LearnableFakeQuantize, QuantSpec
from torchslim.quant.bias_grid import link_input_quantizers_
from torchslim.quant.modules import QuantConv2d, QuantLinear
from torchslim.quant.reduce_range import reduced_weight, resolve_reduce_range

ort = pytest.importorskip("onnxruntime")

U8 = QuantSpec(bits=8, signed=False, symmetric=False)
# 7-bit weights where this CPU's u8s8 kernels saturate (what QuantConfig's "auto" does)
REDUCE, _ = resolve_reduce_range("auto")


def w_spec(bits: int) -> QuantSpec:
    spec = QuantSpec(bits=bits, granularity="per_channel", axis=0)
    return reduced_weight(spec) if REDUCE else spec


def qconv(cin: int, cout: int, k: int, stride: int, bits: int, lsq: bool) -> QuantConv2d:
    fq = LearnableFakeQuantize(w_spec(bits)) if lsq else FakeQuantize(w_spec(bits))
    return QuantConv2d.from_float(nn.Conv2d(cin, cout, k, stride, k // 2), fq)


class Block(nn.Module):
    """A ResNet basic block with activation quantizers where preparation places them."""

    def __init__(self, cin: int, cout: int, stride: int, bits: int, act) -> None:
        super().__init__()
        self.conv1, self.fq1 = qconv(cin, cout, 3, stride, bits, False), act()
        self.conv2, self.fq2 = qconv(cout, cout, 3, 1, bits, False), act()
        self.down = qconv(cin, cout, 1, stride, bits, False) if stride != 1 else None
        self.fq_down = act() if stride != 1 else None
        self.fq_out = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fq2(self.conv2(self.fq1(F.relu(self.conv1(x)))))
        identity = x if self.down is None else self.fq_down(self.down(x))
        return self.fq_out(F.relu(y + identity))


class TinyResNet(nn.Module):
    """Input quantizer, stem + max pool, two residual blocks, quantized average pool, a
    quantized classifier whose logits stay float: the placements of the prepare contract."""

    def __init__(self, *, width: int = 16, bits: int = 8, act_bits: int = 8,
                 lsq: bool = False) -> None:
        super().__init__()
        spec = QuantSpec(bits=act_bits, signed=False, symmetric=False)
        if lsq:
            def act() -> nn.Module:
                return LearnableFakeQuantize(spec, batch_axis=0)
        else:
            def act() -> nn.Module:
                return FakeQuantize(spec)
        self.fq_in = act()
        self.stem, self.fq_stem = qconv(1, width, 3, 1, bits, lsq), act()
        self.pool = nn.MaxPool2d(2)
        self.b1 = Block(width, width, 1, bits, act)
        self.b2 = Block(width, 2 * width, 2, bits, act)
        self.fq_gap = act()
        self.fc = QuantLinear.from_float(nn.Linear(2 * width, 10), FakeQuantize(w_spec(bits)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fq_stem(F.relu(self.stem(self.fq_in(x))))  # (N, w, 8, 8)
        x = self.b2(self.b1(self.pool(x)))  # (N, 2w, 2, 2)
        return self.fc(torch.flatten(self.fq_gap(F.adaptive_avg_pool2d(x, 1)), 1))


def calibrate(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Observers on and fake quant off for the calibration batches, then freeze; then link
    each layer to its input quantizer, as ``prepare`` does (its bias grid)."""
    model.eval()
    fqs = [m for m in model.modules() if isinstance(m, FakeQuantize)]
    for m in fqs:
        m.enable_fake_quant(False)
    with torch.no_grad():
        for batch in images.split(128):
            model(batch)
    for m in fqs:
        m.enable_observer(False)
        m.enable_fake_quant(True)
    link_input_quantizers_(model, images[:2])
    return model


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """scikit-learn's 1,797 real 8x8 digits, as (N, 1, 8, 8) in about [-1, 2]."""
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1)
    return (x - 4.0) / 5.0


def run_ort(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def torch_logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


@pytest.mark.parametrize("bits, act_bits", [(8, 8), (4, 8), (8, 4)])
def test_onnx_runtime_agrees_with_fake_quant_model(bits: int, act_bits: int,
                                                   digits: torch.Tensor, tmp_path: Path) -> None:
    model = calibrate(TinyResNet(bits=bits, act_bits=act_bits), digits[:512])
    path = export_qdq(model, tmp_path / "m.onnx", input_shape=(1, 8, 8))
    ref, out = torch_logits(model, digits), run_ort(path, digits)
    assert out.shape == ref.shape == (len(digits), 10)
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.99
    # A few output steps at most: ORT rounds once per integer kernel, torch in float; the
    # biases are the same on both sides (the int32 grid input_scale * weight_scale). With
    # 4-bit activations no conv fuses (the 4-bit Clip), and the outputs are equal.
    assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max()


def test_onnx_runtime_runs_integer_kernels(digits: torch.Tensor, tmp_path: Path) -> None:
    model = calibrate(TinyResNet(), digits[:256])
    ops = ort_fused_ops(export_qdq(model, tmp_path / "m.onnx", input_shape=(1, 8, 8)))
    convs = ops["QLinearConv"] + ops["Conv"] + ops["FusedConv"]
    assert convs == 6 and ops["QLinearConv"] / convs >= 0.9
    assert ops["QLinearAdd"] == 2 and ops["QLinearGlobalAveragePool"] == 1 and ops["QGemm"] == 1


@pytest.mark.parametrize("bits, zero_bias", [(8, False), (4, False), (8, True)])
def test_weights_are_integer_initializers(bits: int, zero_bias: bool, digits: torch.Tensor,
                                          tmp_path: Path) -> None:
    model = TinyResNet(bits=bits)
    if zero_bias:  # equal tensors reach the graph once, the others through Identity nodes
        for m in model.modules():
            if isinstance(m, QuantConv2d):
                nn.init.zeros_(m.bias)
    model = calibrate(model, digits[:256])
    graph = onnx.load(str(export_qdq(model, tmp_path / "m.onnx", input_shape=(1, 8, 8)))).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    layers = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(layers) == 7
    for layer in layers:
        dq = producers[layer.input[1]]
        assert dq.op_type == "DequantizeLinear"
        q, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert q.dtype == np.int8 and np.abs(q).max() <= 2 ** (bits - 1) - 1
        assert scale.shape == (q.shape[0],)  # per output channel, axis 0
        if zero_bias and layer.op_type == "Conv" and len(layer.input) < 3:
            continue  # the dynamo exporter drops an all-zero bias
        bias_dq = producers[layer.input[2]]
        assert bias_dq.op_type == "DequantizeLinear" and inits[bias_dq.input[0]].dtype == np.int32
    assert not any(v.dtype == np.float32 and v.size > 64 for v in inits.values())


def test_int8_file_is_a_quarter_of_fp32(digits: torch.Tensor, tmp_path: Path) -> None:
    model = calibrate(TinyResNet(width=64), digits[:128])
    int8 = export_qdq(model, tmp_path / "int8.onnx", input_shape=(1, 8, 8))
    float_model = copy.deepcopy(model)
    for m in float_model.modules():
        if isinstance(m, FakeQuantize):
            m.enable_fake_quant(False)
    fp32 = export_onnx(float_model, tmp_path / "fp32.onnx", input_shape=(1, 8, 8))
    assert int8.stat().st_size <= 0.3 * fp32.stat().st_size


def test_lsq_model_exports(digits: torch.Tensor, tmp_path: Path) -> None:
    model = TinyResNet(lsq=True).eval()
    torch_logits(model, digits[:256])  # materialises every LSQ step size
    link_input_quantizers_(model, digits[:2])
    path = export_qdq(model, tmp_path / "lsq.onnx", input_shape=(1, 8, 8))
    ref, out = torch_logits(model, digits), run_ort(path, digits)
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.99
    ops = ort_fused_ops(path)
    assert ops["QLinearConv"] == 6 and ops["Conv"] == 0


def test_linear_on_sequences_uses_matmul_weights(tmp_path: Path) -> None:
    """A Linear on (N, T, D) exports as MatMul with a transposed [in, out] weight."""
    model = nn.Sequential(FakeQuantize(U8), QuantLinear.from_float(nn.Linear(16, 8),
                                                                   FakeQuantize(w_spec(8))))
    x = torch.randn(64, 5, 16)
    calibrate(model, x)
    path = export_qdq(model, tmp_path / "seq.onnx", input_shape=(5, 16))
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and inits[n.input[1]].ndim
          and any(a.name == "axis" and a.i == 1 for a in n.attribute)]
    assert len(dq) == 1  # the weight's output channels are axis 1 of [in, out]
    assert np.abs(run_ort(path, x) - torch_logits(model, x)).max() < 1e-4


def test_uncalibrated_model_asks_for_calibration(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="calibrate first"):
        export_qdq(TinyResNet(), tmp_path / "m.onnx", input_shape=(1, 8, 8))


def test_unfrozen_observers_are_refused(digits: torch.Tensor, tmp_path: Path) -> None:
    model = calibrate(TinyResNet(), digits[:128])
    model.fq_gap.enable_observer(True)
    with pytest.raises(ConfigError, match="fq_gap.*calibrate first"):
        export_qdq(model, tmp_path / "m.onnx", input_shape=(1, 8, 8))
    assert not (tmp_path / "m.onnx").exists()


def test_prepared_model_is_left_alone(digits: torch.Tensor, tmp_path: Path) -> None:
    model = calibrate(TinyResNet(), digits[:128])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_qdq(model, tmp_path / "m.onnx", input_shape=(1, 8, 8))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model.stem.weight_fake_quant, FakeQuantize)
    assert model.stem.weight_fake_quant.fake_quant_enabled


@pytest.mark.parametrize("name", ["resnet8", "mobilenetv2"])
def test_library_prepared_zoo_model_runs_integer_kernels(name: str, digits: torch.Tensor,
                                                         tmp_path: Path) -> None:
    """The preparation contract end to end: torchslim.quant's own placement exports to a
    graph whose every convolution ONNX Runtime runs as QLinearConv."""
    from torchslim import build_model
    from torchslim.quant import QuantConfig, quantize

    model = build_model(name, num_classes=10, in_channels=1).eval()
    prepared = quantize(model, QuantConfig(), calibration=list(digits[:256].split(64)))
    path = export_qdq(prepared, tmp_path / "m.onnx", input_shape=(1, 8, 8))
    ops = ort_fused_ops(path)
    assert ops["QLinearConv"] >= 5 and ops["Conv"] + ops["FusedConv"] == 0
    ref, out = torch_logits(prepared, digits), run_ort(path, digits)
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.99
