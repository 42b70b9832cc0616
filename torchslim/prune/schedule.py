"""Gradual pruning (Zhu & Gupta 2017): reach the final sparsity in steps, training between.

``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3`` prunes fast while many
weights are redundant and slowly near the end; "linear" spaces the steps evenly.
Unstructured masks grow inside one ``fit`` through the ``GradualSparsity`` callback;
structured pruning changes layer shapes, so ``prune_gradually_`` alternates pruning and
recovery fine-tuning.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from torchslim.errors import ConfigError
from torchslim.evaluation.model_stats import count_macs, count_params
from torchslim.prune.sparsity import SparsityConfig, sparsify_
from torchslim.prune.structured import ChannelPruneConfig, PruneResult, prune_channels_
from torchslim.train import Callback, TrainConfig, TrainState, fit
from torchslim.train.masks import masked_layers

logger = logging.getLogger(__name__)

SCHEDULES = ("cubic", "linear")


def sparsity_at(t: float, *, final: float, initial: float = 0.0, schedule: str = "cubic") -> float:
    """Sparsity after a fraction ``t`` in [0, 1] of the pruning steps."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule={schedule!r}; choose one of {SCHEDULES}")
    t = min(max(t, 0.0), 1.0)
    if schedule == "linear":
        return initial + (final - initial) * t
    return final + (initial - final) * (1 - t) ** 3


class GradualSparsity(Callback):
    """Raise unstructured/N:M sparsity from 0 to ``config.target`` during training.

    Pruning happens every ``every`` steps between ``start`` and ``end`` (fractions of the
    run); masks only grow, and are re-applied after every optimizer step."""

    def __init__(self, config: SparsityConfig, *, start: float = 0.0, end: float = 0.75,
                 every: int = 50, schedule: str = "cubic") -> None:
        if not 0 <= start < end <= 1:
            raise ConfigError(f"start={start}, end={end}: need 0 <= start < end <= 1")
        self.config, self.start, self.end, self.every, self.schedule = config, start, end, every, schedule
        self.masks: list[tuple[Tensor, Tensor]] = []
        self.history: list[tuple[int, float]] = []

    def on_step_end(self, state: TrainState) -> None:
        begin, stop = self.start * state.total_steps, self.end * state.total_steps
        due = (state.step - begin) % self.every == 0 or state.step >= stop > state.step - 1
        if begin <= state.step <= stop + 1 and due:
            self._prune_to(state.model, (state.step - begin) / max(stop - begin, 1))
        with torch.no_grad():
            for weight, keep in self.masks:
                weight.mul_(keep)

    def on_train_end(self, state: TrainState) -> None:
        if not self.history or self.history[-1][1] < self.config.target - 1e-9:
            self._prune_to(state.model, 1.0)

    def _prune_to(self, model: nn.Module, t: float) -> None:
        target = sparsity_at(t, final=self.config.target, schedule=self.schedule)
        if self.config.pattern == "n:m" and t < 1.0:
            cfg = dataclasses.replace(self.config, pattern="unstructured", scope="layer",
                                      sparsity=target)  # ramp up, then snap to N:M at the end
        else:
            cfg = dataclasses.replace(self.config, sparsity=target)
        sparsify_(model, cfg)
        self.masks = [(m.weight, m.weight.detach() != 0) for _, m in masked_layers(model)]
        self.history.append((int(t * 1000), target))


def prune_gradually_(model: nn.Module, config: ChannelPruneConfig, *, example_inputs: Tensor,
                     train: Iterable[Any], val: Iterable[Any] | None = None, steps: int = 5,
                     finetune: TrainConfig | None = None, schedule: str = "cubic",
                     data: Iterable[Any] | None = None) -> list[dict[str, Any]]:
    """Structured pruning in ``steps`` steps towards ``config``'s target, with recovery
    fine-tuning (``finetune``; None skips it) after each. Returns one record per step."""
    if steps < 1:
        raise ConfigError(f"steps={steps} must be >= 1")
    if config.ratios is not None and steps > 1:
        raise ConfigError("per-group ratios are applied in one step; use steps=1")
    macs0 = count_macs(model, example_inputs=example_inputs)
    params0 = count_params(model)
    final_kept = _final_kept(config)
    log: list[dict[str, Any]] = []
    kept_before = 1.0
    for i in range(1, steps + 1):
        kept = 1 - sparsity_at(i / steps, final=1 - final_kept, schedule=schedule)
        step_cfg = _step_config(config, kept, kept_before, model, example_inputs, macs0, params0)
        if i > 1:  # residual blocks, if any, go in the first step
            step_cfg = dataclasses.replace(step_cfg, blocks=0)
        kept_before = kept
        result: PruneResult = prune_channels_(model, step_cfg, example_inputs=example_inputs, data=data or train)
        record: dict[str, Any] = {"step": i, "kept_target": round(kept, 4),
                                  "macs": result.macs_after, "params": result.params_after}
        if finetune is not None:
            history = fit(model, train, config=finetune, val=val)
            record["val_top1"] = history[-1].get("val_top1") if history else None
        logger.info("pruning step %d/%d: %.1f%% of the MACs left%s", i, steps,
                    100 * result.macs_after / macs0,
                    f", val top-1 {record['val_top1']:.4f}" if record.get("val_top1") else "")
        log.append(record)
    return log


def _final_kept(config: ChannelPruneConfig) -> float:
    if config.target_macs is not None:
        return config.target_macs
    if config.target_params is not None:
        return config.target_params
    if config.ratio is not None:
        return 1 - config.ratio
    return 0.0  # ratios: one step, value unused


def _step_config(config: ChannelPruneConfig, kept: float, kept_before: float, model: nn.Module,
                 example_inputs: Any, macs0: int, params0: int) -> ChannelPruneConfig:
    """The config of one step: the overall kept fraction, relative to the current model."""
    if config.ratios is not None:
        return config
    if config.target_macs is not None:
        now = count_macs(model, example_inputs=example_inputs) / macs0
        return dataclasses.replace(config, target_macs=min(1.0, kept / now))
    if config.target_params is not None:
        now = count_params(model) / params0
        return dataclasses.replace(config, target_params=min(1.0, kept / now))
    # A share of channels: remove what takes the kept share from kept_before to kept.
    return dataclasses.replace(config, ratio=max(0.0, 1 - kept / kept_before))
