"""What a training callback sees (``TrainState``) and the hooks it may override."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchslim.train.config import TrainConfig

__all__ = ["Callback", "TrainState"]


@dataclass
class TrainState:
    """What callbacks see. ``history`` has one dict per finished epoch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    config: TrainConfig
    epoch: int = 0                  # 0-based index of the current epoch
    step: int = 0                   # optimizer steps taken so far
    total_steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stop: bool = False              # a callback sets this to end training early


class Callback:
    """Override what you need. Called in list order."""

    def on_train_start(self, state: TrainState) -> None: ...
    def on_epoch_start(self, state: TrainState) -> None: ...
    def on_step_end(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None: ...
    def on_train_end(self, state: TrainState) -> None: ...
