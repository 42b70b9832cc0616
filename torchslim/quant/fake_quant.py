"""Fake quantization modules for quantization-aware training.

Forward: ``x_hat = dequantize(quantize(x))``. Backward (clipped straight-through
estimator): the gradient passes unchanged where ``round(x / s) + z`` lies in
``[qmin, qmax]`` and is zero where the value was clamped.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from torchslim.errors import ConfigError
from torchslim.quant.affine import (QuantSpec, broadcast_qparams, fake_quantize,
                                    normalize_axis, to_rows)
from torchslim.quant.observers import Observer, adopt_buffer_shapes, make_observer

__all__ = ["FakeQuantize", "LearnableFakeQuantize", "fake_quantize_ste"]


def fake_quantize_ste(x: Tensor, scale: Tensor, zero_point: Tensor, spec: QuantSpec) -> Tensor:
    """Differentiable fake quantization with the clipped straight-through gradient.

    Per-tensor and per-channel use torch's fused ops (which need int32 zero points and an
    explicit ``quant_min`` / ``quant_max``); per-group has no fused op and masks the
    identity gradient by hand.
    """
    xf = x.float()
    scale, zero_point = scale.float(), zero_point.to(torch.int32)
    if spec.granularity == "per_tensor":
        out = torch.fake_quantize_per_tensor_affine(
            xf, scale.reshape(()), zero_point.reshape(()), spec.qmin, spec.qmax)
    elif spec.granularity == "per_channel":
        axis = normalize_axis(spec.axis, x.dim())  # the fused op wants a non-negative axis
        out = torch.fake_quantize_per_channel_affine(
            xf, scale.reshape(-1), zero_point.reshape(-1), axis, spec.qmin, spec.qmax)
    else:
        out = _fake_quantize_grouped(xf, scale, zero_point, spec)
    return out.to(x.dtype)


def _fake_quantize_grouped(x: Tensor, scale: Tensor, zero_point: Tensor,
                           spec: QuantSpec) -> Tensor:
    with torch.no_grad():
        view, s, z = broadcast_qparams(x, scale, zero_point, spec)  # (..., D/g, g), (..., D/g, 1)
        q = torch.round(view / s) + z
        inside = ((q >= spec.qmin) & (q <= spec.qmax)).reshape(x.shape)
        out = fake_quantize(x, scale, zero_point, spec)
    # Value of `out`, gradient 1 where unclamped and 0 where clamped.
    return out + (x - x.detach()) * inside


class FakeQuantize(nn.Module):
    """An observer plus fake quantization, switched independently as in ``torch.ao``:
    calibrate with ``fake_quant_enabled=False``, train (QAT) with both on, and freeze the
    grid with ``enable_observer(False)``.

    ``scale`` / ``zero_point`` buffers follow the observer: they are refreshed on every
    forward that fake-quantizes, and when the observer is switched off.
    """

    def __init__(self, spec: QuantSpec | None = None, *, observer: str | Observer = "minmax",
                 **observer_kwargs: object) -> None:
        super().__init__()
        self.spec = spec if spec is not None else QuantSpec()
        if isinstance(observer, Observer):
            if observer.spec != self.spec:
                raise ConfigError(f"observer spec {observer.spec} differs from {self.spec}; "
                                  "build both from the same QuantSpec")
            self.observer = observer
        else:
            self.observer = make_observer(observer, self.spec, **observer_kwargs)
        self.observer_enabled = True
        self.fake_quant_enabled = True
        self._stale = False  # observer saw data since the buffers were last updated
        self.register_buffer("scale", torch.empty(0))
        self.register_buffer("zero_point", torch.empty(0, dtype=torch.int32))

    def enable_observer(self, enabled: bool = True) -> FakeQuantize:
        if not enabled:
            self.update_qparams_()
        self.observer_enabled = enabled
        return self

    def enable_fake_quant(self, enabled: bool = True) -> FakeQuantize:
        self.fake_quant_enabled = enabled
        return self

    @torch.no_grad()
    def freeze_on_(self, x: Tensor) -> FakeQuantize:
        """Observe ``x`` once more, then freeze the grid (observer off): what a weight
        quantizer does with its weight."""
        self.observer(x.detach())
        self._stale = True
        return self.enable_observer(False)

    def update_qparams_(self) -> None:
        """Copy the observer's current ``(scale, zero_point)`` into the buffers."""
        if self._stale:
            self.scale, self.zero_point = self.observer.calculate_qparams()
            self._stale = False

    def forward(self, x: Tensor) -> Tensor:
        if self.observer_enabled:
            self.observer(x)
            self._stale = True
        if not self.fake_quant_enabled:
            return x
        self.update_qparams_()
        if self.scale.numel() == 0:
            raise ConfigError("FakeQuantize has no scale yet: run calibration batches with "
                              "the observer enabled first")
        return fake_quantize_ste(x, self.scale, self.zero_point, self.spec)

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str,
                              *args: object) -> None:
        adopt_buffer_shapes(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[arg-type]
        self._stale = False  # the loaded scale / zero_point are the ones to use

    def extra_repr(self) -> str:
        return (f"spec={self.spec}, observer_enabled={self.observer_enabled}, "
                f"fake_quant_enabled={self.fake_quant_enabled}")


def _round_ste(v: Tensor) -> Tensor:
    """``round(v)`` forward, identity gradient."""
    return (torch.round(v) - v).detach() + v


def _grad_scale(s: Tensor, g: float) -> Tensor:
    """``s`` forward, gradient multiplied by ``g``."""
    return (s - s * g).detach() + s * g


class LearnableFakeQuantize(LazyModuleMixin, nn.Module):
    """LSQ (Esser et al., ICLR 2020): fake quantization with a learned step size.

    ``x_hat = round_ste(clamp(x / s, qmin, qmax)) * s``; autograd of this expression is
    LSQ's step-size gradient. The zero point is fixed at 0 for every spec (LSQ's signed
    weights and unsigned post-ReLU activations); ``spec.symmetric`` only sets the range.
    The step-size gradient is scaled by ``g = 1 / sqrt(N * qmax)``, N being the number of
    elements sharing one step: all of them for weights, or per sample for activations
    (pass ``batch_axis``, usually 0).

    ``scale`` is a lazy parameter, materialised by the first batch as
    ``2 * mean|x| / sqrt(qmax)`` per step, or as a named ``observer``'s scale; run one
    batch before building the optimizer (or load a state dict, which materialises it).
    """

    def __init__(self, spec: QuantSpec | None = None, *, batch_axis: int | None = None,
                 observer: str | None = None, **observer_kwargs: object) -> None:
        super().__init__()
        self.spec = spec if spec is not None else QuantSpec()
        self.batch_axis = batch_axis
        self.observer = (make_observer(observer, self.spec, **observer_kwargs)
                         if observer is not None else None)
        self.scale: nn.Parameter = UninitializedParameter()

    @torch.no_grad()
    def initialize_parameters(self, x: Tensor) -> None:
        """Set ``scale`` from ``x`` (LazyModuleMixin calls this before the first forward)."""
        if self.observer is not None:
            self.observer(x)
            init = self.observer.calculate_qparams()[0]
        else:
            rows, shape = to_rows(x.detach().float(), self.spec)  # (R, N)
            init = (2.0 * rows.abs().mean(dim=1) / math.sqrt(self.spec.qmax)).reshape(shape)
        if isinstance(self.scale, UninitializedParameter):
            self.scale.materialize(init.shape, device=x.device, dtype=torch.float32)
        self.scale.copy_(init.clamp(min=1e-8))

    def forward(self, x: Tensor) -> Tensor:
        view, s, _ = broadcast_qparams(x, self.scale, torch.zeros_like(self.scale), self.spec)
        s = _grad_scale(s, self._grad_factor(x))
        q = _round_ste(torch.clamp(view / s, self.spec.qmin, self.spec.qmax))
        return (q * s).reshape(x.shape).to(x.dtype)

    def _grad_factor(self, x: Tensor) -> float:
        n = x.numel() / max(self.scale.numel(), 1)
        if self.batch_axis is not None:
            n /= x.shape[self.batch_axis]
        return 1.0 / math.sqrt(max(n, 1.0) * self.spec.qmax)

    def extra_repr(self) -> str:
        return f"spec={self.spec}, batch_axis={self.batch_axis}"
