"""``torchslim.quantize(model, config, calibration)``: one entry point, dispatched on the
config's type; each result records how it was quantized."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchslim
from torchslim import record_of
from torchslim.errors import ConfigError
from torchslim.quant.dynamic import DynamicQuantLinear
from torchslim.quant.modules import QuantLinear


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)).eval()


@pytest.mark.parametrize("config, layer_type, min_cosine", [
    (torchslim.QuantConfig(), QuantLinear, 0.98),
    (torchslim.DynamicQuantConfig(), DynamicQuantLinear, 0.98),
    (torchslim.WeightOnlyConfig(bits=4, group_size=32), QuantLinear, 0.95),  # 4-bit weights
], ids=["static", "dynamic", "weight-only"])
def test_the_config_type_picks_the_quantizer(config, layer_type: type, min_cosine: float) -> None:
    model = mlp()
    calibration = [torch.randn(8, 32) for _ in range(2)]
    q = torchslim.quantize(model, config, calibration, num_batches=2)
    layers = [m for m in q.modules() if isinstance(m, nn.Linear)]
    assert len(layers) == 2 and all(type(m) is layer_type for m in layers)
    info = record_of(q).quantization
    assert info.config is config and len(info.quantized) == 2
    assert record_of(model).quantization is None   # the float model is left alone
    x = torch.randn(16, 32)
    with torch.no_grad():
        assert torch.nn.functional.cosine_similarity(model(x), q(x)).min() > min_cosine


def test_static_needs_calibration_and_unknown_configs_are_refused() -> None:
    with pytest.raises(ConfigError, match="needs calibration"):
        torchslim.quantize(mlp(), torchslim.QuantConfig())
    with pytest.raises(ConfigError, match="QuantConfig, DynamicQuantConfig, WeightOnlyConfig.*"
                                          "SparsityConfig.*torchslim.qat"):
        torchslim.quantize(mlp(), torchslim.SparsityConfig())


def test_dynamic_and_weight_only_configs_validate_themselves() -> None:
    with pytest.raises(ConfigError, match=r"layers=\['gru'\].*'linear' and 'lstm'"):
        torchslim.DynamicQuantConfig(layers=("gru",))
    assert torchslim.DynamicQuantConfig(layers=(nn.Linear, nn.LSTM)).layers == ("linear", "lstm")
    with pytest.raises(ConfigError, match="bits=9"):
        torchslim.WeightOnlyConfig(bits=9)
    with pytest.raises(ConfigError, match="group_size=0"):
        torchslim.WeightOnlyConfig(group_size=0)
    assert torchslim.WeightOnlyConfig(skip="fc").skip == ("fc",)
