"""The affine mapping: properties over random tensors and specs, and exact shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchslim.errors import ConfigError
from torchslim.quant import (QuantSpec, calc_qparams_for, compute_qparams, dequantize_tensor,
                             fake_quantize, quantize_tensor, sqnr_db)

KINDS = ("normal", "zeros", "tiny", "huge", "negative", "positive", "constant")


def _values(kind: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    return {
        "normal": x,
        "zeros": torch.zeros(shape),
        "tiny": x * 1e-10,
        "huge": x * 1e30,
        "negative": -x.abs() - 0.5,
        "positive": x.abs() * 3 + 7,
        "constant": torch.full(shape, 2.5),
    }[kind]


@st.composite
def specs(draw: st.DrawFn, shape: tuple[int, ...]) -> QuantSpec:
    signed = draw(st.booleans())
    symmetric = signed and draw(st.booleans())
    granularity = draw(st.sampled_from(["per_tensor", "per_channel", "per_group"]))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    divisors = [g for g in range(1, shape[-1] + 1) if shape[-1] % g == 0]
    return QuantSpec(bits=draw(st.integers(2, 8)), signed=signed, symmetric=symmetric,
                     granularity=granularity, axis=axis, group_size=draw(st.sampled_from(divisors)))


@st.composite
def cases(draw: st.DrawFn) -> tuple[torch.Tensor, QuantSpec]:
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=4)))
    x = _values(draw(st.sampled_from(KINDS)), shape, draw(st.integers(0, 2 ** 16)))
    return x, draw(specs(shape))


def _broadcast(t: torch.Tensor, x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Per-element copy of a qparam tensor, shaped like ``x``."""
    if spec.granularity == "per_tensor":
        return t.expand(x.shape)
    if spec.granularity == "per_channel":
        axis = spec.axis % x.dim()
        shape = [x.shape[axis] if d == axis else 1 for d in range(x.dim())]
        return t.reshape(shape).expand(x.shape)
    return t.unsqueeze(-1).expand(*t.shape, spec.group_size).reshape(x.shape)


@settings(max_examples=50, deadline=None)
@given(cases())
def test_round_trip_within_half_a_step(case: tuple[torch.Tensor, QuantSpec]) -> None:
    x, spec = case
    scale, zp = calc_qparams_for(x, spec)
    assert torch.isfinite(scale).all() and (scale > 0).all()
    assert zp.dtype == torch.int32 and scale.dtype == torch.float32
    q = quantize_tensor(x, scale, zp, spec)
    assert q.dtype == (torch.int8 if spec.signed else torch.uint8) and q.shape == x.shape
    assert int(q.min()) >= spec.qmin and int(q.max()) <= spec.qmax
    x_hat = dequantize_tensor(q, scale, zp, spec)
    step = _broadcast(scale, x, spec)
    assert ((x_hat - x).abs() <= step * (0.5 + 1e-4) + 1e-6 * x.abs()).all()
    assert torch.equal(fake_quantize(x, scale, zp, spec), x_hat)


@settings(max_examples=50, deadline=None)
@given(cases())
def test_zero_is_exact_and_outliers_clamp(case: tuple[torch.Tensor, QuantSpec]) -> None:
    x, spec = case
    scale, zp = calc_qparams_for(x, spec)
    zeros = torch.zeros_like(x)
    assert torch.equal(dequantize_tensor(quantize_tensor(zeros, scale, zp, spec), scale, zp, spec), zeros)
    step = _broadcast(scale, x, spec)
    top = x.amax() if x.amax() > 0 else torch.tensor(0.0)
    bottom = x.amin() if x.amin() < 0 else torch.tensor(0.0)
    above = top.abs() * 2 + step * (spec.qmax - spec.qmin + 2)
    below = -(bottom.abs() * 2 + step * (spec.qmax - spec.qmin + 2))
    assert (quantize_tensor(above, scale, zp, spec).int() == spec.qmax).all()
    assert (quantize_tensor(below, scale, zp, spec).int() == spec.qmin).all()


@pytest.mark.parametrize(("bits", "signed", "symmetric", "qmin", "qmax"), [
    (8, True, True, -127, 127), (8, True, False, -128, 127), (8, False, False, 0, 255),
    (4, True, True, -7, 7), (4, False, False, 0, 15), (2, True, False, -2, 1),
])
def test_integer_ranges(bits: int, signed: bool, symmetric: bool, qmin: int, qmax: int) -> None:
    spec = QuantSpec(bits=bits, signed=signed, symmetric=symmetric)
    assert (spec.qmin, spec.qmax) == (qmin, qmax)


def test_compute_qparams_by_hand() -> None:
    sym = QuantSpec()
    scale, zp = compute_qparams(torch.tensor(-2.0), torch.tensor(1.27), sym)
    assert scale.item() == pytest.approx(2.0 / 127) and zp.item() == 0
    asym = QuantSpec(signed=False, symmetric=False)
    scale, zp = compute_qparams(torch.tensor(-1.0), torch.tensor(3.0), asym)
    assert scale.item() == pytest.approx(4.0 / 255)
    assert zp.item() == round(1.0 / (4.0 / 255))  # 64
    # positive-only data: the range is widened to include 0, so z = qmin
    scale, zp = compute_qparams(torch.tensor(2.0), torch.tensor(5.1), asym)
    assert scale.item() == pytest.approx(5.1 / 255) and zp.item() == 0
    scale, zp = compute_qparams(torch.tensor(0.0), torch.tensor(0.0), sym)
    assert scale.item() == pytest.approx(1e-8) and zp.item() == 0


@pytest.mark.parametrize("axis", [1, -1])
def test_per_channel_equals_per_tensor_on_each_slice(axis: int) -> None:
    x = torch.randn(3, 5, 4) * torch.arange(1, 5)  # channels of different ranges
    spec = QuantSpec(symmetric=False, granularity="per_channel", axis=axis)
    scale, zp = calc_qparams_for(x, spec)
    assert scale.shape == (x.shape[axis],)
    for c, piece in enumerate(x.unbind(axis)):
        s, z = calc_qparams_for(piece, QuantSpec(symmetric=False))
        assert scale[c].item() == pytest.approx(s.item()) and zp[c].item() == z.item()
        x_hat = fake_quantize(x, scale, zp, spec).select(axis, c)
        assert torch.equal(x_hat, fake_quantize(piece, s, z, QuantSpec(symmetric=False)))


def test_per_group_shapes_and_values() -> None:
    w = torch.randn(4, 128)
    spec = QuantSpec(bits=4, granularity="per_group", group_size=32)
    scale, zp = calc_qparams_for(w, spec)
    assert scale.shape == (4, 4) and zp.shape == (4, 4)
    expected = w.reshape(4, 4, 32).abs().amax(-1) / 7  # (out, groups)
    assert torch.allclose(scale, expected)
    w_hat = fake_quantize(w, scale, zp, spec)
    assert torch.allclose(w_hat, fake_quantize(w, scale.unsqueeze(-1), zp.unsqueeze(-1), spec))
    assert sqnr_db(w, w_hat) > 15.0


def test_per_group_rejects_indivisible_last_dim() -> None:
    with pytest.raises(ConfigError, match=r"128.*48"):
        calc_qparams_for(torch.randn(4, 128), QuantSpec(granularity="per_group", group_size=48))


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"bits": 9}, "bits=9"), ({"bits": 1}, "bits=1"),
    ({"granularity": "per_row"}, "per_tensor, per_channel, per_group"),
    ({"signed": False}, "symmetric"),
    ({"granularity": "per_group"}, "group_size=None"),
    ({"granularity": "per_group", "group_size": 0}, "group_size=0"),
])
def test_spec_validation(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        QuantSpec(**kwargs)


def test_wrong_qparam_count_and_axis_are_config_errors() -> None:
    spec = QuantSpec(granularity="per_channel", axis=1)
    with pytest.raises(ConfigError, match="need 5 values"):
        quantize_tensor(torch.randn(2, 5), torch.ones(3), torch.zeros(3, dtype=torch.int32), spec)
    with pytest.raises(ConfigError, match="axis=3"):
        calc_qparams_for(torch.randn(2, 5), QuantSpec(granularity="per_channel", axis=3))


def test_sqnr_db() -> None:
    x = torch.tensor([3.0, 4.0])
    assert sqnr_db(x, x) == math.inf
    assert sqnr_db(x, x + torch.tensor([0.0, 0.5])) == pytest.approx(10 * np.log10(25 / 0.25))
    # int8 on a Gaussian: about 6 dB per bit minus the clipping headroom
    g = torch.randn(4096)
    s, z = calc_qparams_for(g, QuantSpec())
    assert 35.0 < sqnr_db(g, fake_quantize(g, s, z, QuantSpec())) < 45.0
