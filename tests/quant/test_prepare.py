"""Preparation: BN folding, Quant* swaps and ONNX-Runtime-style activation quantizers."""

from __future__ import annotations

import collections
import copy

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from torchslim import record_of
from torchslim.errors import ConfigError
from torchslim.quant import (FakeQuantize, LayerOverride, QuantConfig, QuantSpec, prepare,
                             set_fake_quant_, set_observers_)
from torchslim.quant.modules import QuantConv2d, QuantLinear
from torchslim.quant.prepare import fake_quantizers
from torchslim.zoo import build_model



def _rules(prepared: nn.Module) -> collections.Counter:
    return collections.Counter(record_of(prepared).quantization.activation_quantizers.values())


class Toy(nn.Module):
    """conv-bn-relu, conv, add + F.relu, pool, flatten, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))       # (B, 4, H, W)
        y = F.relu(self.conv2(x) + x)
        y = F.max_pool2d(y, 2)
        return self.fc(torch.flatten(self.pool(y), 1))  # (B, 3)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        scores = self.q(x) @ self.k(x).transpose(1, 2)  # (B, T, T)
        return torch.softmax(scores, -1) @ x            # (B, T, 4)


def test_placement_rules_on_a_hand_built_model() -> None:
    x = torch.randn(2, 1, 6, 6)
    prepared = prepare(Toy(), example_inputs=(x,))
    # input; conv1 (after its ReLU) and conv2; the add (after F.relu); the pool.
    # max-pool and flatten pass through; the logits of fc stay float.
    assert _rules(prepared) == {"input": 1, "output": 2, "add": 1, "pool": 1}
    code = prepared.code
    assert "relu_act_fq = self.relu_act_fq(relu)" in code
    assert "fc = self.fc(flatten);" in code and "tree_unflatten((fc,)" in code
    assert isinstance(prepared.conv2, QuantConv2d) and isinstance(prepared.fc, QuantLinear)
    assert record_of(prepared).quantization.folded_bn == ("bn1",)


def test_matmul_inputs_and_output_are_quantized_once() -> None:
    prepared = prepare(Attention(), example_inputs=(torch.randn(2, 3, 4),))
    # q and k outputs are quantized by rule (b); the softmax output and x (its input
    # quantizer) feed the second matmul; the scores feed only the (float) softmax and the
    # final matmul output is the model output, so neither is quantized.
    assert _rules(prepared) == {"input": 1, "output": 2, "matmul_input": 1}


@pytest.mark.parametrize("name, kwargs, size", [
    ("resnet8", dict(width=8), 8), ("mobilenetv2", dict(width_mult=0.25), 8),
    ("tv:resnet18", dict(), 28)])
def test_zoo_models_prepare_fold_and_match_in_float(name: str, kwargs: dict, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, **kwargs).eval()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 1, size, size)
    prepared = prepare(model, example_inputs=(x,))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())
    assert not [n for n in prepared.graph.nodes if "bn" in n.name or "features_0_1" == n.name]
    set_fake_quant_(prepared, False)
    with torch.no_grad():
        torch.testing.assert_close(prepared(x), model(x), atol=1e-4, rtol=1e-4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untouched
    info = record_of(prepared).quantization
    assert info.kept_float == () and len(info.quantized) > 5
    assert all(hasattr(prepared.get_submodule(n), "weight_fake_quant") for n in info.quantized)


def test_depthwise_weights_are_per_channel_s8() -> None:
    prepared = prepare(Toy(), QuantConfig(reduce_range=False),
                       example_inputs=(torch.randn(2, 1, 6, 6),))
    fq = prepared.conv2.weight_fake_quant
    assert isinstance(fq, FakeQuantize) and fq.spec.granularity == "per_channel"
    assert (fq.spec.qmin, fq.spec.qmax, fq.spec.axis) == (-127, 127, 0)


def test_skip_first_last_and_overrides() -> None:
    w4 = QuantSpec(bits=4, granularity="per_channel")
    cfg = QuantConfig(weight=w4, first_layer="float", last_layer="8bit", reduce_range=False,
                      overrides={"conv2": LayerOverride(weight=QuantSpec(bits=6))})
    prepared = prepare(Toy(), cfg, example_inputs=(torch.randn(2, 1, 6, 6),))
    assert not hasattr(prepared.conv1, "weight_fake_quant")
    assert prepared.conv2.weight_fake_quant.spec.bits == 6
    assert prepared.fc.weight_fake_quant.spec.bits == 8
    info = record_of(prepared).quantization
    assert info.quantized == ("conv2", "fc") and info.kept_float[0][0] == "conv1"
    # The input feeds only the float conv1, so it gets no quantizer; conv2's input still does.
    assert _rules(prepared)["input"] == 0 and _rules(prepared)["input_of"] == 1


def test_skipping_a_block_keeps_it_whole_in_float() -> None:
    model = build_model("resnet8", width=4).eval()
    prepared = prepare(model, QuantConfig(skip=("layer2",)),
                       example_inputs=(torch.randn(1, 1, 8, 8),))
    assert ("layer2", "in skip list") in record_of(prepared).quantization.kept_float
    assert not any(n.startswith("layer2") for n in record_of(prepared).quantization.quantized)
    assert "layer3.0.conv1" in record_of(prepared).quantization.quantized


def test_unknown_layer_names_fail_at_prepare_time() -> None:
    with pytest.raises(ConfigError, match=r"'layer9\.0\.conv1'.*layers are named like: conv1"):
        prepare(build_model("resnet8", width=4), QuantConfig(skip=("layer9.0.conv1",)),
                example_inputs=(torch.randn(1, 1, 8, 8),))


def test_observer_and_fake_quant_switches() -> None:
    x = torch.randn(4, 1, 6, 6)
    prepared = prepare(Toy(), example_inputs=(x,))
    fqs = [fq for _, fq in fake_quantizers(prepared)]
    assert all(fq.observer_enabled and not fq.fake_quant_enabled for fq in fqs)
    float_out = prepared(x)
    set_observers_(prepared, False)
    set_fake_quant_(prepared, True)
    assert all(fq.scale.numel() > 0 for fq in fqs)
    assert all(not fq.observer_enabled and fq.fake_quant_enabled for fq in fqs)
    quant_out = prepared(x)
    assert not torch.equal(quant_out, float_out)
    torch.testing.assert_close(quant_out, float_out, atol=0.1, rtol=0.1)


def test_prepared_models_deep_copy_with_their_record() -> None:
    x = torch.randn(2, 1, 6, 6)
    prepared = prepare(Toy(), example_inputs=(x,))
    clone = copy.deepcopy(prepared)
    assert record_of(clone).quantization.quantized == ("conv1", "conv2", "fc")
    torch.testing.assert_close(clone(x), prepared(x))
