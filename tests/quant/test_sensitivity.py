"""Per-layer sensitivity and mixed-precision configs."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from torchslim import record_of
from torchslim.data import calibration_subset
from torchslim.errors import ConfigError, UnknownNameError
from torchslim.quant import (LayerSensitivity, QuantConfig, layer_sensitivity,
                             mixed_precision_config, prepare)
from torchslim.quant.config import DEFAULT_WEIGHT
from torchslim.quant.sensitivity import weight_bytes

W2 = dataclasses.replace(DEFAULT_WEIGHT, bits=2)
W4 = dataclasses.replace(DEFAULT_WEIGHT, bits=4)
FAKE = [LayerSensitivity("a", 5.0, 10.0, 100), LayerSensitivity("b", 1.0, 20.0, 1000),
        LayerSensitivity("c", 0.0, 30.0, 400), LayerSensitivity("d", 0.0, 25.0, 40)]



@pytest.fixture(scope="module")
def digits(digits_model) -> dict[str, Any]:
    model, data = digits_model
    return {"model": model, "val": data.val,
            "calib": calibration_subset(data, 128, batch_size=64)}


@pytest.mark.slow
def test_one_layer_at_a_time_on_digits(digits: dict[str, Any]) -> None:
    result = layer_sensitivity(digits["model"], QuantConfig(weight=W2), calibration=digits["calib"],
                               data=digits["val"], num_batches=2)
    names = [r.name for r in result]
    prepared = prepare(digits["model"], example_inputs=(torch.zeros(1, 1, 8, 8),))
    assert sorted(names) == sorted(record_of(prepared).quantization.quantized)
    drops = [r.metric_drop for r in result]
    assert drops == sorted(drops, reverse=True) and drops[0] > 0  # 2-bit weights hurt somewhere
    assert all(r.sqnr_db > 0 and r.params > 0 for r in result)
    assert next(r for r in result if r.name == "conv1").params == 8 * 1 * 3 * 3
    assert set(result[0].to_dict()) == {"name", "metric_drop", "sqnr_db", "params"}
    # Keeping the worst layer at 8 bits is at least as good for that layer's error.
    cfg = mixed_precision_config(QuantConfig(weight=W2), result, keep_8bit=1)
    again = layer_sensitivity(digits["model"], cfg, calibration=digits["calib"],
                              data=digits["val"], num_batches=2)
    worst = next(r for r in again if r.name == result[0].name)
    assert worst.sqnr_db > result[0].sqnr_db


def test_unknown_metric_is_rejected(digits: dict[str, Any]) -> None:
    with pytest.raises(UnknownNameError, match="top1"):
        layer_sensitivity(digits["model"], calibration=digits["calib"], data=digits["val"],
                          metric="f1")


def test_keep_float_and_keep_8bit_follow_sensitivity_order() -> None:
    cfg = mixed_precision_config(QuantConfig(weight=W4, skip=("z",)), FAKE[::-1], keep_float=1,
                                 keep_8bit=1)
    assert cfg.skip == ("z", "a")
    assert cfg.overrides["b"].weight.bits == 8
    assert cfg.overrides["b"].weight.granularity == "per_channel"
    assert set(cfg.overrides) == {"b"} and cfg.weight.bits == 4


def test_size_budget_raises_layers_greedily() -> None:
    low = weight_bytes(FAKE, {s.name: 4 for s in FAKE})  # 770 bytes
    cfg = mixed_precision_config(QuantConfig(weight=W4), FAKE, size_budget_bytes=int(low) + 250)
    # Order a, b, d, c (equal drops: lower SQNR first). a (+50) fits, b (+500) does not,
    # d (+20) fits, c (+200) would overflow: 840 + 200 > 1020.
    assert set(cfg.overrides) == {"a", "d"}
    with pytest.raises(ConfigError, match="size_budget_bytes=100"):
        mixed_precision_config(QuantConfig(weight=W4), FAKE, size_budget_bytes=100)


@pytest.mark.parametrize("kwargs", [dict(keep_float=-1), dict(keep_8bit=9)])
def test_bad_counts_are_config_errors(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        mixed_precision_config(QuantConfig(), FAKE, **kwargs)


def test_identical_outputs_serialise_as_strict_json() -> None:
    import json
    import math

    from torchslim.quant.sensitivity import LayerSensitivity

    d = LayerSensitivity("fc", 0.0, math.inf, 10).to_dict()
    assert json.loads(json.dumps(d, allow_nan=False))["sqnr_db"] == 200.0
