"""``DistillConfig``: every distillation option in one frozen, self-validating dataclass."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from torchslim._registry import Registry
from torchslim.errors import ConfigError
from torchslim.train import TrainConfig

__all__ = ["DistillConfig", "ALPHA_SCHEDULES", "TEACHER_WEIGHTINGS"]

# name -> fn(alpha, progress in [0, 1]) -> the KD weight at that point of training
ALPHA_SCHEDULES: Registry[Callable[[float, float], float]] = Registry("alpha schedule")
ALPHA_SCHEDULES.add("constant", lambda alpha, progress: alpha)
ALPHA_SCHEDULES.add("warmup", lambda alpha, progress: alpha * progress)        # 0 -> alpha
ALPHA_SCHEDULES.add("decay", lambda alpha, progress: alpha * (1.0 - progress))  # alpha -> 0

# how the soft targets of several teachers are weighted when no weights are given
TEACHER_WEIGHTINGS = ("uniform", "accuracy", "learned")

LayerPair = tuple[str, str]


def _pairs(name: str, value: object) -> tuple[LayerPair, ...]:
    """Accept ``[("layer3", "layer3")]`` or ``["layer3:layer3"]``; return tuples of tuples."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ConfigError(f"{name}={value!r} must be a list of (student_layer, teacher_layer) "
                          "pairs or 'student:teacher' strings")
    out = []
    for item in value:  # type: ignore[union-attr]
        pair = tuple(item.split(":")) if isinstance(item, str) else tuple(item)
        if len(pair) != 2 or not all(isinstance(p, str) and p for p in pair):
            raise ConfigError(f"{name}: {item!r} is not a (student_layer, teacher_layer) pair; "
                              "write it as ('layer3', 'layer3') or 'layer3:layer3'")
        out.append((pair[0], pair[1]))
    return tuple(out)


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """Loss = alpha·T²·KL(teacher_T ‖ student_T) + (1 − alpha)·CE + hints + attention.

    ``features`` and ``attention`` name (student layer, teacher layer) pairs; with several
    teachers they refer to the first one. ``teacher_weights`` weights the teachers' soft
    targets: explicit numbers, or "uniform", "accuracy" (proportional to validation top-1)
    or "learned" (mixture weights fitted on the validation split).
    """

    temperature: float = 4.0         # softens both distributions; T² keeps gradients in scale
    alpha: float = 0.9               # weight of the KD term; 1 - alpha goes to hard labels
    alpha_schedule: str = "constant"  # "constant", "warmup" (0 -> alpha), "decay" (alpha -> 0)
    features: tuple[LayerPair, ...] = ()   # FitNets hints: MSE through an adapter if needed
    feature_weight: float = 1.0
    attention: tuple[LayerPair, ...] = ()  # attention transfer (Zagoruyko & Komodakis)
    attention_weight: float = 500.0  # the paper's beta/2 (beta = 1000): unit-norm maps, tiny MSE
    teacher_weights: tuple[float, ...] | str = "uniform"
    cache_teacher: bool = False      # run the teacher once over the (unaugmented) train set
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"temperature={self.temperature} must be > 0 (1-8 is usual)")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha={self.alpha} must be in [0, 1] (the KD share of the loss)")
        ALPHA_SCHEDULES.get(self.alpha_schedule)
        object.__setattr__(self, "features", _pairs("features", self.features))
        object.__setattr__(self, "attention", _pairs("attention", self.attention))
        for name in ("feature_weight", "attention_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        self._check_teacher_weights()
        if self.cache_teacher and (self.features or self.attention):
            raise ConfigError("cache_teacher=True caches the teacher's logits only; feature "
                              "hints and attention transfer need the teacher at every step, "
                              "so set cache_teacher=False")
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"train={self.train!r} must be a torchslim.TrainConfig")

    def _check_teacher_weights(self) -> None:
        w = self.teacher_weights
        if isinstance(w, str):
            if w not in TEACHER_WEIGHTINGS:
                raise ConfigError(f"teacher_weights={w!r}; choose one of {TEACHER_WEIGHTINGS} "
                                  "or give one number per teacher")
            return
        weights = tuple(float(v) for v in w)
        if not weights or min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError(f"teacher_weights={w!r} must be non-negative numbers with a "
                              "positive sum, one per teacher")
        object.__setattr__(self, "teacher_weights", weights)

    def alpha_at(self, progress: float) -> float:
        """The KD weight after ``progress`` (0-1) of the training steps."""
        return ALPHA_SCHEDULES.get(self.alpha_schedule)(self.alpha, min(max(progress, 0.0), 1.0))
