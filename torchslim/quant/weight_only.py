"""Weight-only post-training quantization of Linear layers (round to nearest).

Each ``nn.Linear`` weight ``(out, in)`` is fake-quantized per group of ``group_size``
consecutive input elements (``(out, in // group_size)`` scales), or per output channel
when ``group_size`` is None; activations stay float. 4-bit weights with groups of 32 to
128 are the usual LLM setting (torchao's ``Int4WeightOnlyConfig``, GPTQ / AWQ grids).
The scales are float16 values (as GPTQ / AWQ checkpoints store them), so the packed
artifact holds them in 2 bytes, not 4: with groups of 32 that is 0.5 bit per weight.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from torchslim._record import Quantization, update_
from torchslim.errors import ConfigError
from torchslim.quant.affine import QuantSpec
from torchslim.quant.config import WeightOnlyConfig, check_skip, matches
from torchslim.quant.dynamic import frozen_weight_quantizer, keep_module_forward_
from torchslim.quant.fake_quant import FakeQuantize
from torchslim.quant.modules import QuantLinear

logger = logging.getLogger(__name__)

__all__ = ["quantize_weight_only"]


def _check_groups(model: nn.Module, spec: QuantSpec, skip: tuple[str, ...]) -> None:
    """ConfigError naming the first Linear whose in_features the group size does not divide."""
    if spec.group_size is None:
        return
    for name, module in model.named_modules():
        if type(module) is nn.Linear and not any(matches(p, name) for p in skip):
            if module.in_features % spec.group_size:
                raise ConfigError(
                    f"layer {name!r}: in_features={module.in_features} is not divisible by "
                    f"group_size={spec.group_size}; pick a group_size dividing it, "
                    f"group_size=None (per channel), or skip=[{name!r}]")


def _fp16_scales_(fq: FakeQuantize) -> FakeQuantize:
    """Round the frozen grid's scales to the nearest float16 values (those that are normal
    float16 numbers; the others stay float32): the grid moves by < 2^-11 of its step."""
    fq.update_qparams_()
    half = fq.scale.to(torch.float16)
    normal = torch.isfinite(half) & (half.abs() >= torch.finfo(torch.float16).tiny)
    fq.scale = torch.where(normal, half.float(), fq.scale)
    return fq


def quantize_weight_only(model: nn.Module, config: WeightOnlyConfig = WeightOnlyConfig()
                         ) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` weights are fake-quantized to
    ``config.bits`` (per group of ``config.group_size`` input elements, per channel when
    None); activations stay float. ``config.skip`` holds layer names or regexes kept in
    float. The copy's record says how it was quantized (``torchslim.export`` reads it)."""
    if not isinstance(config, WeightOnlyConfig):
        raise ConfigError(f"config must be a WeightOnlyConfig, not {type(config).__name__}")
    spec = config.spec
    skip = check_skip(model, config.skip)
    _check_groups(model, spec, skip)
    new = copy.deepcopy(model)
    quantized = []
    for name, module in list(new.named_modules()):
        if type(module) is not nn.Linear or any(matches(p, name) for p in skip):
            continue
        parent, _, attr = name.rpartition(".")
        fq = _fp16_scales_(frozen_weight_quantizer(module.weight, spec))
        setattr(new.get_submodule(parent), attr,
                keep_module_forward_(QuantLinear.from_float(module, fq)))
        quantized.append(name)
    update_(new, quantization=Quantization(config=config, quantized=tuple(quantized)))
    logger.info("weight-only quantization (%d-bit, group_size=%s): %d Linear layers",
                config.bits, config.group_size, len(quantized))
    return new
