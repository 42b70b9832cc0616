"""Clipping search for group scales: shrink each group's range when that lowers the
(importance-weighted) rounding error.

Min-max scales waste levels on a group's largest weight; at 4 bits a slightly clipped
range usually rounds the other weights better. For each group the ratio ``r`` in
``ratios`` minimising ``sum_j imp_j (w_j - Q_r(w_j))^2`` is kept, with ``imp_j`` the mean
squared input of column ``j`` (GPTQ: ``diag H``; AWQ: the scaled calibration inputs), so
the error is measured where the layer's output feels it (AWQ's "auto clip", the MSE
observer of ALGORITHMS.md made activation-aware).
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchslim.quant.affine import QuantSpec, compute_qparams

__all__ = ["CLIP_RATIOS", "search_qparams"]

CLIP_RATIOS = tuple(1.0 - 0.025 * i for i in range(13))  # 1.0 down to 0.7


def search_qparams(rows: Tensor, spec: QuantSpec, importance: Tensor | None = None,
                   ratios: tuple[float, ...] = CLIP_RATIOS) -> tuple[Tensor, Tensor]:
    """Per-row ``(scale (R,), zero_point (R,))`` for ``rows`` ``(R, g)`` (one quantization
    group per row) on ``spec``'s grid, ``importance`` ``(g,)`` or ``(R, g)`` weighting the
    columns (default: all 1)."""
    rows = rows.float()
    lo, hi = rows.amin(dim=1), rows.amax(dim=1)  # (R,)
    imp = torch.ones_like(rows) if importance is None else importance.float().expand_as(rows)
    best_err = torch.full_like(lo, float("inf"))
    best_s = torch.zeros_like(lo)
    best_z = torch.zeros_like(lo, dtype=torch.int32)
    for r in ratios:
        s, z = compute_qparams(lo * r, hi * r, spec)  # (R,), (R,)
        q = torch.clamp(torch.round(rows / s[:, None]) + z[:, None], spec.qmin, spec.qmax)
        err = (((q - z[:, None]) * s[:, None] - rows).pow(2) * imp).sum(dim=1)  # (R,)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, z, best_z)
    return best_s, best_z
