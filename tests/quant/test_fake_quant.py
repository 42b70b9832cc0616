"""Fake quantization: forward values, clipped straight-through gradients, LSQ."""

from __future__ import annotations

import math

import pytest
import torch

from torchslim.errors import ConfigError
from torchslim.quant import (FakeQuantize, LearnableFakeQuantize, QuantSpec, calc_qparams_for,
                             fake_quantize, make_observer)
from torchslim.quant.affine import broadcast_qparams

SPECS = [
    QuantSpec(),
    QuantSpec(bits=4, signed=False, symmetric=False),
    QuantSpec(signed=False, symmetric=False),
    QuantSpec(granularity="per_channel", axis=1),
    QuantSpec(bits=3, symmetric=False, granularity="per_channel", axis=-1),
    QuantSpec(bits=4, granularity="per_group", group_size=4),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.granularity}-{s.bits}-{s.signed}")
def test_forward_equals_affine_fake_quantize(spec: QuantSpec) -> None:
    x = torch.randn(6, 3, 8)
    fq = FakeQuantize(spec)
    out = fq(x)
    scale, zp = calc_qparams_for(x, spec)
    assert torch.equal(fq.scale, scale) and torch.equal(fq.zero_point, zp)
    assert torch.allclose(out, fake_quantize(x, scale, zp, spec), atol=1e-6)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.granularity}-{s.bits}-{s.signed}")
def test_gradient_is_one_inside_and_zero_outside(spec: QuantSpec) -> None:
    calib = torch.randn(6, 3, 8)
    fq = FakeQuantize(spec)
    fq(calib)
    fq.enable_observer(False)
    x = (calib * 3).requires_grad_()  # about two thirds of it beyond the calibrated range
    fq(x).sum().backward()
    view, s, z = broadcast_qparams(x.detach(), fq.scale, fq.zero_point, spec)
    q = torch.round(view / s) + z  # before clamping
    expected = ((q >= spec.qmin) & (q <= spec.qmax)).float().reshape(x.shape)
    assert x.grad is not None and torch.equal(x.grad, expected)
    assert 0.1 < expected.mean().item() < 0.9  # both cases occur
    assert (x.grad[x.detach().abs() > 1.5 * calib.abs().max()] == 0).all()


def test_observer_only_mode_leaves_the_input_alone() -> None:
    fq = FakeQuantize(QuantSpec(), observer="percentile", percentile=99.0)
    fq.enable_fake_quant(False)
    x = torch.randn(200)
    assert fq(x) is x
    assert fq.scale.numel() == 0  # buffers refresh lazily, not on every calibration batch
    fq.enable_observer(False)
    expected, _ = fq.observer.calculate_qparams()
    assert torch.equal(fq.scale, expected)
    fq.enable_fake_quant(True)
    y = torch.randn(200)
    assert torch.equal(fq(y), fake_quantize(y, fq.scale, fq.zero_point, QuantSpec()))
    assert torch.equal(fq.scale, expected)  # frozen: observer is off


def test_fake_quant_without_calibration_is_a_config_error() -> None:
    fq = FakeQuantize(QuantSpec()).enable_observer(False)
    with pytest.raises(ConfigError, match="calibration"):
        fq(torch.randn(4))


def test_accepts_an_observer_instance() -> None:
    spec = QuantSpec(granularity="per_channel", axis=0)
    fq = FakeQuantize(spec, observer=make_observer("moving_average", spec, momentum=0.5))
    fq(torch.randn(5, 7))
    assert fq.scale.shape == (5,)


def test_lsq_init_and_scale_gradient() -> None:
    spec = QuantSpec(bits=4)
    x = torch.randn(16, 32)
    lsq = LearnableFakeQuantize(spec)
    out = lsq(x)
    assert lsq.scale.item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(7))
    (out - x).pow(2).sum().backward()
    assert lsq.scale.grad is not None and lsq.scale.grad.abs().item() > 0


def test_lsq_gradient_scale_and_formula() -> None:
    """d x_hat / d s is round(x/s) - x/s inside, qmin or qmax outside, times g."""
    spec = QuantSpec(bits=3)  # [-3, 3]
    x = torch.tensor([0.26, -0.74, 5.0, -9.0])
    lsq = LearnableFakeQuantize(spec)
    lsq(x)
    with torch.no_grad():
        lsq.scale.fill_(0.5)
    lsq(x).sum().backward()
    v = x / 0.5
    expected = (torch.round(v) - v)[:2].sum() + 3 - 3  # two inside, qmax, qmin
    g = 1 / math.sqrt(4 * 3)
    assert lsq.scale.grad.item() == pytest.approx(g * expected.item(), rel=1e-5)
    assert torch.allclose(lsq(x), torch.tensor([0.5, -0.5, 1.5, -1.5]))


def test_lsq_per_channel_and_activation_grad_scale() -> None:
    spec = QuantSpec(granularity="per_channel", axis=1)
    x = torch.randn(8, 3, 5).abs() * torch.tensor([1.0, 2.0, 4.0]).reshape(1, 3, 1)
    lsq = LearnableFakeQuantize(spec, batch_axis=0)
    lsq(x)
    expected = 2 * x.abs().mean(dim=(0, 2)) / math.sqrt(127)
    assert torch.allclose(lsq.scale, expected)
    assert lsq._grad_factor(x) == pytest.approx(1 / math.sqrt(5 * 127))  # per-sample features


def test_lsq_can_start_from_an_observer() -> None:
    x = torch.randn(100)
    lsq = LearnableFakeQuantize(QuantSpec(), observer="minmax")
    lsq(x)
    assert lsq.scale.item() == pytest.approx(x.abs().max().item() / 127)


def test_lsq_training_reduces_the_error() -> None:
    x = torch.randn(64, 64)
    lsq = LearnableFakeQuantize(QuantSpec(bits=3))
    lsq(x)
    with torch.no_grad():
        lsq.scale.mul_(3.0)  # start from a too-coarse step
    (scale,) = lsq.parameters()
    errors = []
    for _ in range(15):  # plain SGD by hand: building torch.optim costs ~1 s of imports
        scale.grad = None
        loss = (lsq(x) - x).pow(2).sum()  # a sum, as over a layer's outputs: g keeps it tame
        loss.backward()
        with torch.no_grad():
            scale -= 0.02 * scale.grad
        errors.append(loss.item() / x.numel())
    assert errors[-1] < 0.25 * errors[0]
    assert 0.3 < lsq.scale.item() < 1.0  # near the MSE-optimal 3-bit step for N(0, 1)


def test_lsq_state_dict_round_trip() -> None:
    src = LearnableFakeQuantize(QuantSpec(granularity="per_channel"))
    src(torch.randn(4, 9))
    dst = LearnableFakeQuantize(QuantSpec(granularity="per_channel"))
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst.scale, src.scale)


def test_fake_quantize_state_dict_round_trip() -> None:
    spec = QuantSpec(granularity="per_group", group_size=4)
    src = FakeQuantize(spec)
    x = torch.randn(3, 8)
    y = src(x)
    dst = FakeQuantize(spec).enable_observer(False)
    dst.load_state_dict(src.state_dict())
    assert dst.scale.shape == (3, 2) and torch.equal(dst(x), y)


def test_observer_spec_must_match() -> None:
    with pytest.raises(ConfigError, match="same QuantSpec"):
        FakeQuantize(QuantSpec(), observer=make_observer("minmax", QuantSpec(bits=4)))


def test_freeze_on_a_weight_fixes_its_grid() -> None:
    spec = QuantSpec(granularity="per_channel", axis=0)
    w = torch.randn(6, 10)
    fq = FakeQuantize(spec).freeze_on_(w)
    scale, zp = calc_qparams_for(w, spec)
    assert not fq.observer_enabled and torch.equal(fq.scale, scale) and torch.equal(fq.zero_point, zp)
    fq(torch.randn(6, 10) * 100)   # frozen: a larger tensor does not move the grid
    assert torch.equal(fq.scale, scale)
