"""The option tables that set ``TrainConfig`` fields: ``torchslim train``, a recipe's
``pretrain`` block and its ``finetune`` stage. ``TrainConfig`` defines and validates every
one of them; a table holds only the defaults these commands use. ``prepare_train_output``
decides whether ``torchslim train`` starts, resumes or refuses the run in its output."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from torchslim import _io
from torchslim.errors import ConfigError
from torchslim.pipeline.options import OptionTable, option
from torchslim.train import TrainConfig

__all__ = ["TRAIN", "PRETRAIN", "FINETUNE", "prepare_train_output", "STATE_DIR"]

logger = logging.getLogger(__name__)


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


# ------------------------------------------------------------ `torchslim train` outputs

STATE_DIR = "state"       # fit's resume set (``torchslim.train.state``) in the output


def prepare_train_output(out: Path, settings: dict[str, Any], *, resume: bool,
                         overwrite: bool) -> str:
    """Decide what ``torchslim train`` does with ``out``: "start", "resume" or "restart".

    The settings of a run are saved with each epoch's resume set (its checkpoint's
    ``settings``). A run with the same ``settings`` resumes (after a crash; a finished one
    is only measured again). One with other settings is refused unless ``overwrite``
    (start again) or ``resume`` (continue it with the new settings, e.g. more epochs)."""
    from torchslim.train.state import saved_meta

    state = _io.inside(out, STATE_DIR)
    meta = saved_meta(state)
    if overwrite:
        if state.is_symlink():
            raise ConfigError(f"{state} is a symlink; torchslim will not delete through it")
        shutil.rmtree(state, ignore_errors=True)
        return "restart" if meta is not None else "start"
    if meta is None:
        if resume:
            raise ConfigError(f"--resume: {out} holds no training run to resume; drop "
                              "--resume to start one")
        return "start"
    changed = _differences(meta.get("settings"), settings)
    if changed and not resume:
        raise ConfigError(
            f"{out} holds a training run with other settings ({changed}); pass --overwrite "
            "to start again, --resume to continue it with these settings, or another --out")
    if changed:
        logger.warning("continuing the run in %s with changed settings: %s", out, changed)
    return "resume"


def _differences(old: Any, new: dict[str, Any]) -> str:
    """``epochs 3 -> 5, lr 0.1 -> 0.2`` (an older run that recorded none: says so)."""
    if not isinstance(old, dict):
        return "settings not recorded"
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys
                     if old.get(k) != new.get(k))
