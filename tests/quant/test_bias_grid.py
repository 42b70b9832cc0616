"""Biases on the int32 grid (issue 14): a fake-quant layer adds its bias as an integer
kernel does, on ``s_in * s_w``, so that a QDQ export computes what the torch model does,
even with 4-bit activations that keep every conv in float."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from torchslim.quant import FakeQuantize, QuantConfig, QuantSpec, calibrate_, prepare
from torchslim.quant.bias_grid import GridBias, grid_bias, link_input_quantizers_
from torchslim.quant.fold import QuantConvBn, fold_simulated_bn_
from torchslim.quant.modules import QuantConv2d, QuantLinear
from torchslim.quant.qat import from_lsq_, to_lsq_

U4 = QuantSpec(bits=4, signed=False, symmetric=False)
W8 = QuantSpec(bits=8, granularity="per_channel", axis=0)


class Net(nn.Module):
    """conv -> BN -> ReLU -> max-pool -> conv -> ReLU -> mean -> flatten -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.fc = nn.Conv2d(8, 16, 3, padding=1), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn(self.conv1(x))), 2)  # (N, 8, 4, 4)
        x = F.adaptive_avg_pool2d(F.relu(self.conv2(x)), 1)  # (N, 16, 1, 1)
        return self.fc(torch.flatten(x, 1))


def randomised(model: nn.Module) -> nn.Module:
    """Biases and BN statistics far from zero, so that rounding them shows."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.normal_(0.0, 0.5)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture()
def images() -> torch.Tensor:
    return torch.randn(64, 1, 8, 8)


def prepared_net(images: torch.Tensor, activation: QuantSpec = U4, **kwargs: object) -> nn.Module:
    config = QuantConfig(activation=activation)
    model = prepare(randomised(Net()), config, example_inputs=images[:2], **kwargs)
    return calibrate_(model, [images], num_batches=1)


def layers(model: nn.Module) -> dict[str, GridBias]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}


def steps_off_grid(layer: GridBias) -> float:
    """Largest distance of the bias the layer adds from the grid s_in * s_w, in steps."""
    with torch.no_grad():
        layer.weight_fake_quant(layer.weight)
        step = layer.input_quantizer.scale * layer.weight_fake_quant.scale  # (C,)
        k = layer.bias_on_grid(layer.bias) / step
    return float((k - k.round()).abs().max())


def test_grid_bias_rounds_per_channel_clamps_and_passes_the_gradient() -> None:
    bias = torch.tensor([0.26, -0.74, 1e6, 0.0], requires_grad=True)
    s_in, s_w = torch.tensor(0.5), torch.tensor([0.1, 0.2, 1e-9, 1.0])
    out = grid_bias(bias, s_in, s_w)
    step = s_in * s_w
    assert torch.equal(out[[0, 1, 3]], torch.tensor([5.0, -7.0, 0.0]) * step[[0, 1, 3]])
    assert float(out[2].detach() / step[2]) == pytest.approx(2 ** 31, rel=1e-6)  # int32, saturated
    out.sum().backward()
    assert torch.equal(bias.grad, torch.ones(4))


def test_prepare_links_every_layer_to_the_quantizer_feeding_it(images: torch.Tensor) -> None:
    model = prepared_net(images)
    found = layers(model)
    assert len(found) == 3
    expected = record_layer_inputs(model)
    for name, layer in found.items():
        quantizer = layer.input_quantizer
        assert isinstance(quantizer, FakeQuantize)
        assert [n for n, m in model.named_modules() if m is quantizer] == expected[name]
        assert steps_off_grid(layer) < 1e-3
        assert not torch.equal(layer.bias_on_grid(layer.bias), layer.bias)  # it did round


def record_layer_inputs(model: nn.Module) -> dict[str, list[str]]:
    from torchslim._record import record_of

    return {k: list(v) for k, v in record_of(model).quantization.layer_inputs.items()}


def test_bias_stays_float_without_fake_quant_or_link(images: torch.Tensor) -> None:
    model = prepared_net(images)
    layer = model.get_submodule("conv2")
    layer.input_quantizer.enable_fake_quant(False)  # float input: a float conv
    assert layer.bias_on_grid(layer.bias) is layer.bias
    layer.input_quantizer.enable_fake_quant(True)
    layer.link_input_(None)
    assert layer.bias_on_grid(layer.bias) is layer.bias


def test_links_follow_grid_keeping_ops_and_skip_float_inputs() -> None:
    fq_a, fq_b = FakeQuantize(U4), FakeQuantize(U4)
    conv = QuantConv2d.from_float(nn.Conv2d(2, 4, 1), FakeQuantize(W8))
    fc = QuantLinear.from_float(nn.Linear(4 * 2 * 2, 3), FakeQuantize(W8))
    float_fc = QuantLinear.from_float(nn.Linear(3, 3), FakeQuantize(W8))

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fq_a, self.conv, self.fq_b, self.fc, self.float_fc = fq_a, conv, fq_b, fc, float_fc

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fq_b(self.conv(F.pad(self.fq_a(x), (1, 1, 1, 1))))  # (N, 4, 6, 6)
            y = F.max_pool2d(y, 3).flatten(1)  # (N, 16)
            return self.float_fc(torch.sigmoid(self.fc(y)))

    links = link_input_quantizers_(Model(), torch.randn(2, 2, 4, 4))
    assert links == {"conv": "fq_a", "fc": "fq_b"}
    assert conv.input_quantizer is fq_a and fc.input_quantizer is fq_b
    assert float_fc.input_quantizer is None


def test_a_layer_read_from_two_grids_keeps_a_float_bias() -> None:
    shared = QuantLinear.from_float(nn.Linear(4, 4), FakeQuantize(W8))
    model = nn.ModuleDict({"a": FakeQuantize(U4), "b": FakeQuantize(U4), "fc": shared})

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.parts = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            fc = self.parts["fc"]
            return fc(self.parts["a"](x)) + fc(self.parts["b"](2 * x))

    assert link_input_quantizers_(Twice(), torch.randn(3, 4)) == {}
    assert shared.input_quantizer is None


def test_links_survive_copies_lsq_and_bn_folding(images: torch.Tensor) -> None:
    model = prepared_net(images)
    keys = set(model.state_dict())
    twin = copy.deepcopy(model)
    assert set(twin.state_dict()) == keys  # the link adds no state
    for name, layer in layers(twin).items():
        original = model.get_submodule(name).input_quantizer
        assert layer.input_quantizer is not original
        assert any(m is layer.input_quantizer for m in twin.modules())
    to_lsq_(model)
    for layer in layers(model).values():
        assert any(m is layer.input_quantizer for m in model.modules())
        assert layer.bias_on_grid(layer.bias) is not layer.bias
    from_lsq_(model)
    assert all(isinstance(layer.input_quantizer, FakeQuantize) for layer in layers(model).values())
    assert all(steps_off_grid(layer) < 1e-3 for layer in layers(model).values())

    simulated = prepared_net(images, simulate_bn=True)
    convbn = [m for m in simulated.modules() if isinstance(m, QuantConvBn)]
    assert len(convbn) == 1 and convbn[0].input_quantizer is not None
    fold_simulated_bn_(simulated)
    assert steps_off_grid(simulated.get_submodule("conv1")) < 1e-3


@pytest.mark.parametrize("bits", [4, 8])
def test_export_with_low_bit_activations_computes_the_torch_model(
        bits: int, images: torch.Tensor, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ort = pytest.importorskip("onnxruntime")
    from torchslim.exporters import export_qdq

    model = prepared_net(images, QuantSpec(bits=bits, signed=False, symmetric=False))
    with caplog.at_level(logging.WARNING, logger="torchslim.exporters"):
        path = export_qdq(model, tmp_path / "m.onnx", input_shape=(1, 8, 8))
    assert "float biases" not in caplog.text
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    with torch.no_grad():
        ref = model(images).numpy()
    assert (out.argmax(1) == ref.argmax(1)).mean() == 1.0
    tolerance = 1e-5 if bits == 4 else 0.05  # 4 bits: float convs, the same sums
    assert np.abs(out - ref).max() <= tolerance * np.abs(ref).max()


def test_exporter_warns_about_a_float_bias_the_runtime_rounds(
        images: torch.Tensor, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from torchslim.exporters import export_qdq

    model = prepared_net(images)
    model.get_submodule("conv2").link_input_(None)  # as a hand-built model would be
    with caplog.at_level(logging.WARNING, logger="torchslim.exporters"):
        export_qdq(model, tmp_path / "m.onnx", input_shape=(1, 8, 8))
    assert "float biases of conv2, which an int8 runtime rounds" in caplog.text
