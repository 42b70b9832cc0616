"""The loss functions against their definitions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from torchslim.distillation import (attention_loss, attention_map, hint_loss, kd_loss, soft_kd_loss,
                               soft_targets)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 8.0])
def test_kd_loss_is_t_squared_kl_batchmean(temperature: float) -> None:
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    p = F.softmax(t / temperature, 1)
    q = F.log_softmax(s / temperature, 1)
    expected = (p * (p.log() - q)).sum(1).mean() * temperature ** 2
    assert kd_loss(s, t, temperature).item() == pytest.approx(expected.item(), rel=1e-5)


def test_kd_loss_is_zero_when_student_matches_teacher() -> None:
    t = torch.randn(4, 10)
    assert kd_loss(t.clone(), t, 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_t_squared_keeps_the_gradient_scale() -> None:
    """Hinton's argument: for logits small against T, ∂KL/∂s ≈ (s - t) / (N·C·T²), so the
    T² factor makes the gradient of the KD term independent of T."""
    torch.manual_seed(0)
    s, t = torch.randn(64, 10) * 0.1, torch.randn(64, 10) * 0.1
    norms = []
    for temperature in (4.0, 8.0):
        x = s.clone().requires_grad_()
        kd_loss(x, t, temperature).backward()
        norms.append(x.grad.norm().item())
    assert norms[0] == pytest.approx(norms[1], rel=0.05)


def test_soft_targets_mix_teachers_by_weight() -> None:
    a, b = torch.randn(3, 10), torch.randn(3, 10)
    mix = soft_targets([a, b], [3.0, 1.0], 2.0)
    expected = 0.75 * F.softmax(a / 2, 1) + 0.25 * F.softmax(b / 2, 1)
    torch.testing.assert_close(mix, expected)
    assert torch.allclose(mix.sum(1), torch.ones(3))
    torch.testing.assert_close(soft_kd_loss(a, F.softmax(b / 2, 1), 2.0), kd_loss(a, b, 2.0))


def test_hint_loss_pools_the_larger_map() -> None:
    s, t = torch.randn(2, 8, 14, 14), torch.randn(2, 8, 7, 7)
    expected = F.mse_loss(F.adaptive_avg_pool2d(s, 7), t)
    assert hint_loss(s, t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_attention_map_is_unit_norm_over_positions() -> None:
    a = attention_map(torch.randn(3, 16, 7, 7))
    assert a.shape == (3, 49)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3))


def test_attention_loss_ignores_channel_count_and_scale() -> None:
    f = torch.randn(2, 8, 7, 7)
    # same spatial energy, different channel count and magnitude: same attention map
    g = torch.cat([f, f], dim=1) * 3.0
    assert attention_loss(f, g).item() == pytest.approx(0.0, abs=1e-7)
    assert attention_loss(torch.randn(2, 4, 14, 14), f).item() > 0
    assert math.isfinite(attention_loss(torch.randn(2, 4, 14, 14), f).item())
