"""The torch side every integer exporter shares: a copy of the model that may change, and
each fake-quantized weight turned into its integer form (``BakedWeight``), found again in
the exported ONNX graph by its dequantized value."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from torchslim._record import record_of
from torchslim.errors import ConfigError, UnsupportedModelError
from torchslim.quant.bias_grid import GridBias
from torchslim.quant.affine import QuantSpec, dequantize_tensor, quantize_tensor
from torchslim.quant.fake_quant import FakeQuantize, LearnableFakeQuantize

__all__ = ["BakedWeight", "copy_model", "bake_weights_", "weight_qparams", "check_materialized",
           "check_quantized_as"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BakedWeight:
    """The integer form of one layer's weight, found again in the ONNX graph by value."""

    module: str
    q: np.ndarray  # int8 / uint8, the float weight's shape
    scale: np.ndarray  # float32, (C,) per channel or () per tensor
    zero_point: np.ndarray  # same dtype as q, same shape as scale
    axis: int  # channel axis of the per-channel scale in the torch weight
    bias_on_grid: bool = False  # the torch layer added its bias on the int32 grid s_in * s_w

    def dequantized(self) -> np.ndarray:
        """The float weight the torch model computes with, as in ``affine.dequantize``."""
        shape = [1] * self.q.ndim
        if self.scale.ndim == 1:
            shape[self.axis] = -1
        diff = self.q.astype(np.int32) - self.zero_point.astype(np.int32).reshape(shape)
        return diff.astype(np.float32) * self.scale.reshape(shape)


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy whose parameters and buffers we may change; metadata that cannot be
    copied (e.g. a mapping proxy inside a stored config) is shared, never modified."""
    try:
        return copy.deepcopy(model)
    except (TypeError, copy.Error):
        memo: dict[int, object] = {}
        for module in model.modules():
            for key, value in vars(module).items():
                if key in ("_modules", "_parameters", "_buffers") or isinstance(value, Tensor):
                    continue
                try:
                    copy.deepcopy(value)
                except (TypeError, copy.Error):
                    memo[id(value)] = value
        return copy.deepcopy(model, memo)


def bake_weights_(model: nn.Module) -> list[BakedWeight]:
    """Replace each quantized weight by its fake-quantized value and switch the weight
    quantizer off; return the integer weights to write into the graph."""
    baked = []
    for name, module in list(model.named_modules()):
        fq = getattr(module, "weight_fake_quant", None)
        weight = getattr(module, "weight", None)
        if fq is None or not isinstance(weight, Tensor):
            continue
        scale, zero_point, spec = weight_qparams(name, fq, weight.detach())
        if spec is None:
            continue  # quantizer switched off: the layer stays float
        q = quantize_tensor(weight.detach().float(), scale, zero_point, spec)  # int8 / uint8
        on_grid = _bake_bias_(module)  # before the weight quantizer goes: it needs its scale
        module.weight = nn.Parameter(dequantize_tensor(q, scale, zero_point, spec), requires_grad=False)
        module.weight_fake_quant = nn.Identity()
        if spec.granularity == "per_group":
            logger.warning("%s: per-group weights are exported as float (fake-quantized "
                           "values); ONNX Runtime has no per-group convolution kernels", name)
            continue
        per_channel = spec.granularity == "per_channel"
        qparam_shape = (-1,) if per_channel else ()  # (C,) or a scalar
        baked.append(BakedWeight(
            module=name, q=q.numpy(), scale=scale.float().reshape(qparam_shape).numpy(),
            zero_point=zero_point.reshape(qparam_shape).numpy().astype(q.numpy().dtype),
            axis=spec.axis % q.dim() if per_channel else 0, bias_on_grid=on_grid))
    return baked


@torch.no_grad()
def _bake_bias_(module: nn.Module) -> bool:
    """Replace a ``GridBias`` layer's bias by the int32-grid value its forward adds, so the
    exported graph holds exactly that bias (the QDQ rewrite then finds its int32 values
    again); whether it did."""
    bias = getattr(module, "bias", None)
    if not isinstance(module, GridBias) or not isinstance(bias, Tensor):
        return False
    module.weight_fake_quant(module.weight.detach())  # refreshes a weight grid still observing
    float_bias = bias.detach()
    value = module.bias_on_grid(float_bias)
    if value is float_bias or value is None:
        return False
    module.bias = nn.Parameter(value.detach().clone(), requires_grad=False)
    module.link_input_(None)  # baked: the forward adds it as it is
    return True


def weight_qparams(name: str, fq: nn.Module, weight: Tensor
                    ) -> tuple[Tensor, Tensor, QuantSpec | None]:
    """``(scale, zero_point, spec)`` the torch forward would use now; spec None when the
    weight is not fake-quantized."""
    if isinstance(fq, LearnableFakeQuantize):
        check_materialized(name + ".weight_fake_quant", fq)
        scale = fq.scale.detach().float()
        return scale, torch.zeros_like(scale, dtype=torch.int32), fq.spec
    if not isinstance(fq, FakeQuantize):
        raise UnsupportedModelError(f"{name}.weight_fake_quant is a {type(fq).__name__}; "
                                    "export understands FakeQuantize and LearnableFakeQuantize")
    if not fq.fake_quant_enabled:
        return torch.empty(0), torch.empty(0), None
    if fq.observer_enabled:
        # What the torch forward does on every call: observe the weight, then use the grid.
        fq = copy.deepcopy(fq).freeze_on_(weight)
    if fq.scale.numel() == 0:
        raise ConfigError(f"{name}.weight_fake_quant has no scale; calibrate first")
    return fq.scale.detach().float(), fq.zero_point.detach().to(torch.int32), fq.spec


def check_materialized(name: str, fq: LearnableFakeQuantize) -> None:
    if isinstance(fq.scale, nn.parameter.UninitializedParameter):
        raise ConfigError(f"{name} (LSQ) has no step size yet; calibrate first "
                          "(run one batch through the model)")


def check_quantized_as(model: nn.Module, config_type: type, writer: str) -> None:
    """ConfigError when ``model``'s record says it was quantized with another kind of config
    than the one ``writer`` handles (``torchslim.export`` picks the right writer)."""
    info = record_of(model).quantization
    if info is not None and type(info.config) is not config_type:
        raise ConfigError(f"{writer} writes models quantized with {config_type.__name__}, but "
                          f"{type(model).__name__} was quantized with {info.kind}; "
                          "torchslim.export(model, path) picks the writer for it")
