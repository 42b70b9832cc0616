"""Conv and Linear layers whose weights pass through a fake quantizer.

This is the contract between preparation and export: a prepared model holds these
modules (BatchNorm already folded into their weight and bias) plus activation
``FakeQuantize`` modules in its graph. The exporter reads ``weight_fake_quant`` to write
integer weights; anything else with that attribute is treated the same way.

Each also adds its bias as an integer kernel does: on the int32 grid ``s_in * s_w`` once
it is linked to the activation quantizer feeding it (``bias_grid``; ``prepare`` links).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from torchslim._record import carry_
from torchslim.quant.bias_grid import GridBias

__all__ = ["QuantConv1d", "QuantConv2d", "QuantConv3d", "QuantLinear", "QUANT_MODULES",
           "to_quant_module"]


def _copy_into(new: nn.Module, old: nn.Module, weight_fake_quant: nn.Module) -> nn.Module:
    new.weight = old.weight          # share the Parameter: QAT trains the same tensor
    new.bias = old.bias
    new.weight_fake_quant = weight_fake_quant
    carry_(old, new)  # a pruning mask stays marked: QAT keeps the zeros
    new.train(old.training)
    return new


class _QuantConv(GridBias):
    """What QuantConv1d and QuantConv2d share: build from a float conv, convolve with the
    fake-quantized weight and the bias on its int32 grid."""

    weight_fake_quant: nn.Module

    @classmethod
    def from_float(cls, conv: nn.Module, weight_fake_quant: nn.Module) -> Any:
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,  # type: ignore[call-arg]
                  conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                  conv.padding_mode, device="meta")
        return _copy_into(new, conv, weight_fake_quant)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight_fake_quant(self.weight)  # first: the bias grid needs its scale
        return self._conv_forward(x, weight, self.bias_on_grid(self.bias))  # type: ignore[attr-defined]


class QuantConv1d(_QuantConv, nn.Conv1d):
    pass


class QuantConv2d(_QuantConv, nn.Conv2d):
    pass


class QuantConv3d(_QuantConv, nn.Conv3d):
    pass


class QuantLinear(GridBias, nn.Linear):
    weight_fake_quant: nn.Module

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_fake_quant: nn.Module) -> QuantLinear:
        new = cls(linear.in_features, linear.out_features, linear.bias is not None,
                  device="meta")
        return _copy_into(new, linear, weight_fake_quant)  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight_fake_quant(self.weight)  # first: the bias grid needs its scale
        return F.linear(x, weight, self.bias_on_grid(self.bias))


# float type -> its quantized twin (exact types: a subclass may change forward)
QUANT_MODULES: dict[type[nn.Module], Any] = {
    nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d, nn.Conv3d: QuantConv3d,
    nn.Linear: QuantLinear}


def to_quant_module(module: nn.Module, weight_fake_quant: nn.Module) -> nn.Module:
    """The quantized twin of ``module`` sharing its parameters."""
    return QUANT_MODULES[type(module)].from_float(module, weight_fake_quant)
