"""Pruning masks survive training: weights that were pruned to zero stay exactly zero.

A layer whose zeros are a mask has ``record_of(layer).masked`` (set by
``torchslim.prune.sparsify_``; the record survives ``copy.deepcopy``, FX tracing and the
quantized-module swap, and checkpoints keep it). ``fit`` then adds ``KeepMasks``, which records the zero
pattern when training starts and re-applies it after every optimizer step, so momentum
or weight decay cannot revive a pruned weight and QAT sees the same zeros.
"""

from __future__ import annotations

import torch

from torchslim._record import masked_layers
from torchslim.train.callbacks import Callback, TrainState

__all__ = ["KeepMasks", "masked_layers"]


class KeepMasks(Callback):
    """Zero, after each step, every weight that was zero at the start of training."""

    def __init__(self) -> None:
        self.masks: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_start(self, state: TrainState) -> None:
        self.masks = [(m.weight, m.weight.detach() != 0) for _, m in masked_layers(state.model)]

    @torch.no_grad()
    def on_step_end(self, state: TrainState) -> None:
        for weight, keep in self.masks:
            weight.mul_(keep)
