"""GPTQ (Frantar et al., ICLR 2023): quantize a Linear weight column by column, spreading
each column's rounding error over the columns not yet quantized, weighted by the inverse
Hessian of the layer's squared output error, ``H = 2 X X^T / n``.

Columns are processed in blocks of ``block_size``; inside a block the update is applied
column by column, and the block's accumulated error reaches the rest of the matrix in one
GEMM afterwards ("lazy batch updates"). With ``act_order`` columns go by descending
``diag(H)``; the group scales are then fixed up front from the original weight ("static
groups") so that the stored layout keeps plain consecutive groups.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
from torch import Tensor

from torchslim.errors import UnsupportedModelError
import torch.nn.functional as F

from torchslim.llm.clip import search_qparams
from torchslim.llm.qlinear import pad_columns
from torchslim.quant.affine import QuantSpec, calc_qparams_for

__all__ = ["gptq_quantize"]


def _channel_spec(spec: QuantSpec) -> QuantSpec:
    return dataclasses.replace(spec, granularity="per_channel", axis=0, group_size=None)


def _inverse_hessian_factor(h: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor of ``(H + lambda I)^-1``, lambda = damp * mean(diag H).

    ``h`` is damped in place (the caller's own float64 copy). Each intermediate is freed
    before the next is made, so at most three ``(K, K)`` float64 matrices coexist (for the
    1536-wide down projection: 54 MiB, not the 90 MiB of keeping them all)."""
    h.diagonal().add_(damp * float(h.diagonal().mean()))
    for attempt in range(4):  # grow the damping if H is numerically indefinite
        try:
            inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
            return torch.linalg.cholesky(inverse, upper=True)
        except torch.linalg.LinAlgError:
            h.diagonal().add_(damp * float(h.diagonal().mean()) * 10 ** attempt)
    raise UnsupportedModelError("GPTQ: the calibration Hessian is not positive definite even "
                                "with extra damping; use more calibration samples or damp=0.1")


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """The column loop is thousands of tiny ops: with several threads each one waits at an
    OpenMP barrier, which on a busy machine made it ~20x slower than one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def gptq_quantize(weight: Tensor, hessian: Tensor, spec: QuantSpec, *, block_size: int = 128,
                  damp: float = 0.01, act_order: bool = False, clip: bool = False
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """``(codes uint8 (N, K_pad), scales (N, G), zeros uint8 (N, G))`` for ``weight``
    ``(N, K)`` given ``hessian`` ``(K, K)``; same layout as ``encode_weight``. ``clip``:
    each group's range from ``search_qparams`` weighted by ``diag H``, not min-max."""
    with _single_thread():
        return _gptq(weight, hessian, spec, block_size=block_size, damp=damp,
                     act_order=act_order, clip=clip)


def _gptq(weight: Tensor, hessian: Tensor, spec: QuantSpec, *, block_size: int, damp: float,
          act_order: bool, clip: bool) -> tuple[Tensor, Tensor, Tensor]:
    w = pad_columns(weight.detach().float(), spec.group_size).clone()  # (N, K_pad)
    extra = w.shape[1] - weight.shape[1]  # padding columns: "dead" inputs (H = 0)
    h = hessian.detach().to(torch.float64, copy=True)  # to factorise; this function's own
    if extra:
        h = F.pad(h, (0, extra, 0, extra))
    n, k = w.shape
    dead = h.diagonal() == 0  # inputs never active: any value works, make it exact zero
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    g = k if spec.group_size is None else spec.group_size
    chan = _channel_spec(spec)
    offset = 2 ** (spec.bits - 1) if spec.signed else 0
    groups = k // g
    scales = torch.zeros(n, groups, dtype=torch.float32)
    zeros = torch.zeros(n, groups, dtype=torch.int32)
    static = act_order or spec.group_size is None
    hdiag = h.diagonal().float()

    def grid(cols: Tensor, imp: Tensor) -> tuple[Tensor, Tensor]:
        return search_qparams(cols, chan, imp) if clip else calc_qparams_for(cols, chan)

    if static:  # every group's grid from the original weight (per channel: one group)
        for j in range(groups):
            s, z = grid(w[:, j * g:(j + 1) * g], hdiag[j * g:(j + 1) * g])
            scales[:, j], zeros[:, j] = s, z
    if act_order:
        perm = torch.argsort(h.diagonal(), descending=True)
        w, h = w[:, perm], h[perm][:, perm]
    else:  # the identity: no permuted copies of w and H
        perm = torch.arange(k)
    hinv = _inverse_hessian_factor(h, damp).float()  # (K, K) upper
    del h
    zeros_f = zeros.float()
    codes = torch.zeros(n, k)  # integer-valued, in permuted column order
    order = perm.tolist()
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = w[:, i1:i2].clone()  # (N, B)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = order[i1 + i]
            j = col // g
            if not static and col % g == 0:  # the group's first column: fix its grid now
                s, z = grid(w1[:, i:i + g], hdiag[i1 + i:i1 + i + g])
                scales[:, j], zeros[:, j], zeros_f[:, j] = s, z, z
            s, z = scales[:, j], zeros_f[:, j]
            q = torch.clamp(torch.round(w1[:, i] / s) + z, spec.qmin, spec.qmax)  # (N,)
            codes[:, i1 + i] = q
            err = (w1[:, i] - (q - z) * s) / hinv1[i, i]  # (N,)
            w1[:, i:].addr_(err, hinv1[i, i:], alpha=-1.0)  # spread over the later columns
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]  # the block's lazy update
    if act_order:  # back to the stored column order
        out = torch.empty_like(codes)
        out[:, perm] = codes
    else:
        out = codes
    return ((out.to(torch.int32) + offset).to(torch.uint8), scales,
            (zeros + offset).to(torch.uint8))
