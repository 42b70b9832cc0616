"""What the robustness block measures (``RobustnessConfig``) and the limits a budget puts
on it (``RobustnessLimits``): frozen, keyword-only, and checked when built."""

from __future__ import annotations

from dataclasses import dataclass

from torchslim.errors import ConfigError
from torchslim.evaluation.robustness.corruptions import CORRUPTIONS

__all__ = ["RobustnessConfig", "RobustnessLimits", "DEFAULT_CORRUPTIONS"]

DEFAULT_CORRUPTIONS = ("gaussian_noise", "blur", "brightness", "contrast", "jpeg", "shift")
MAX_SEVERITY = 5


@dataclass(frozen=True, kw_only=True)
class RobustnessConfig:
    """Options of the robustness block; the defaults fit the demo's time budget.

    ``n`` = 500 test images, stratified by class (50 per Fashion-MNIST class), seed 0. The
    standard error of an accuracy p on n images is sqrt(p (1 - p) / n): 1.3 points at
    p = 0.9 and n = 500 (0.9 at 1,000). A candidate's change against the baseline on the
    same images is tighter, about sqrt(flip fraction / n): 0.9 points when 4 % of the
    predictions flip. Cost decides the rest: a candidate is scored on 1 + corruptions x
    severities + attacks = 22 versions of the subset, and the baseline's attacks take 7
    forward+backward passes (FGSM twice, PGD-5); see the package docstring for the
    measured seconds. Calibration and the per-class tests should use the whole split's
    logits, which ``evaluate`` already has (``RobustnessSuite.evaluate(clean=...)``).
    """

    n: int | None = 500                   # images drawn from the split; None = all of it
    seed: int = 0                         # fixes the subset, the noise and the shifts
    corruptions: tuple[str, ...] = DEFAULT_CORRUPTIONS
    severities: tuple[int, ...] = (1, 3, 5)   # of 1..5, ImageNet-C style; 0 = identity
    fgsm_eps: tuple[float, ...] = (2 / 255, 8 / 255)   # L-inf radius in pixel units [0, 1]
    pgd_eps: tuple[float, ...] = (2 / 255,)
    pgd_steps: int = 5
    pgd_step_ratio: float = 2.5           # step = ratio * eps / steps (Madry et al.)
    batch_size: int = 500
    bins: int = 15                        # equal-width confidence bins of the ECE
    alpha: float = 0.05                   # significance level of the McNemar tests
    holm: bool = True                     # Holm-correct the per-class tests (10 classes
                                          # at alpha = 0.05 would flag one in 4 runs by chance)
    white_box: bool = True                # also attack a torch candidate through its own gradients

    def __post_init__(self) -> None:
        if self.n is not None and self.n < 1:
            raise ConfigError(f"n={self.n} must be >= 1 (or None for the whole split)")
        bad = [s for s in self.severities if not (isinstance(s, int) and 0 <= s <= MAX_SEVERITY)]
        if bad:
            raise ConfigError(f"severities {bad} must be integers in [0, {MAX_SEVERITY}]")
        eps = [e for e in (*self.fgsm_eps, *self.pgd_eps) if not 0 <= e <= 1]
        if eps:
            raise ConfigError(f"eps {eps} must be in [0, 1] (pixel units; 8/255 = 0.031)")
        for name in ("pgd_steps", "batch_size", "bins"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if not self.pgd_step_ratio > 0:
            raise ConfigError(f"pgd_step_ratio={self.pgd_step_ratio} must be > 0")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha={self.alpha} must be in (0, 1)")
        for name in self.corruptions:
            CORRUPTIONS.get(name)  # UnknownNameError listing the known corruptions


@dataclass(frozen=True, kw_only=True)
class RobustnessLimits:
    """Budget limits on a candidate's robustness block against the baseline's; None = no limit.

    Drops are fractions (0.02 = 2 points) except ``max_class_drop_points``, which is in
    points as a per-class budget is usually written ("no class loses more than 3 points").
    """

    max_corruption_drop: float | None = None     # mean top-1 over all corruptions
    max_ece_increase: float | None = None
    max_class_drop_points: float | None = None   # worst class, clean top-1
    max_adversarial_drop: float | None = None    # worst attack, worst-case of transfer/white-box

    def __post_init__(self) -> None:
        for name in ("max_corruption_drop", "max_ece_increase", "max_class_drop_points",
                     "max_adversarial_drop"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ConfigError(f"{name}={value} must be >= 0 (or None for no limit)")
