"""Weight-only PTQ: Linear weights per group (or per channel), activations float."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.quant.affine import sqnr_db
from torchslim.quant import WeightOnlyConfig
from torchslim.quant.modules import QuantLinear
from torchslim.quant.weight_only import quantize_weight_only


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10)).eval()


@pytest.mark.parametrize(("bits", "group_size", "symmetric", "min_db"), [
    (8, None, True, 38.0), (8, 128, True, 38.0), (4, 32, True, 18.0), (4, 32, False, 18.0)])
def test_weight_sqnr_on_gaussian_weights(bits: int, group_size: int | None, symmetric: bool,
                                         min_db: float) -> None:
    layer = nn.Linear(256, 64)
    nn.init.normal_(layer.weight)
    config = WeightOnlyConfig(bits=bits, group_size=group_size, symmetric=symmetric)
    q = quantize_weight_only(nn.Sequential(layer), config)[0]
    assert isinstance(q, QuantLinear)
    with torch.no_grad():
        w_hat = q.weight_fake_quant(q.weight)
    assert sqnr_db(layer.weight, w_hat) >= min_db


def test_model_output_close_and_input_untouched() -> None:
    model = mlp()
    w0 = model[0].weight.clone()
    q = quantize_weight_only(model, WeightOnlyConfig(bits=8, group_size=32))
    x = torch.randn(16, 128)
    with torch.no_grad():
        assert sqnr_db(model(x), q(x)) >= 35
    assert torch.equal(model[0].weight, w0) and type(model[0]) is nn.Linear


def test_group_size_must_divide_in_features() -> None:
    with pytest.raises(ConfigError, match=r"'2'.*in_features=256.*group_size=96"):
        quantize_weight_only(nn.Sequential(nn.Linear(96, 256), nn.ReLU(), nn.Linear(256, 4)),
                             WeightOnlyConfig(group_size=96))


def test_skip_keeps_float() -> None:
    q = quantize_weight_only(mlp(), WeightOnlyConfig(bits=4, group_size=32, skip=["2"]))
    assert isinstance(q[0], QuantLinear) and type(q[2]) is nn.Linear
