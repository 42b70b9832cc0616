"""DistillConfig validates itself; the alpha schedules."""

from __future__ import annotations

import dataclasses

import pytest

from torchslim.distillation import DistillConfig
from torchslim.errors import ConfigError, UnknownNameError


@pytest.mark.parametrize("kwargs, needle", [
    ({"temperature": 0}, "temperature=0"),
    ({"alpha": 1.5}, "alpha=1.5"),
    ({"alpha_schedule": "cosine"}, "cosine"),
    ({"features": ["layer3"]}, "layer3:layer3"),
    ({"features": "layer3:layer3"}, "pairs"),
    ({"feature_weight": -1.0}, "feature_weight=-1.0"),
    ({"teacher_weights": "best"}, "uniform"),
    ({"teacher_weights": (1.0, -1.0)}, "non-negative"),
    ({"cache_teacher": True, "features": ["layer3:layer3"]}, "cache_teacher=False"),
    ({"train": {"epochs": 2}}, "TrainConfig"),
])
def test_bad_values_raise_one_clear_error(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        DistillConfig(**kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_unknown_schedule_is_an_unknown_name() -> None:
    with pytest.raises(UnknownNameError, match="constant"):
        DistillConfig(alpha_schedule="cosine")


def test_frozen_keyword_only_and_normalised() -> None:
    cfg = DistillConfig(features=["layer3:layer2", ("layer1", "layer1")], teacher_weights=[2, 1])
    assert cfg.features == (("layer3", "layer2"), ("layer1", "layer1"))
    assert cfg.teacher_weights == (2.0, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.alpha = 0.1  # type: ignore[misc]
    with pytest.raises(TypeError):
        DistillConfig(4.0)  # type: ignore[misc]


@pytest.mark.parametrize("schedule, expected", [
    ("constant", (0.8, 0.8, 0.8)), ("warmup", (0.0, 0.4, 0.8)), ("decay", (0.8, 0.4, 0.0))])
def test_alpha_schedules(schedule: str, expected: tuple[float, ...]) -> None:
    cfg = DistillConfig(alpha=0.8, alpha_schedule=schedule)
    got = tuple(cfg.alpha_at(p) for p in (0.0, 0.5, 1.0))
    assert got == pytest.approx(expected)
