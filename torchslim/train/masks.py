"""Pruning masks survive training: weights that were pruned to zero stay exactly zero.

A layer whose zeros are a mask carries ``torchslim_masked = True`` (set by
``torchslim.prune.sparsify_``; the attribute survives ``copy.deepcopy``, FX tracing and
the quantized-module swap). ``fit`` then adds ``KeepMasks``, which records the zero
pattern when training starts and re-applies it after every optimizer step, so momentum
or weight decay cannot revive a pruned weight and QAT sees the same zeros.
"""

from __future__ import annotations

import torch
from torch import nn

from torchslim.train.callbacks import Callback, TrainState

MASKED_ATTR = "torchslim_masked"


def masked_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules()
            if getattr(m, MASKED_ATTR, False) and isinstance(getattr(m, "weight", None), torch.Tensor)]


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
