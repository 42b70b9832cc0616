"""Weight-only post-training quantization of Linear layers (round to nearest).

Each ``nn.Linear`` weight ``(out, in)`` is fake-quantized per group of ``group_size``
consecutive input elements (``(out, in // group_size)`` scales), or per output channel
when ``group_size`` is None; activations stay float. 4-bit weights with groups of 32 to
128 are the usual LLM setting (torchao's ``Int4WeightOnlyConfig``, GPTQ / AWQ grids).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

from torch import nn

from torchslim.errors import ConfigError
from torchslim.quant.affine import QuantSpec
from torchslim.quant.config import matches
from torchslim.quant.dynamic import check_skip, frozen_weight_quantizer, keep_module_forward_
from torchslim.quant.modules import QuantLinear

logger = logging.getLogger(__name__)

__all__ = ["quantize_weight_only", "weight_only_spec"]


def weight_only_spec(*, bits: int = 8, group_size: int | None = 128,
                     symmetric: bool = True) -> QuantSpec:
    """s8-style symmetric (z = 0) or u8-style asymmetric spec, per group or per channel."""
    if group_size is None:
        return QuantSpec(bits=bits, signed=symmetric, symmetric=symmetric,
                         granularity="per_channel", axis=0)
    return QuantSpec(bits=bits, signed=symmetric, symmetric=symmetric,
                     granularity="per_group", group_size=group_size)


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


def quantize_weight_only(model: nn.Module, *, bits: int = 8, group_size: int | None = 128,
                         symmetric: bool = True, skip: Sequence[str] = ()) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` weights are fake-quantized to ``bits``
    (per group of ``group_size`` input elements, per channel when None); activations
    stay float. ``skip`` holds layer names or regexes kept in float."""
    spec = weight_only_spec(bits=bits, group_size=group_size, symmetric=symmetric)
    skip = check_skip(model, skip)
    _check_groups(model, spec, skip)
    new = copy.deepcopy(model)
    count = 0
    for name, module in list(new.named_modules()):
        if type(module) is not nn.Linear or any(matches(p, name) for p in skip):
            continue
        parent, _, attr = name.rpartition(".")
        fq = frozen_weight_quantizer(module.weight, spec)
        setattr(new.get_submodule(parent), attr,
                keep_module_forward_(QuantLinear.from_float(module, fq)))
        count += 1
    logger.info("weight-only quantization (%d-bit, group_size=%s): %d Linear layers",
                bits, group_size, count)
    return new
