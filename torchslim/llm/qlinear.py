"""Integer Linear layers that a quantized LM is made of, with real low-bit CPU kernels.

Storage (what ``save_quantized`` writes, portable): unsigned codes ``u`` in
``[0, 2^bits - 1]`` with an integer zero point per group, ``w = (u - zero) * scale``.
4-bit codes are packed two per byte (even column in the low nibble); 3- and 8-bit codes
use one byte each. A signed symmetric grid is stored with ``zero = 2^(bits-1)``.

Compute: at decode sizes (few rows) the layer calls PyTorch's packed CPU kernels,
``_weight_int4pack_mm_for_cpu`` (4-bit, groups of 32..256) and ``_weight_int8pack_mm``
(8-bit symmetric per channel); their fast paths take bfloat16 activations, so the input
is cast to bf16 and the output back. At prefill / perplexity sizes (many rows) the
weight is dequantized to float32 once per call and multiplied with fp32 GEMM, where
compute, not memory, bounds the time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchslim.quant.affine import QuantSpec, calc_qparams_for, quantize_tensor

__all__ = ["WeightOnlyLinear", "W8A8Linear", "QuantEmbedding", "encode_weight", "pack_int4",
           "padded_width", "pad_columns",
           "unpack_int4", "KERNEL_MAX_ROWS"]

KERNEL_MAX_ROWS = 32  # rows up to which the packed kernels beat dequantize + fp32 GEMM
_INT4_KERNEL_GROUPS = (32, 64, 128, 256)


def pack_int4(codes: Tensor) -> Tensor:
    """``(N, K)`` codes in [0, 15] -> ``(N, K // 2)`` uint8, even column in the low nibble."""
    c = codes.to(torch.uint8)
    return c[:, 0::2] | (c[:, 1::2] << 4)


def unpack_int4(packed: Tensor) -> Tensor:
    """Inverse of ``pack_int4``: ``(N, K // 2)`` uint8 -> ``(N, K)`` uint8 codes."""
    lo, hi = packed & 0x0F, packed >> 4
    return torch.stack((lo, hi), dim=-1).reshape(packed.shape[0], -1)


def padded_width(k: int, group_size: int | None) -> int:
    """``k`` rounded up to whole groups: 576 inputs in groups of 128 are stored as 640."""
    return k if group_size is None else -(-k // group_size) * group_size


def pad_columns(weight: Tensor, group_size: int | None) -> Tensor:
    """``(N, K)`` -> ``(N, K_pad)`` with zero columns: a last, partial group is quantized
    on its real values only (the grid always contains 0), and zero inputs meet the
    padding in the kernel, so the padded columns never contribute."""
    extra = padded_width(weight.shape[1], group_size) - weight.shape[1]
    return F.pad(weight, (0, extra)) if extra else weight


def encode_weight(weight: Tensor, spec: QuantSpec, scale: Tensor | None = None,
                  zero_point: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Round-to-nearest codes of a Linear ``weight`` ``(N, K)`` on ``spec``'s grid:
    ``(codes uint8 (N, K_pad), scales float32 (N, G), zeros uint8 (N, G))``, ``G`` groups
    per row (1 per channel), ``K_pad = padded_width(K)``. ``scale`` / ``zero_point``
    default to min-max of ``weight``."""
    weight = pad_columns(weight.float(), spec.group_size)
    if scale is None or zero_point is None:
        scale, zero_point = calc_qparams_for(weight, spec)
    q = quantize_tensor(weight, scale, zero_point, spec).to(torch.int32)
    n = weight.shape[0]
    offset = 2 ** (spec.bits - 1) if spec.signed else 0  # signed grid -> unsigned codes
    codes = (q + offset).to(torch.uint8)
    zeros = (zero_point.reshape(n, -1).to(torch.int32) + offset).to(torch.uint8)
    return codes, scale.reshape(n, -1).float(), zeros


def _sqnr_db(weight: Tensor, layer: WeightOnlyLinear | W8A8Linear, chunk: int = 4096) -> float:
    """``10 log10(|w|^2 / |w - w_hat|^2)`` over blocks of rows, so that a 49152 x 576
    output projection never needs full-size float temporaries."""
    noise = signal = 0.0
    for start in range(0, weight.shape[0], chunk):
        w = weight[start:start + chunk].detach().float()
        w_hat = layer.weight_float(slice(start, start + chunk))
        noise += float((w - w_hat).pow(2).sum(dtype=torch.float64))
        signal += float(w.pow(2).sum(dtype=torch.float64))
    if noise == 0.0:
        return math.inf
    return -math.inf if signal == 0.0 else 10.0 * math.log10(signal / noise)


class WeightOnlyLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored as ``bits``-bit codes, per group of ``group_size``
    input elements (``None`` = per output channel)."""

    def __init__(self, in_features: int, out_features: int, *, bits: int,
                 group_size: int | None, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        self.padded = padded_width(in_features, group_size)  # stored columns
        groups = 1 if group_size is None else self.padded // group_size
        width = self.padded // 2 if bits == 4 else self.padded
        self.register_buffer("qweight", torch.zeros(out_features, width, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, groups))
        self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=torch.uint8))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._kernel: tuple[str, Tensor, Tensor] | None | bool = False  # False = not built
        self.sqnr_db: float | None = None  # weight SQNR against the float weight it replaced

    @classmethod
    def from_codes(cls, linear: nn.Linear, codes: Tensor, scales: Tensor, zeros: Tensor, *,
                   bits: int, group_size: int | None) -> WeightOnlyLinear:
        layer = cls(linear.in_features, linear.out_features, bits=bits, group_size=group_size,
                    bias=linear.bias is not None)
        layer.qweight = pack_int4(codes) if bits == 4 else codes.to(torch.uint8).contiguous()
        layer.scales, layer.zeros = scales.float().contiguous(), zeros.to(torch.uint8).contiguous()
        if linear.bias is not None:
            layer.bias = linear.bias.detach().float().clone()
        layer.sqnr_db = _sqnr_db(linear.weight, layer)
        return layer

    @property
    def group(self) -> int:
        return self.padded if self.group_size is None else self.group_size

    def codes(self) -> Tensor:
        """``(N, K_pad)`` uint8 codes."""
        return unpack_int4(self.qweight) if self.bits == 4 else self.qweight

    def dequantize_rows(self, codes: Tensor, scales: Tensor, zeros: Tensor) -> Tensor:
        """Float32 weights of some rows: ``(..., K_pad)`` codes with ``(..., G)`` scales and
        zeros -> ``(..., K)`` (the padding columns dropped)."""
        shape = codes.shape
        grouped = codes.reshape(*shape[:-1], -1, self.group).to(torch.float32)  # (..., G, g)
        w = (grouped - zeros.unsqueeze(-1).float()) * scales.unsqueeze(-1)
        return w.reshape(shape)[..., : self.in_features]

    def weight_float(self, rows: slice = slice(None)) -> Tensor:
        """The dequantized ``(N, K)`` float32 weight (or some of its rows)."""
        packed = self.qweight[rows]
        codes = unpack_int4(packed) if self.bits == 4 else packed
        return self.dequantize_rows(codes, self.scales[rows], self.zeros[rows])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def _build_kernel(self) -> tuple[str, Tensor, Tensor] | None:
        """Packed weights for the CPU kernel, or None where no kernel fits this layout."""
        n, k = self.out_features, self.padded
        if self.bits == 4 and self.group in _INT4_KERNEL_GROUPS and k % self.group == 0:
            codes = self.codes().to(torch.int32)  # (N, K) in [0, 15]
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
            # the kernel computes (u - 8) * s + m: m = (8 - zero) * s reproduces (u - zero) * s
            s = self.scales.t()  # (G, N)
            m = (8.0 - self.zeros.t().float()) * s
            sz = torch.stack((s, m), dim=-1).to(torch.bfloat16).contiguous()  # (G, N, 2)
            return "int4", packed, sz
        if self.bits == 8 and self.group_size is None and bool((self.zeros == 128).all()):
            q = (self.qweight.to(torch.int16) - 128).to(torch.int8).contiguous()  # (N, K)
            return "int8", q, self.scales.reshape(n).to(torch.bfloat16)
        return None

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // self.in_features
        if rows <= KERNEL_MAX_ROWS and not torch.is_grad_enabled() and x.device.type == "cpu":
            if self._kernel is False:
                self._kernel = self._build_kernel()
            if self._kernel is not None:
                return self._kernel_forward(x)
        return F.linear(x, self.weight_float().to(x.dtype), self.bias)

    def _kernel_forward(self, x: Tensor) -> Tensor:
        kind, packed, params = self._kernel  # type: ignore[misc]
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (rows, K)
        if self.padded > self.in_features:  # zero inputs for the padding columns
            x2 = F.pad(x2, (0, self.padded - self.in_features))
        if kind == "int4":
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, packed, self.group, params)
        else:
            y = torch.ops.aten._weight_int8pack_mm(x2, packed, params)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self._kernel = False  # rebuilt from the new codes on the next call
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        grid = "per_channel" if self.group_size is None else f"group_size={self.group_size}"
        return f"{self.in_features}, {self.out_features}, bits={self.bits}, {grid}"


class W8A8Linear(nn.Module):
    """int8 per-channel symmetric weights, int8 per-token dynamic symmetric activations,
    int32 accumulation (``torch._int_mm``), float32 output."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.sqnr_db: float | None = None

    @classmethod
    def from_float(cls, linear: nn.Linear) -> W8A8Linear:
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8)  # (N,)
        layer.qweight = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        layer.scales = scale
        if linear.bias is not None:
            layer.bias = linear.bias.detach().float().clone()
        layer.sqnr_db = _sqnr_db(linear.weight, layer)
        return layer

    def weight_float(self, rows: slice = slice(None)) -> Tensor:
        return self.qweight[rows].float() * self.scales[rows, None]

    def forward(self, x: Tensor) -> Tensor:
        x2 = x.reshape(-1, self.in_features).float()  # (rows, K)
        x_scale = (x2.abs().amax(dim=1, keepdim=True) / 127.0).clamp(min=1e-8)  # (rows, 1)
        xq = torch.round(x2 / x_scale).clamp(-127, 127).to(torch.int8)
        acc = torch._int_mm(xq, self.qweight.t())  # (rows, N) int32
        y = acc.float() * x_scale * self.scales
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, w8a8 per-token dynamic"


class QuantEmbedding(nn.Module):
    """An embedding lookup that reads the rows of a tied, quantized output projection, so
    one integer table serves both (it holds no tensors of its own)."""

    def __init__(self, source: WeightOnlyLinear, padding_idx: int | None = None) -> None:
        super().__init__()
        self.__dict__["source"] = source  # not a submodule: the table is saved once, as lm_head
        self.padding_idx = padding_idx
        self.num_embeddings, self.embedding_dim = source.out_features, source.in_features

    def forward(self, ids: Tensor) -> Tensor:
        src = self.source
        rows = src.qweight[ids]  # (..., K or K/2)
        codes = unpack_int4(rows.reshape(-1, rows.shape[-1])).reshape(
            *ids.shape, -1) if src.bits == 4 else rows
        return src.dequantize_rows(codes, src.scales[ids], src.zeros[ids])

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, tied to the quantized lm_head"

