"""QAT: observers frozen on schedule, LSQ step sizes learn, accuracy recovers on digits."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor, nn

from torchslim.data import calibration_subset, load_data
from torchslim.quant import (FakeQuantize, LearnableFakeQuantize, QuantConfig, qat,
                             quantize)
from torchslim.quant.config import DEFAULT_WEIGHT
from torchslim.quant.prepare import fake_quantizers
from torchslim.quant.qat import describe, from_lsq_, to_lsq_
from torchslim.train import TrainConfig, accuracy, fit
from torchslim.zoo import build_model

W4 = dataclasses.replace(DEFAULT_WEIGHT, bits=4)
QUICK = TrainConfig(epochs=2, lr=0.01, schedule="cosine", channels_last=False)



class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _toy_data(n: int = 6) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(32, 8, generator=g) for _ in range(n)]
    return [(x, (x[:, 0] > 0).long() + (x[:, 1] > 1).long()) for x in xs]


def test_observers_frozen_from_the_chosen_epoch_and_after_training() -> None:
    data = _toy_data()
    q = qat(Mlp(), data, config=QuantConfig(weight=W4), train_config=QUICK,
            freeze_observers_epoch=0, num_calib_batches=2)
    calibrated = quantize(Mlp(), QuantConfig(weight=W4), calibration=data, num_batches=2)
    # Frozen from epoch 0: the input grid is the calibrated one, untouched by training.
    assert torch.equal(q.x_act_fq.scale, calibrated.x_act_fq.scale)
    assert describe(q)["observers_on"] == 0 and not q.training


def test_unfrozen_observers_keep_adapting_until_the_end() -> None:
    data = _toy_data()
    q = qat(Mlp(), data, config=QuantConfig(weight=W4), train_config=QUICK,
            freeze_observers_epoch=None, num_calib_batches=1)
    calibrated = quantize(Mlp(), QuantConfig(weight=W4), calibration=data, num_batches=1)
    assert not torch.equal(q.x_act_fq.scale, calibrated.x_act_fq.scale)
    assert describe(q)["observers_on"] == 0


def test_lsq_scales_get_gradients_and_harden_back() -> None:
    data = _toy_data()
    q = quantize(Mlp(), QuantConfig(weight=W4), calibration=data, num_batches=2)
    replaced = to_lsq_(q)
    # fc1's weights, fc2's weights and the post-ReLU u8 grid (z = 0); the input (z != 0) stays.
    assert set(replaced) == {"fc1.weight_fake_quant", "fc2.weight_fake_quant", "relu_act_fq"}
    assert isinstance(q.x_act_fq, FakeQuantize)
    lsq = dict(q.named_modules())
    before = lsq["fc1.weight_fake_quant"].scale.detach().clone()
    nn.functional.cross_entropy(q(data[0][0]), data[0][1]).backward()
    for name in replaced:
        grad = lsq[name].scale.grad
        assert grad is not None and bool(grad.abs().sum() > 0), name
    assert from_lsq_(q) == replaced
    assert torch.equal(q.fc1.weight_fake_quant.scale, before)
    assert describe(q)["lsq"] == 0


def test_qat_with_lsq_returns_plain_fake_quantizers() -> None:
    q = qat(Mlp(), _toy_data(), config=QuantConfig(weight=W4), train_config=QUICK, lsq=True,
            num_calib_batches=2)
    assert not any(isinstance(m, LearnableFakeQuantize) for m in q.modules())
    assert all(fq.scale.numel() > 0 and not fq.observer_enabled for _, fq in fake_quantizers(q))


@pytest.mark.slow
def test_4bit_qat_recovers_accuracy_on_digits(digits_model) -> None:
    model, data = digits_model
    float_top1 = accuracy(model, data.val)
    calib = calibration_subset(data, 256, batch_size=64)
    ptq = accuracy(quantize(model, QuantConfig(weight=W4), calibration=calib,
                                  num_batches=4), data.val)
    tuned = qat(model, data.train, config=QuantConfig(weight=W4), calibration=calib,
                num_calib_batches=4, train_config=TrainConfig(epochs=2, lr=0.01,
                                                              schedule="cosine"))
    top1 = accuracy(tuned, data.val)
    assert top1 >= ptq or top1 >= float_top1 - 0.02
    assert top1 >= float_top1 - 0.03
    assert describe(tuned)["observers_on"] == 0


@pytest.mark.slow
def test_simulated_bn_folding_qat_returns_a_folded_model() -> None:
    from torchslim.quant.fold import ConvBn, QuantConvBn
    from torchslim.quant.modules import QuantConv2d

    torch.manual_seed(0)
    data = load_data("digits", batch_size=64)
    model = build_model("resnet8", width=4)
    fit(model, data.train, config=TrainConfig(epochs=2, lr=0.1))
    float_top1 = accuracy(model, data.val)
    tuned = qat(model, data.train, config=QuantConfig(), freeze_bn_epoch=1,
                train_config=TrainConfig(epochs=2, lr=0.01, schedule="cosine"),
                num_calib_batches=4)
    assert not any(isinstance(m, (ConvBn, QuantConvBn, nn.BatchNorm2d)) for m in tuned.modules())
    assert isinstance(tuned.conv1, QuantConv2d)
    assert accuracy(tuned, data.val) >= float_top1 - 0.03
