"""The affine integer mapping every quantizer in torchslim shares.

``q = clamp(round(x / s) + z, qmin, qmax)`` and ``x_hat = (q - z) * s``, with one
``(s, z)`` per tensor, per channel (along ``spec.axis``) or per group of ``group_size``
consecutive elements of the last dim (the input elements of a Linear weight).

Shapes of ``(scale, zero_point)`` for an ``x`` of shape ``(..., D)``:

* per_tensor:  ``()``
* per_channel: ``(x.shape[axis],)``
* per_group:   ``(..., D // group_size)`` (a trailing 1 is accepted too)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from torchslim.errors import ConfigError

__all__ = [
    "GRANULARITIES", "QuantSpec", "compute_qparams", "calc_qparams_for", "to_rows",
    "broadcast_qparams", "normalize_axis", "quantize_tensor", "dequantize_tensor", "fake_quantize",
    "sqnr_db",
]

GRANULARITIES = ("per_tensor", "per_channel", "per_group")


@dataclass(frozen=True, kw_only=True)
class QuantSpec:
    """How a tensor is mapped to integers; validated on construction."""

    bits: int = 8  # 2..8: every level count we run fits an int8 / uint8 container
    signed: bool = True  # int8-style [-128, 127] (or [-127, 127]) vs uint8-style [0, 255]
    symmetric: bool = True  # z = 0 and the restricted range, as ONNX Runtime / TensorRT weights
    granularity: str = "per_tensor"  # one of GRANULARITIES
    axis: int = 0  # per-channel axis: 0 = output channels of conv / linear weights
    group_size: int | None = None  # per-group block along the LAST dim (input elements)

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ConfigError(f"bits={self.bits!r} must be an integer in [2, 8]")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity={self.granularity!r} is not one of "
                              f"{', '.join(GRANULARITIES)}")
        if self.symmetric and not self.signed:
            raise ConfigError("symmetric=True needs signed=True (z = 0 would waste half of an "
                              "unsigned range); use signed=False with symmetric=False")
        if self.granularity == "per_group" and (
                not isinstance(self.group_size, int) or self.group_size < 1):
            raise ConfigError(f"group_size={self.group_size!r} must be an integer >= 1 "
                              "for granularity='per_group'")

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        # Symmetric drops -2^(b-1) so that the grid is symmetric around 0: [-127, 127].
        return -(2 ** (self.bits - 1)) + (1 if self.symmetric else 0)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype ``quantize`` returns: the smallest container that holds [qmin, qmax]."""
        return torch.int8 if self.signed else torch.uint8


def compute_qparams(min_val: Tensor, max_val: Tensor, spec: QuantSpec,
                    eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """``(scale float32, zero_point int32)`` of the same shape as ``min_val`` / ``max_val``.

    The range is widened to include 0 so that 0.0 maps to an exact integer, and the scale
    is at least ``eps`` so that an all-zero tensor gives a finite grid.
    """
    # float64 so that (max - min) of values near the float32 limit does not overflow.
    lo = torch.clamp(min_val.detach().double(), max=0.0)
    hi = torch.clamp(max_val.detach().double(), min=0.0)
    if spec.symmetric:
        scale = (torch.maximum(-lo, hi) / spec.qmax).clamp(min=eps)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
        return scale.float(), zero_point
    scale = ((hi - lo) / (spec.qmax - spec.qmin)).clamp(min=eps)
    zero_point = torch.round(spec.qmin - lo / scale).clamp(spec.qmin, spec.qmax)
    return scale.float(), zero_point.to(torch.int32)


def normalize_axis(axis: int, ndim: int) -> int:
    """``axis`` in ``[0, ndim)``; negative axes count from the end."""
    if not -ndim <= axis < ndim:
        raise ConfigError(f"axis={axis} is out of range for a {ndim}-D tensor")
    return axis % ndim


def _group_view(x: Tensor, spec: QuantSpec) -> Tensor:
    """``(..., D)`` -> ``(..., D // g, g)``: one row per quantization group."""
    g = spec.group_size
    assert g is not None  # QuantSpec guarantees it for per_group
    if x.dim() == 0:
        raise ConfigError("per_group quantization needs a tensor with at least 1 dim")
    d = x.shape[-1]
    if d % g != 0:
        raise ConfigError(f"last dim {d} is not divisible by group_size={g}; "
                          f"pick a group_size that divides {d}")
    return x.reshape(*x.shape[:-1], d // g, g)


def to_rows(x: Tensor, spec: QuantSpec) -> tuple[Tensor, tuple[int, ...]]:
    """``x`` as ``(R, N)``: one row per (scale, zero_point), and the qparams' shape.

    Reductions (min / max, mean |x|, histograms) run along dim 1; reshaping an ``(R,)``
    result to the returned shape gives qparams that broadcast back against ``x``.
    """
    if spec.granularity == "per_tensor":
        return x.reshape(1, -1), ()
    if spec.granularity == "per_channel":
        axis = normalize_axis(spec.axis, x.dim())
        return x.movedim(axis, 0).reshape(x.shape[axis], -1), (x.shape[axis],)  # (C, N / C)
    grouped = _group_view(x, spec)  # (..., D/g, g)
    return grouped.reshape(-1, grouped.shape[-1]), tuple(grouped.shape[:-1])  # (R, g)


def calc_qparams_for(x: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Min-max ``(scale, zero_point)`` of ``x`` at the spec's granularity."""
    if x.numel() == 0:
        raise ConfigError(f"cannot compute qparams of an empty tensor of shape {tuple(x.shape)}")
    rows, shape = to_rows(x.detach(), spec)
    lo, hi = torch.aminmax(rows, dim=1)  # (R,), (R,)
    return compute_qparams(lo.reshape(shape), hi.reshape(shape), spec)


def broadcast_qparams(x: Tensor, scale: Tensor, zero_point: Tensor,
                      spec: QuantSpec) -> tuple[Tensor, Tensor, Tensor]:
    """``x`` viewed for its granularity, with ``scale`` / ``zero_point`` broadcastable to it."""
    if spec.granularity == "per_tensor":
        view, shape = x, ()
    elif spec.granularity == "per_channel":
        axis = normalize_axis(spec.axis, x.dim())
        view, shape = x, tuple(x.shape[axis] if d == axis else 1 for d in range(x.dim()))
    else:
        view = _group_view(x, spec)  # (..., D/g, g)
        shape = (*view.shape[:-1], 1)  # (..., D/g, 1)
    if scale.numel() != math.prod(shape) or zero_point.numel() != math.prod(shape):
        raise ConfigError(f"{spec.granularity} qparams for a tensor of shape {tuple(x.shape)} "
                          f"need {math.prod(shape)} values; got scale {tuple(scale.shape)}, "
                          f"zero_point {tuple(zero_point.shape)}")
    return view, scale.reshape(shape), zero_point.reshape(shape)


def quantize_tensor(x: Tensor, scale: Tensor, zero_point: Tensor, spec: QuantSpec) -> Tensor:
    """Integers in ``[qmin, qmax]`` with ``x``'s shape, stored as ``spec.storage_dtype``
    (int8 when signed, uint8 when not). Widen to int32 before doing arithmetic on them."""
    view, s, z = broadcast_qparams(x, scale, zero_point, spec)
    q = torch.clamp(torch.round(view / s) + z, spec.qmin, spec.qmax)
    return q.reshape(x.shape).to(spec.storage_dtype)


def dequantize_tensor(q: Tensor, scale: Tensor, zero_point: Tensor, spec: QuantSpec) -> Tensor:
    """Float32 ``(q - z) * s`` with ``q``'s shape."""
    view, s, z = broadcast_qparams(q.to(torch.int32), scale, zero_point, spec)
    return ((view - z.to(torch.int32)) * s.float()).reshape(q.shape)


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, spec: QuantSpec) -> Tensor:
    """``dequantize_tensor(quantize_tensor(x))`` in ``x``'s float dtype (no gradient; see FakeQuantize).

    Computed in float32 without the integer round trip (same values, fewer passes)."""
    view, s, z = broadcast_qparams(x.float(), scale, zero_point, spec)
    q = torch.clamp(torch.round(view / s) + z, spec.qmin, spec.qmax)  # integer-valued floats
    return ((q - z) * s).reshape(x.shape).to(x.dtype)


def sqnr_db(x: Tensor, x_hat: Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(|x|^2 / |x - x_hat|^2)`` in dB."""
    x64, x_hat64 = x.detach().double(), x_hat.detach().double()
    noise = float(((x64 - x_hat64) ** 2).sum())
    signal = float((x64 ** 2).sum())
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
