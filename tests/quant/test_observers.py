"""Observers: exact statistics on known data, clipping quality, bounded memory."""

from __future__ import annotations

import math

import pytest
import torch

from torchslim.errors import ConfigError, UnknownNameError
from torchslim.quant import (OBSERVERS, QuantSpec, calc_qparams_for, fake_quantize,
                             make_observer, sqnr_db)

SYM = QuantSpec()
ALL = ("minmax", "moving_average", "percentile", "entropy", "mse")


def _gaussian_with_outliers(n: int = 20000) -> tuple[torch.Tensor, torch.Tensor]:
    bulk = torch.randn(n)
    outliers = torch.tensor([60.0, -55.0, 48.0, -62.0])
    return torch.cat([bulk, outliers]), bulk


def _sqnr_with(name: str, x: torch.Tensor, measure_on: torch.Tensor,
               spec: QuantSpec = SYM, **kwargs: object) -> float:
    obs = make_observer(name, spec, **kwargs)
    obs(x)
    scale, zp = obs.calculate_qparams()
    return sqnr_db(measure_on, fake_quantize(measure_on, scale, zp, spec))


def test_registry_lists_every_observer() -> None:
    assert OBSERVERS.names() == sorted(ALL)
    with pytest.raises(UnknownNameError, match="entropy"):
        make_observer("kl", SYM)


@pytest.mark.parametrize("name", ALL)
def test_no_data_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match="saw no data; run calibration batches first"):
        make_observer(name, SYM).calculate_qparams()


@pytest.mark.parametrize("name", ALL)
def test_forward_returns_input_unchanged(name: str) -> None:
    x = torch.randn(8, 3, requires_grad=True)
    assert make_observer(name, SYM)(x) is x


def test_minmax_exact() -> None:
    obs = make_observer("minmax", QuantSpec(signed=False, symmetric=False))
    obs(torch.tensor([-1.0, 0.5, 2.0]))
    obs(torch.tensor([0.0, 3.0]))
    assert obs.min_val.item() == -1.0 and obs.max_val.item() == 3.0
    scale, zp = obs.calculate_qparams()
    assert scale.item() == pytest.approx(4.0 / 255) and zp.item() == 64


def test_moving_average_matches_the_ema_by_hand() -> None:
    obs = make_observer("moving_average", SYM, momentum=0.1)
    obs(torch.tensor([-1.0, 2.0]))
    obs(torch.tensor([-3.0, 4.0]))
    assert obs.min_val.item() == pytest.approx(-1.0 + 0.1 * (-3.0 + 1.0))  # -1.2
    assert obs.max_val.item() == pytest.approx(2.0 + 0.1 * (4.0 - 2.0))  # 2.2
    assert obs.calculate_qparams()[0].item() == pytest.approx(2.2 / 127)


def test_minmax_per_group() -> None:
    obs = make_observer("minmax", QuantSpec(granularity="per_group", group_size=8))
    w = torch.randn(3, 16)
    obs(w)
    scale, zp = obs.calculate_qparams()
    expected, _ = calc_qparams_for(w, QuantSpec(granularity="per_group", group_size=8))
    assert scale.shape == (3, 2) and torch.allclose(scale, expected)


@pytest.mark.parametrize("name", ["percentile", "entropy", "mse"])
def test_clipping_observers_refuse_per_group(name: str) -> None:
    with pytest.raises(ConfigError, match="minmax"):
        make_observer(name, QuantSpec(granularity="per_group", group_size=8))


def test_percentile_clips_a_single_outlier() -> None:
    x = torch.randn(50000)
    x[123] = 1000.0
    obs = make_observer("percentile", SYM, percentile=99.99)
    obs(x)
    scale = obs.calculate_qparams()[0].item()
    assert scale < 6.0 / 127  # about the 99.99th percentile of |N(0, 1)|, not 1000
    assert scale > 3.0 / 127
    assert scale < calc_qparams_for(x, SYM)[0].item() / 100


def test_percentile_asymmetric_clips_each_tail() -> None:
    x = torch.cat([torch.rand(20000) * 2.0, torch.tensor([-500.0, 900.0])])
    obs = make_observer("percentile", QuantSpec(signed=False, symmetric=False), percentile=99.9)
    obs(x)
    scale, zp = obs.calculate_qparams()
    assert scale.item() < 2.1 / 255 and zp.item() == 0  # both outliers clipped


def test_entropy_beats_minmax_on_the_bulk() -> None:
    x, bulk = _gaussian_with_outliers()
    obs = make_observer("entropy", SYM)
    obs(x)
    threshold = obs.calculate_qparams()[0].item() * 127
    assert 2.0 < threshold < 0.25 * x.abs().max().item()
    assert _sqnr_with("entropy", x, bulk) > _sqnr_with("minmax", x, bulk) + 10.0


def _kl_reference(hist: torch.Tensor, i: int, levels: int) -> float:
    """KL(P || Q) for stop bin i, written the slow, literal way."""
    clipped = hist[:i].clone().double()
    p = clipped.clone()
    p[-1] += hist[i:].sum()           # outliers folded into P only (TensorRT)
    q = torch.zeros_like(p)
    m = i // levels
    for j in range(levels):
        stop = i if j == levels - 1 else (j + 1) * m
        nonzero = p[j * m:stop] > 0    # Q spreads the clipped mass over P's non-empty bins
        if nonzero.any():
            q[j * m:stop][nonzero] = clipped[j * m:stop].sum() / nonzero.sum()
    p, q = p / p.sum(), q / q.sum()
    keep = p > 0
    if bool((q[keep] == 0).any()):
        return float("inf")
    return float((p[keep] * torch.log(p[keep] / q[keep])).sum())


def test_entropy_closed_form_matches_the_literal_kl() -> None:
    obs = make_observer("entropy", SYM, bins=64, levels=8)
    sample = torch.randn(3000) * torch.rand(3000)  # peaked, with gaps in the tail
    obs(sample)
    hist = obs.hist[0]
    kls = [_kl_reference(hist, i, 8) for i in range(8, 65)]
    best = 8 + min(range(len(kls)), key=kls.__getitem__)
    assert int(obs._best_stop()[0]) == best


def test_entropy_rebins_when_the_range_grows() -> None:
    obs = make_observer("entropy", SYM)
    obs(torch.randn(1000))
    obs(torch.randn(1000) * 10)
    assert obs.hist.sum().item() == 2000 and obs.hist.shape == (1, 2048)
    amax = max(-obs.min_val.item(), obs.max_val.item())
    assert obs.hist_max.item() == pytest.approx(amax)


@pytest.mark.parametrize("dist", ["laplace", "student_t"])
def test_mse_at_least_as_good_as_minmax_on_heavy_tails(dist: str) -> None:
    gen = torch.Generator().manual_seed(1)
    u = torch.rand(20000, generator=gen) - 0.5
    if dist == "laplace":
        x = -torch.sign(u) * torch.log1p(-2 * u.abs())
    else:  # Student-t, 3 degrees of freedom
        z = torch.randn(20000, generator=gen)
        chi2 = (torch.randn(3, 20000, generator=gen) ** 2).sum(0)
        x = z / torch.sqrt(chi2 / 3)
    for spec in (SYM, QuantSpec(bits=4)):
        mse, minmax = _sqnr_with("mse", x, x, spec), _sqnr_with("minmax", x, x, spec)
        assert mse >= minmax
    assert _sqnr_with("mse", x, x, QuantSpec(bits=4)) > _sqnr_with("minmax", x, x,
                                                                    QuantSpec(bits=4)) + 1.0


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("axis", [1, -1])
def test_per_channel_gives_one_scale_per_channel(name: str, axis: int) -> None:
    spec = QuantSpec(granularity="per_channel", axis=axis)
    obs = make_observer(name, spec)
    x = torch.randn(64, 4, 5, 4) * torch.tensor([0.5, 1.0, 2.0, 4.0])  # channel c on dim 3
    x = x if axis == -1 else x.movedim(-1, 1)
    for batch in x.split(16):
        obs(batch)
    scale, zp = obs.calculate_qparams()
    assert scale.shape == (4,) and zp.shape == (4,)
    ratios = scale / scale[0]
    assert torch.allclose(ratios, torch.tensor([1.0, 2.0, 4.0, 8.0]), rtol=0.35)


def _state_bytes(obs: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in obs.state_dict().values())


@pytest.mark.parametrize("name", ALL)
def test_memory_stays_bounded(name: str) -> None:
    kwargs: dict[str, object] = {"max_samples": 512} if name in ("percentile", "mse") else {}
    obs = make_observer(name, QuantSpec(granularity="per_channel", axis=1), **kwargs)
    sizes = []
    for i in range(50):
        obs(torch.randn(32, 4, 8) * (1 + i))  # growing range forces entropy re-binning
        sizes.append(_state_bytes(obs))
    assert len(set(sizes)) == 1
    assert sizes[0] < 64 * 1024
    assert math.isfinite(obs.calculate_qparams()[0].sum().item())


@pytest.mark.parametrize("name", ALL)
def test_calibrated_state_loads_into_a_fresh_observer(name: str) -> None:
    spec = QuantSpec(granularity="per_channel", axis=1)
    src = make_observer(name, spec)
    src(torch.randn(16, 3, 5))
    dst = make_observer(name, spec)
    dst.load_state_dict(src.state_dict())
    for a, b in zip(src.calculate_qparams(), dst.calculate_qparams()):
        assert torch.equal(a, b)


def test_entropy_is_not_fooled_by_the_zeros_of_a_relu() -> None:
    """Half of a post-ReLU tensor is exactly 0; counting that spike made KL stop where one
    level is one bin (a clip at 1/4 of the max). Zeros are exact, so they are skipped."""
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0)).relu()
    obs = make_observer("entropy", QuantSpec(signed=False, symmetric=False))
    obs(x)
    lo, hi = obs._range()
    assert float(lo) == 0.0
    assert 0.6 * float(x.max()) < float(hi) <= float(x.max()) + 1e-6
