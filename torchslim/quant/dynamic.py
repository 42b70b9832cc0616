"""Dynamic post-training quantization: int8 weights, activations quantized at run time.

Each ``nn.Linear`` becomes a :class:`DynamicQuantLinear`: its weight passes through a
frozen per-output-channel symmetric s8 :class:`FakeQuantize`, and its input through a
:class:`DynamicActivationQuant` that computes u8 asymmetric ``(scale, zero_point)`` from
the current input on every call (no calibration data needed).

By default the activation grid is **per tensor**: that is what ONNX Runtime's
``DynamicQuantizeLinear`` computes, so the torch simulation matches the exported graph
(:func:`torchslim.export.export_dynamic`). ``per_token=True`` gives one grid per row of
the last dim (per token of a ``(batch, seq, d)`` input); it is more accurate but exists
in torch only; ONNX Runtime has no per-token dynamic quantization op.

Out of scope: ``nn.LSTM`` / ``nn.GRU`` (their projections are fused parameters, not
Linear modules), and ``nn.MultiheadAttention``, whose ``in_proj_weight`` and
``out_proj.weight`` are read directly by ``F.multi_head_attention_forward``. Both are
kept in float, with an INFO log naming them.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from torchslim.errors import ConfigError
from torchslim.quant.affine import QuantSpec, calc_qparams_for, fake_quantize
from torchslim.quant.config import matches
from torchslim.quant.fake_quant import FakeQuantize
from torchslim.quant.modules import QuantLinear

logger = logging.getLogger(__name__)

__all__ = ["DynamicActivationQuant", "DynamicQuantLinear", "quantize_dynamic",
           "frozen_weight_quantizer", "check_skip", "keep_module_forward_"]

_FLOAT_ONLY = (nn.MultiheadAttention, nn.LSTM, nn.GRU, nn.RNN)


class DynamicActivationQuant(nn.Module):
    """Fake-quantize ``x`` with a u8 grid computed from ``x`` itself on every call.

    ``per_token=False``: one ``(s, z)`` for the whole tensor (ONNX Runtime's
    ``DynamicQuantizeLinear``). ``per_token=True``: one per row of the last dim.
    """

    def __init__(self, *, bits: int = 8, per_token: bool = False) -> None:
        super().__init__()
        # u8 asymmetric, 0.0 exact: DynamicQuantizeLinear's grid
        self.spec = QuantSpec(bits=bits, signed=False, symmetric=False)
        self.per_token = per_token

    def forward(self, x: Tensor) -> Tensor:
        if not self.per_token:
            scale, zp = calc_qparams_for(x, self.spec)  # (), ()
            return fake_quantize(x, scale, zp, self.spec)
        rows = x.reshape(-1, x.shape[-1])  # (tokens, D)
        spec = QuantSpec(bits=self.spec.bits, signed=False, symmetric=False,
                         granularity="per_channel", axis=0)
        scale, zp = calc_qparams_for(rows, spec)  # (tokens,), (tokens,)
        return fake_quantize(rows, scale, zp, spec).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}, per_token={self.per_token}"


class DynamicQuantLinear(QuantLinear):
    """A Linear with fake-quantized weights and a run-time-quantized input."""

    input_quant: DynamicActivationQuant

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, bits: int = 8,
                    per_token: bool = False) -> DynamicQuantLinear:
        spec = QuantSpec(bits=bits, granularity="per_channel", axis=0)
        new = cls.from_float(linear, frozen_weight_quantizer(linear.weight, spec))
        new.input_quant = DynamicActivationQuant(bits=8, per_token=per_token)
        return keep_module_forward_(new)  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.input_quant(x), self.weight_fake_quant(self.weight), self.bias)


def _no_op_hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
    return None


def keep_module_forward_(module: nn.Module) -> nn.Module:
    """Register a no-op forward pre-hook on ``module``: any hook turns off
    ``TransformerEncoderLayer``'s fused eval fast path, which reads ``linear1.weight`` /
    ``linear2.weight`` directly and would skip the quantizers in their forward."""
    module.register_forward_pre_hook(_no_op_hook)
    return module


def frozen_weight_quantizer(weight: Tensor, spec: QuantSpec) -> FakeQuantize:
    """A min-max FakeQuantize that has seen ``weight`` once and is frozen."""
    fq = FakeQuantize(spec, observer="minmax")
    with torch.no_grad():
        fq.observer(weight.detach())
    fq._stale = True
    fq.enable_observer(False)  # copies the observer's (scale, zero_point) into the buffers
    return fq


def check_skip(model: nn.Module, skip: Sequence[str]) -> tuple[str, ...]:
    """``skip`` as a tuple; ConfigError for an entry naming no module of ``model``."""
    if isinstance(skip, str):
        skip = (skip,)
    names = [n for n, _ in model.named_modules() if n]
    for pattern in skip:
        if not any(matches(pattern, n) for n in names):
            raise ConfigError(f"skip entry {pattern!r} matches no module of "
                              f"{type(model).__name__}; modules are named like: "
                              f"{', '.join(names[:6]) or '(none)'}")
    return tuple(skip)


def _float_only_note(model: nn.Module) -> None:
    kept = [n or "(root)" for n, m in model.named_modules() if isinstance(m, _FLOAT_ONLY)]
    if kept:
        logger.info("kept in float (weights read directly by fused kernels, out of scope "
                    "for dynamic quantization): %s", ", ".join(kept))


def quantize_dynamic(model: nn.Module, *, bits: int = 8,
                     layers: Sequence[type[nn.Module]] = (nn.Linear,),
                     skip: Sequence[str] = (), per_token: bool = False) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers use s8 per-channel weights and u8
    activations quantized at run time (per tensor, or per token with ``per_token``).

    ``skip`` holds layer names or regexes kept in float. ``model`` is left untouched.
    """
    unsupported = [t.__name__ for t in layers if t is not nn.Linear]
    if unsupported:
        raise ConfigError(f"layers={unsupported} are not supported by dynamic quantization; "
                          "only nn.Linear is (LSTM / attention weights stay float)")
    skip = check_skip(model, skip)
    new = copy.deepcopy(model)
    _float_only_note(new)
    count = 0
    for name, module in list(new.named_modules()):
        if type(module) is not nn.Linear:  # exact: out_proj of attention is a subclass
            continue
        if any(matches(p, name) for p in skip):
            logger.info("%s: in skip list, kept in float", name)
            continue
        parent, _, attr = name.rpartition(".")
        setattr(new.get_submodule(parent), attr,
                DynamicQuantLinear.from_linear(module, bits=bits, per_token=per_token))
        count += 1
    logger.info("dynamic quantization: %d Linear layers quantized", count)
    return new
