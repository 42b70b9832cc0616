"""Static post-training calibration and empirical bias correction.

Calibration runs a few batches through the prepared model with observers on and fake
quantization off (so every observer sees float activations, as the float model would
produce them), then freezes the observers: qparams are computed once and fake
quantization is switched on.

Bias correction (Nagel et al., ICCV 2019, empirical variant): quantizing weights shifts
the mean of each output channel by ``E[W x] - E[W_q x]``; adding that shift to the bias
removes it. Layers are corrected in graph order with the earlier layers already quantized
and corrected, so each correction sees the inputs the deployed model will see.

Under ``torchrun`` (a process group of several ranks is running) both use every rank's
batches: observers combine their statistics over ranks and the bias shift is averaged over
them (``torchslim.quant.distributed``); every rank runs as many batches as the shortest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from torchslim import _progress
from torchslim.capture.inputs import call, first_inputs, to_device
from torchslim.errors import ConfigError
from torchslim.quant.distributed import global_observers, lockstep, sum_over_ranks
from torchslim.quant.modules import QUANT_MODULES
from torchslim.quant.prepare import quant_info, set_fake_quant_, set_observers_

__all__ = ["calibrate_", "bias_correct_"]

logger = logging.getLogger(__name__)

_QUANT_LAYERS = tuple(QUANT_MODULES.values())


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@torch.no_grad()
def calibrate_(prepared: nn.Module, data: Iterable[Any], *, num_batches: int = 32) -> nn.Module:
    """Observe ``num_batches`` batches, then freeze the qparams and switch fake quant on.

    Then, when the prepared config asks for them, AdaRound (``rounding="adaround"``, on
    the same batches) and bias correction. In place; returns ``prepared`` for chaining.
    """
    config = quant_info(prepared).config
    was_training = prepared.training
    prepared.eval()
    set_fake_quant_(prepared, False)
    set_observers_(prepared, True)
    device, seen = _device(prepared), 0
    with global_observers(prepared):  # every rank's batches under torchrun
        for x in _progress.track(lockstep(first_inputs(data, num_batches)),
                                 description="calibrating", total=num_batches):
            call(prepared, to_device(x, device))
            seen += 1
    if seen == 0:
        raise ConfigError("calibration data yielded no batches; pass a non-empty loader")
    set_observers_(prepared, False)  # computes the qparams once
    set_fake_quant_(prepared, True)
    logger.info("calibrated on %d batches", seen)
    if config.rounding == "adaround":
        from torchslim.quant.adaround import adaround_

        adaround_(prepared, data, num_batches=num_batches)
    if config.bias_correction:
        bias_correct_(prepared, data, num_batches=num_batches)
    prepared.train(was_training)
    return prepared


def _weight_error_output(layer: nn.Module, x: Tensor) -> Tensor:
    """``(W - W_q) x`` without bias, mean over every dim except channels -> ``(C_out,)``."""
    delta = layer.weight - layer.weight_fake_quant(layer.weight)
    if isinstance(layer, nn.Linear):
        out = F.linear(x, delta)  # (..., C_out)
        return out.reshape(-1, out.shape[-1]).mean(0)
    out = layer._conv_forward(x, delta, None)  # (B, C_out, *spatial)
    return out.transpose(0, 1).reshape(out.shape[1], -1).mean(1)


@torch.no_grad()
def bias_correct_(prepared: nn.Module, data: Iterable[Any], *, num_batches: int = 32) -> nn.Module:
    """Add ``E[W x] - E[W_q x]`` per output channel to each quantized layer's bias.

    ``x`` is the layer's input in the (fake-quantized) model with every earlier layer
    already corrected; one pass over the data per layer, so keep ``num_batches`` small.
    """
    info = quant_info(prepared)
    device = _device(prepared)
    for name in info.quantized:
        layer = prepared.get_submodule(name)
        if type(layer) not in _QUANT_LAYERS:  # e.g. QuantConvBn during QAT: nothing to fix
            continue
        total, count = None, 0

        def hook(_m: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            nonlocal total, count
            err = _weight_error_output(layer, inputs[0])  # (C_out,)
            total = err if total is None else total + err
            count += 1

        handle = layer.register_forward_pre_hook(hook)
        try:
            for x in lockstep(first_inputs(data, num_batches)):
                call(prepared, to_device(x, device))
        finally:
            handle.remove()
        total, count = sum_over_ranks(total, count)  # the mean over every rank's batches
        if total is None:
            continue
        _add_to_bias(layer, total / count)
    logger.info("bias-corrected %d layers", len(info.quantized))
    return prepared


def _add_to_bias(layer: nn.Module, shift: Tensor) -> None:
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros_like(shift), requires_grad=layer.weight.requires_grad)
    layer.bias.add_(shift.to(layer.bias.dtype))
