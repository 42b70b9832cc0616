"""Dynamic post-training quantization: int8 weights, activations quantized at run time.

Each ``nn.Linear`` becomes a :class:`DynamicQuantLinear`: its weight passes through a
frozen per-output-channel symmetric s8 :class:`FakeQuantize`, and its input through a
:class:`DynamicActivationQuant` that computes u8 asymmetric ``(scale, zero_point)`` from
the current input on every call (no calibration data needed).

By default the activation grid is **per tensor**: that is what ONNX Runtime's
``DynamicQuantizeLinear`` computes, so the torch simulation matches the exported graph
(:func:`torchslim.exporters.export_dynamic`). ``per_token=True`` gives one grid per row of
the last dim (per token of a ``(batch, seq, d)`` input); it is more accurate but exists
in torch only; ONNX Runtime has no per-token dynamic quantization op.

``nn.LSTM`` is opt-in (``DynamicQuantConfig(layers=("linear", "lstm"))``): each becomes a
:class:`DynamicQuantLSTM` that computes what ONNX Runtime's ``com.microsoft``
``DynamicQuantizeLSTM`` computes (s8 per-row W / R, u8 per-tensor dynamic activations:
the layer input once per layer, ``h_{t-1}`` once per step; float gates).

Weights are 7-bit where x86 INT8 kernels saturate (``config.reduce_range``, "auto" by
default: see :mod:`torchslim.quant.reduce_range`); the record holds the resolved value.

Out of scope: ``nn.GRU`` / ``nn.RNN`` (their projections are fused parameters, not
Linear modules), LSTMs not selected, and ``nn.MultiheadAttention``, whose
``in_proj_weight`` and ``out_proj.weight`` are read directly by
``F.multi_head_attention_forward``. They are kept in float, with an INFO log naming them.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from torchslim._record import Quantization, update_
from torchslim.errors import ConfigError
from torchslim.quant.affine import QuantSpec, calc_qparams_for, fake_quantize
from torchslim.quant.config import DynamicQuantConfig, check_skip, matches
from torchslim.quant.fake_quant import FakeQuantize
from torchslim.quant.modules import QuantLinear
from torchslim.quant.reduce_range import reduced_weight, resolve_reduce_range

logger = logging.getLogger(__name__)

__all__ = ["DynamicActivationQuant", "DynamicQuantLinear", "DynamicQuantLSTM", "quantize_dynamic",
           "frozen_weight_quantizer", "keep_module_forward_"]

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


class DynamicQuantLSTM(nn.Module):
    """An ``nn.LSTM`` computed as ONNX Runtime's ``com.microsoft.DynamicQuantizeLSTM``.

    Weights ``W`` (input) and ``R`` (recurrent) of each layer and direction pass through a
    frozen s8 per-output-row symmetric :class:`FakeQuantize`. Activations are u8 per tensor,
    computed at run time like ORT's kernel does: the layer input sequence once per layer
    (all time steps and batch rows together; both directions see the same grid) and the
    hidden state ``h_{t-1}`` once per step (whole batch). Gates, bias and cell state are
    float. Inference only (no dropout between layers); no ``proj_size``, no PackedSequence.
    """

    def __init__(self, lstm: nn.LSTM, *, bits: int = 8) -> None:
        super().__init__()
        if lstm.proj_size:
            raise ConfigError("dynamic quantization of nn.LSTM with proj_size > 0 is not "
                              "supported (DynamicQuantizeLSTM has no projection)")
        self.lstm = lstm  # float parameters (the same tensors as the input model's copy)
        spec = QuantSpec(bits=bits, granularity="per_channel", axis=0)
        self.weight_quant = nn.ModuleDict({
            name: frozen_weight_quantizer(getattr(lstm, name), spec)
            for name in self.weight_names()})
        self.act_quant = DynamicActivationQuant(bits=8, per_token=False)

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, *, bits: int = 8) -> DynamicQuantLSTM:
        return cls(lstm, bits=bits)

    @property
    def num_directions(self) -> int:
        return 2 if self.lstm.bidirectional else 1

    def weight_names(self) -> list[str]:
        """``weight_ih_l{k}[_reverse]`` and ``weight_hh_l{k}[_reverse]`` of every layer."""
        return [f"weight_{kind}_l{layer}{'_reverse' if d else ''}"
                for layer in range(self.lstm.num_layers) for d in range(self.num_directions)
                for kind in ("ih", "hh")]

    def quantized_weight(self, name: str) -> Tensor:
        """The fake-quantized ``(4 * hidden, in)`` weight, torch gate order i, f, g, o."""
        return self.weight_quant[name](getattr(self.lstm, name))

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        lstm = self.lstm
        if not isinstance(input, Tensor):
            raise ConfigError("DynamicQuantLSTM does not take PackedSequence inputs")
        unbatched = input.dim() == 2
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if lstm.batch_first
                                                  else input)  # (T, N, in)
        steps, batch = x.shape[0], x.shape[1]
        dirs, hidden = self.num_directions, lstm.hidden_size
        if hx is None:
            zeros = x.new_zeros(lstm.num_layers * dirs, batch, hidden)
            h0, c0 = zeros, zeros
        else:
            h0, c0 = (t.unsqueeze(1) if unbatched else t for t in hx)
        h_n, c_n = [], []
        layer_in = x
        for layer in range(lstm.num_layers):
            x_q = self.act_quant(layer_in)  # one u8 grid for the whole layer input
            outs = []
            for d in range(dirs):
                sfx = f"_l{layer}{'_reverse' if d else ''}"
                w = self.quantized_weight("weight_ih" + sfx)
                r = self.quantized_weight("weight_hh" + sfx)
                gates_x = x_q @ w.T  # (T, N, 4H)
                if lstm.bias:
                    gates_x = gates_x + (getattr(lstm, "bias_ih" + sfx)
                                         + getattr(lstm, "bias_hh" + sfx))
                h, c = h0[layer * dirs + d], c0[layer * dirs + d]
                ys: list[Tensor] = [x.new_empty(0)] * steps
                for t in (reversed(range(steps)) if d else range(steps)):
                    g = gates_x[t] + self.act_quant(h) @ r.T  # h: one grid per step
                    i, f, gg, o = g.chunk(4, dim=-1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
                    h = torch.sigmoid(o) * torch.tanh(c)
                    ys[t] = h
                outs.append(torch.stack(ys))
                h_n.append(h)
                c_n.append(c)
            layer_in = torch.cat(outs, dim=-1) if dirs == 2 else outs[0]
        out, h_out, c_out = layer_in, torch.stack(h_n), torch.stack(c_n)
        if unbatched:
            return out.squeeze(1), (h_out.squeeze(1), c_out.squeeze(1))
        if lstm.batch_first:
            out = out.transpose(0, 1)
        return out, (h_out, c_out)

    def extra_repr(self) -> str:
        return f"{self.lstm.extra_repr()}, dynamic u8 activations, s8 per-row weights"


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
    return FakeQuantize(spec, observer="minmax").freeze_on_(weight)


def _float_only_note(model: nn.Module) -> None:
    kept = [n or "(root)" for n, m in model.named_modules() if isinstance(m, _FLOAT_ONLY)
            and not _inside_quant_lstm(model, n)]
    if kept:
        logger.info("kept in float (weights read directly by fused kernels, out of scope "
                    "for dynamic quantization): %s", ", ".join(kept))


def _inside_quant_lstm(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:k])), DynamicQuantLSTM)
               for k in range(1, len(parts)))


def _quantize_lstms_(model: nn.Module, bits: int, skip: tuple[str, ...]) -> None:
    count = 0
    for name, module in list(model.named_modules()):
        if type(module) is not nn.LSTM:
            continue
        if any(matches(p, name) for p in skip):
            logger.info("%s: in skip list, kept in float", name)
            continue
        parent, _, attr = name.rpartition(".")
        if not name:
            raise ConfigError("the model itself is an nn.LSTM; wrap it in a module to "
                              "quantize it")
        setattr(model.get_submodule(parent), attr, DynamicQuantLSTM.from_lstm(module, bits=bits))
        count += 1
    logger.info("dynamic quantization: %d LSTM layers quantized", count)


def quantize_dynamic(model: nn.Module, config: DynamicQuantConfig = DynamicQuantConfig()
                     ) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers use s8 per-channel weights and u8
    activations quantized at run time (per tensor, or per token with ``config.per_token``).

    ``config.layers`` picks the layer kinds: "linear" (default) and / or "lstm" (each
    ``nn.LSTM`` becomes a :class:`DynamicQuantLSTM`; ``per_token`` does not apply to it).
    ``config.skip`` holds layer names or regexes kept in float. ``model`` is left untouched;
    the copy's record says how it was quantized (``torchslim.export`` reads it).
    """
    if not isinstance(config, DynamicQuantConfig):
        raise ConfigError(f"config must be a DynamicQuantConfig, not {type(config).__name__}")
    if "lstm" in config.layers and not any(type(m) is nn.LSTM for m in model.modules()):
        raise ConfigError(f"layers names nn.LSTM but {type(model).__name__} has no LSTM "
                          "module")
    skip = check_skip(model, config.skip)
    reduce, why = resolve_reduce_range(config.reduce_range)
    logger.info("dynamic quantization: %s", why)
    bits = reduced_weight(QuantSpec(bits=config.bits)).bits if reduce else config.bits
    new = copy.deepcopy(model)
    if "lstm" in config.layers:
        _quantize_lstms_(new, bits, skip)
    _float_only_note(new)
    if "linear" in config.layers:
        _quantize_linears_(new, config, skip, bits)
    quantized = tuple(n for n, m in new.named_modules()
                      if isinstance(m, (DynamicQuantLinear, DynamicQuantLSTM)))
    update_(new, quantization=Quantization(config=config, quantized=quantized,
                                           reduce_range=reduce))
    return new


def _quantize_linears_(model: nn.Module, config: DynamicQuantConfig, skip: tuple[str, ...],
                       bits: int) -> None:
    count = 0
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear:  # exact: out_proj of attention is a subclass
            continue
        if _inside_quant_lstm(model, name):
            continue
        if any(matches(p, name) for p in skip):
            logger.info("%s: in skip list, kept in float", name)
            continue
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr,
                DynamicQuantLinear.from_linear(module, bits=bits, per_token=config.per_token))
        count += 1
    logger.info("dynamic quantization: %d Linear layers quantized", count)
