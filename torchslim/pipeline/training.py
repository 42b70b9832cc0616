"""The option tables that set ``TrainConfig`` fields: ``torchslim train``, a recipe's
``pretrain`` block and its ``finetune`` stage. ``TrainConfig`` defines and validates every
one of them; a table holds only the defaults these commands use."""

from __future__ import annotations

from typing import Any

from torchslim.pipeline.options import OptionTable, option
from torchslim.train import TrainConfig

__all__ = ["TRAIN", "PRETRAIN", "FINETUNE"]


def _train_config(table: OptionTable, values: dict[str, Any]) -> TrainConfig:
    return TrainConfig(**table.kwargs(TrainConfig, values))


# `torchslim train` (its --threads is the command's own, shared with data loading)
TRAIN = OptionTable("train", (
    option("epochs", TrainConfig, help="Training epochs."),
    option("lr", TrainConfig, help="Peak learning rate (one-cycle schedule)."),
    option("seed", TrainConfig, help="Seed of the initialisation, shuffling and augmentation."),
), build=_train_config)

# a recipe's `pretrain:` block: train a zoo model first (once; cached like the teacher)
PRETRAIN = OptionTable("pretrain", (
    option("epochs", TrainConfig),
    option("lr", TrainConfig),
    option("seed", TrainConfig),
), build=_train_config)

# a recipe's finetune stage: plain fine-tuning with hard labels (e.g. after pruning)
FINETUNE = OptionTable("finetune", (
    option("epochs", TrainConfig, default=1),
    option("lr", TrainConfig, default=0.01),
    option("schedule", TrainConfig, default="cosine"),
    option("max_steps_per_epoch", TrainConfig),
), build=_train_config)
