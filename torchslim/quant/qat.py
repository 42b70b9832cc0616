"""Quantization-aware training: fine-tune a calibrated, fake-quantized model.

By default BatchNorm is folded before QAT (``prepare`` folds it with the running
statistics), so the weights being trained are the deployed weights and BN statistics are
frozen from the start: the "frozen BN" end state of Jacob et al. (2018), reached at once.
With ``freeze_bn_epoch`` the folding is simulated instead (``QuantConvBn``): BN keeps
using batch statistics until that epoch, then its running statistics, and is folded into
the conv at the end. Gradients pass through fake quantization by the clipped STE.

Observers keep adapting the grids during the first epochs and are frozen from
``freeze_observers_epoch`` on, so the last epochs train against fixed qparams. With LSQ
the step sizes themselves are trained (``to_lsq_``) and turned back into fixed
``FakeQuantize`` buffers afterwards (``from_lsq_``), which keeps the exporter contract.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from torchslim.quant.bias_grid import relink_
from torchslim.quant.fake_quant import FakeQuantize, LearnableFakeQuantize
from torchslim.quant.fold import QuantConvBn
from torchslim.quant.prepare import fake_quantizers, set_fake_quant_, set_observers_
from torchslim.train import Callback, TrainState

__all__ = ["FreezeObservers", "FreezeBatchNorm", "to_lsq_", "from_lsq_", "describe"]

logger = logging.getLogger(__name__)


class FreezeObservers(Callback):
    """Freeze every observer (fix the qparams) from 0-based epoch ``epoch`` on, and at the
    end of training in any case, so the returned model has frozen qparams.
    ``epoch=None`` keeps observers running until the end."""

    def __init__(self, epoch: int | None) -> None:
        self.epoch = epoch

    def on_epoch_start(self, state: TrainState) -> None:
        # Calibration left the observers frozen: switch them back on for the early epochs.
        frozen = self.epoch is not None and state.epoch >= self.epoch
        set_observers_(state.model, not frozen)
        set_fake_quant_(state.model, True)

    def on_train_end(self, state: TrainState) -> None:
        set_observers_(state.model, False)


class FreezeBatchNorm(Callback):
    """With simulated BN folding: BN normalises with batch statistics (and updates its
    running ones) until 0-based epoch ``epoch``, then uses the frozen running statistics,
    so the last epochs train exactly the folded network that will be deployed."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_start(self, state: TrainState) -> None:
        for module in state.model.modules():
            if isinstance(module, QuantConvBn):
                module.freeze_bn = state.epoch >= self.epoch


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` in place of quantizer ``name``; the layers reading its grid follow."""
    parent, _, child = name.rpartition(".")
    relink_(root, root.get_submodule(name), module)
    setattr(root.get_submodule(parent) if parent else root, child, module)


@torch.no_grad()
def _learnable_from(fq: FakeQuantize, *, weight: bool) -> LearnableFakeQuantize:
    """An LSQ quantizer whose step size starts at ``fq``'s calibrated scale."""
    lfq = LearnableFakeQuantize(fq.spec, batch_axis=None if weight else 0)
    # One dummy forward materialises the lazy scale with the right shape (() or (C,)) and
    # removes the lazy-init hook; then the calibrated scale replaces the dummy init.
    lfq(torch.zeros(max(fq.scale.numel(), 1)))
    lfq.scale.copy_(fq.scale.reshape(lfq.scale.shape))
    return lfq


def to_lsq_(model: nn.Module) -> list[str]:
    """Replace calibrated ``FakeQuantize`` modules by ``LearnableFakeQuantize`` in place.

    Weights always; activations only where the calibrated zero point is 0 (LSQ fixes z = 0:
    right for post-ReLU u8 activations, wrong for signed ones, which keep FakeQuantize).
    Returns the names replaced. Build the optimizer after this call.
    """
    replaced = []
    for name, fq in list(fake_quantizers(model)):
        is_weight = name.endswith("weight_fake_quant")
        if fq.scale.numel() == 0 or fq.spec.granularity == "per_group":
            continue
        if not is_weight and bool((fq.zero_point != 0).any()):
            continue
        _set(model, name, _learnable_from(fq, weight=is_weight))
        replaced.append(name)
    logger.info("LSQ: %d quantizers learn their step size", len(replaced))
    return replaced


@torch.no_grad()
def from_lsq_(model: nn.Module) -> list[str]:
    """Turn every ``LearnableFakeQuantize`` back into a frozen ``FakeQuantize`` holding the
    learned scale (zero point 0), the form the exporter reads."""
    replaced = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, LearnableFakeQuantize):
            continue
        fq = FakeQuantize(module.spec)
        fq.enable_observer(False)
        fq.scale = module.scale.detach().clone()
        fq.zero_point = torch.zeros(module.scale.shape, dtype=torch.int32)
        _set(model, name, fq)
        replaced.append(name)
    return replaced


def describe(model: nn.Module) -> dict[str, Any]:
    """Counts for logs and tests: fake quantizers, observers still on, LSQ modules."""
    fqs = [fq for _, fq in fake_quantizers(model)]
    lsq = [m for m in model.modules() if isinstance(m, LearnableFakeQuantize)]
    return {"fake_quantizers": len(fqs), "observers_on": sum(fq.observer_enabled for fq in fqs),
            "lsq": len(lsq)}
