"""GPTQ against round to nearest on the layer's own objective."""

from __future__ import annotations

import pytest
import torch

from torchslim.llm.gptq import gptq_quantize
from torchslim.llm.qlinear import encode_weight
from torchslim.quant.config import weight_only_spec


def _output_error(w, codes, scales, zeros, group, x) -> float:  # type: ignore[no-untyped-def]
    n, k = w.shape
    deq = ((codes.float().reshape(n, -1, group) - zeros.float()[..., None])
           * scales[..., None]).reshape(n, k)
    return float((x @ (w - deq).t()).pow(2).mean())


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group,symmetric", [(32, True), (32, False), (None, True)])
def test_gptq_beats_rtn_on_correlated_inputs(act_order, group, symmetric) -> None:
    g = torch.Generator().manual_seed(0)
    k, n = 128, 48
    mix = torch.randn(k, k, generator=g) / k ** 0.5
    x = torch.randn(2048, k, generator=g) @ mix * torch.linspace(0.2, 3, k)  # correlated, uneven
    w = torch.randn(n, k, generator=g)
    spec = weight_only_spec(bits=4, group_size=group, symmetric=symmetric)
    h = 2 * x.t() @ x / x.shape[0]
    gq = gptq_quantize(w, h, spec, block_size=64, act_order=act_order)
    rtn = encode_weight(w, spec)
    gsize = group or k
    assert gq[0].shape == (n, k) and gq[1].shape == (n, k // gsize)
    assert _output_error(w, *gq, gsize, x) < 0.8 * _output_error(w, *rtn, gsize, x)


def test_gptq_handles_dead_inputs() -> None:
    w = torch.randn(8, 64)
    x = torch.randn(256, 64)
    x[:, 5] = 0.0
    codes, scales, zeros = gptq_quantize(w, 2 * x.t() @ x / 256, weight_only_spec(bits=4, group_size=32))
    assert torch.isfinite(scales).all() and int(codes.max()) <= 15


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_leaves_the_callers_hessian_alone(dtype, act_order) -> None:
    # the factorisation damps and factorises its own float64 copy in place
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(2))
    h = (2 * x.t() @ x / 256).to(dtype)
    before = h.clone()
    gptq_quantize(torch.randn(8, 64), h, weight_only_spec(bits=4, group_size=32),
                  act_order=act_order)
    assert torch.equal(h, before)
