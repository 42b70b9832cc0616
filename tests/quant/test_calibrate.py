"""Static PTQ: calibration, frozen qparams, bias correction, accuracy on real digits."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from torchslim import record_of
from torchslim.data import calibration_subset
from torchslim.errors import ConfigError
from torchslim.quant import QuantConfig, calibrate_, prepare, quantize
from torchslim.quant.config import DEFAULT_WEIGHT
from torchslim.quant.prepare import fake_quantizers
from torchslim.train import accuracy


class TwoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _batches(n: int, *, mean: float = 0.0) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(32, 16, generator=g) + mean, torch.zeros(32, dtype=torch.long))
            for _ in range(n)]


def test_calibration_observes_n_batches_then_freezes() -> None:
    data = _batches(5)
    prepared = prepare(TwoLinear(), example_inputs=(data[0][0],))
    calibrate_(prepared, data, num_batches=3)
    fqs = dict(fake_quantizers(prepared))
    assert int(fqs["x_act_fq"].observer.num_batches) == 3
    assert all(not fq.observer_enabled and fq.fake_quant_enabled and fq.scale.numel() > 0
               for fq in fqs.values())
    frozen = fqs["x_act_fq"].scale.clone()
    prepared(data[4][0] * 100)  # frozen: a wild batch changes nothing
    assert torch.equal(fqs["x_act_fq"].scale, frozen)


def test_quantize_returns_a_new_model_and_defaults_example_inputs() -> None:
    model = TwoLinear()
    before = model.fc1.weight.clone()
    q = quantize(model, calibration=_batches(2), num_batches=2)
    assert q is not model and torch.equal(model.fc1.weight, before)
    assert record_of(q).quantization.quantized == ("fc1", "fc2")


def test_empty_calibration_data_is_a_config_error() -> None:
    prepared = prepare(TwoLinear(), example_inputs=(torch.randn(2, 16),))
    with pytest.raises(ConfigError, match="no batches"):
        calibrate_(prepared, [], num_batches=4)


@torch.no_grad()
def test_bias_correction_removes_the_mean_output_error() -> None:
    torch.manual_seed(0)
    data = _batches(8, mean=1.5)  # a non-zero input mean makes weight error bias the output
    w3 = dataclasses.replace(DEFAULT_WEIGHT, bits=3)
    model = TwoLinear()
    errors = {}
    for bc in (False, True):
        q = quantize(model, QuantConfig(weight=w3, bias_correction=bc),
                           calibration=data, num_batches=8)
        x = torch.cat([b[0] for b in data])  # (256, 16)
        errors[bc] = (q.fc1(q.x_act_fq(x)) - model.fc1(x)).mean(0).abs().mean()
    assert errors[True] < 0.2 * errors[False]


# --- end to end on real data -------------------------------------------------------



@pytest.fixture(scope="module")
def digits(digits_model) -> dict[str, Any]:
    model, data = digits_model
    return {"model": model, "val": data.val, "float": accuracy(model, data.val),
            "calib": calibration_subset(data, 256, batch_size=64)}


def _ptq_top1(digits: dict[str, Any], config: QuantConfig) -> float:
    q = quantize(digits["model"], config, calibration=digits["calib"], num_batches=4)
    return accuracy(q, digits["val"])


@pytest.mark.slow
def test_w8a8_per_channel_ptq_is_within_1_5_points(digits: dict[str, Any]) -> None:
    assert digits["float"] > 0.85
    assert _ptq_top1(digits, QuantConfig()) >= digits["float"] - 0.015


@pytest.mark.slow
@pytest.mark.parametrize("observer", ["percentile", "mse", "moving_average"])
def test_other_observers_calibrate_well(digits: dict[str, Any], observer: str) -> None:
    top1 = _ptq_top1(digits, QuantConfig(activation_observer=observer))
    assert top1 >= digits["float"] - 0.03


@pytest.mark.slow
def test_entropy_observer_runs(digits: dict[str, Any]) -> None:
    q = quantize(digits["model"], QuantConfig(activation_observer="entropy"),
                       calibration=digits["calib"], num_batches=4)
    scales = [fq.scale for _, fq in fake_quantizers(q)]
    assert all(bool(torch.isfinite(s).all() and (s > 0).all()) for s in scales)


@pytest.mark.slow
def test_entropy_observer_accuracy(digits: dict[str, Any]) -> None:
    top1 = _ptq_top1(digits, QuantConfig(activation_observer="entropy"))
    assert top1 >= digits["float"] - 0.03


@pytest.mark.slow
@pytest.mark.parametrize("bits, tolerance", [(8, 0.01), (4, 0.01)])
def test_bias_correction_does_not_hurt(digits: dict[str, Any], bits: int,
                                       tolerance: float) -> None:
    weight = dataclasses.replace(DEFAULT_WEIGHT, bits=bits)
    plain = _ptq_top1(digits, QuantConfig(weight=weight))
    corrected = _ptq_top1(digits, QuantConfig(weight=weight, bias_correction=True))
    assert corrected >= plain - tolerance


@pytest.mark.parametrize("percentile", [None, 99.0])
def test_the_percentile_observer_clips_where_the_config_says(percentile: float | None) -> None:
    """Activations of 0..1 with 1 % outliers at 100: the default (99.99) keeps the outliers in
    range, a 99th-percentile clip cuts them off."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8)).eval()
    x = torch.rand(64, 64)
    x.view(-1)[torch.randperm(x.numel())[: x.numel() // 100]] = 100.0
    config = QuantConfig(activation_observer="percentile", activation_percentile=percentile)
    q = quantize(model, config, calibration=[x], num_batches=1)
    observers = [fq.observer for name, fq in fake_quantizers(q) if "weight" not in name]
    expected = 99.99 if percentile is None else percentile
    assert observers and all(obs.percentile == expected for obs in observers)
    input_scale = next(fq.scale for name, fq in fake_quantizers(q) if "weight" not in name)
    top = float(input_scale) * 255   # the largest input the u8 grid represents
    assert (top > 99.0) if percentile is None else (top < 1.01)

