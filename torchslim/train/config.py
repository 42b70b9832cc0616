"""``TrainConfig``: every option of the one training loop, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from torchslim.errors import ConfigError
from torchslim.train.world import DistributedConfig

__all__ = ["TrainConfig", "OPTIMIZERS", "SCHEDULES"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "constant")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How ``fit`` trains: epochs, optimizer, schedule, threads (fine-tuning, QAT and
    distillation use the same loop and take one of these)."""

    epochs: int = 6
    lr: float = 0.1                 # peak learning rate
    optimizer: str = "sgd"          # "sgd" (Nesterov momentum) or "adamw"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"      # linear warm-up then cosine decay: best on few epochs;
                                    # "cosine" decays from the first step (fine-tuning)
    warmup_fraction: float = 0.15   # share of steps spent warming up ("onecycle" only)
    label_smoothing: float = 0.0
    seed: int = 0
    threads: int | None = None      # torch threads; None keeps torch's default
    channels_last: bool = True      # NHWC makes oneDNN convolutions ~2x faster on CPU
    max_steps_per_epoch: int | None = None  # cap for quick runs and tests
    keep_masks: bool = True         # pruned (masked) weights stay exactly zero while training
    # data-parallel over a process group; None: only when started by torchrun
    distributed: DistributedConfig | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs={self.epochs} must be >= 1")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr} must be > 0")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer={self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule={self.schedule!r}; choose one of {SCHEDULES}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"warmup_fraction={self.warmup_fraction} must be in [0, 1)")
        for name in ("max_steps_per_epoch", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ConfigError(f"{name}={value!r} must be an integer >= 1 or None")
        if self.distributed is not None and not isinstance(self.distributed, DistributedConfig):
            raise ConfigError(f"distributed={self.distributed!r} must be a "
                              "torchslim.train.DistributedConfig or None")
