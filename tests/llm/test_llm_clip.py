"""Clipping search: never worse than min-max on the error it minimises."""

from __future__ import annotations

import pytest
import torch

from torchslim.llm.clip import search_qparams
from torchslim.quant.affine import QuantSpec, calc_qparams_for, fake_quantize


@pytest.mark.parametrize("symmetric", [True, False])
def test_clipping_search_lowers_weighted_error(symmetric: bool) -> None:
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(64, 32, generator=g)  # Gaussian rows: a clipped range rounds better
    imp = torch.rand(32, generator=g) + 0.1
    spec = QuantSpec(bits=4, signed=symmetric, symmetric=symmetric, granularity="per_channel")

    def error(scale, zero):  # type: ignore[no-untyped-def]
        return float(((fake_quantize(rows, scale, zero, spec) - rows) ** 2 * imp).sum())

    searched = search_qparams(rows, spec, imp)
    assert error(*searched) < 0.95 * error(*calc_qparams_for(rows, spec))
    # ratio 1.0 is a candidate, so the search is min-max when only that is allowed
    s, z = search_qparams(rows, spec, imp, ratios=(1.0,))
    s_ref, z_ref = calc_qparams_for(rows, spec)
    assert torch.allclose(s, s_ref) and torch.equal(z, z_ref)
