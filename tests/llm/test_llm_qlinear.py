"""Integer Linear layers: packing, encoding, kernels against the dequantized reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchslim.llm.qlinear import (KERNEL_MAX_ROWS, QuantEmbedding, W8A8Linear,
                                   WeightOnlyLinear, encode_weight, pack_int4, unpack_int4)
from torchslim.quant.affine import sqnr_db
from torchslim.quant.config import weight_only_spec


def test_pack_int4_round_trips() -> None:
    codes = torch.randint(0, 16, (6, 10), dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (6, 5) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), codes)


@pytest.mark.parametrize("bits,group,symmetric,min_db", [
    (8, None, True, 38.0), (4, 64, True, 14.0), (4, 32, False, 16.0), (3, 64, True, 8.0)])
def test_weight_only_linear_matches_its_dequantized_weight(bits, group, symmetric, min_db) -> None:
    lin = nn.Linear(128, 96, bias=True)
    codes, scales, zeros = encode_weight(lin.weight.detach(), weight_only_spec(
        bits=bits, group_size=group, symmetric=symmetric))
    assert int(codes.max()) < 2 ** bits
    q = WeightOnlyLinear.from_codes(lin, codes, scales, zeros, bits=bits, group_size=group)
    assert q.sqnr_db is not None and q.sqnr_db > min_db
    assert sqnr_db(lin.weight, q.weight_float()) == pytest.approx(q.sqnr_db)
    x = torch.randn(4, 7, 128)
    with torch.no_grad():  # few rows: packed kernel where one fits (bf16 activations)
        y = q(x)
        ref = x @ q.weight_float().t() + lin.bias
    assert y.shape == (4, 7, 96)
    assert sqnr_db(ref, y) > 35.0


def test_kernel_path_is_used_at_decode_sizes_and_fp32_gemm_beyond() -> None:
    lin = nn.Linear(128, 64, bias=False)
    codes, scales, zeros = encode_weight(lin.weight.detach(), weight_only_spec(bits=4, group_size=64))
    q = WeightOnlyLinear.from_codes(lin, codes, scales, zeros, bits=4, group_size=64)
    with torch.no_grad():
        q(torch.randn(1, 128))
        assert q._kernel and q._kernel[0] == "int4"
        big = torch.randn(KERNEL_MAX_ROWS + 1, 128)
        assert torch.allclose(q(big), big @ q.weight_float().t(), atol=1e-5)


def test_w8a8_linear_close_to_float() -> None:
    lin = nn.Linear(64, 32)
    q = W8A8Linear.from_float(lin)
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert sqnr_db(lin(x), q(x)) > 30.0


def test_quant_embedding_reads_the_tied_table() -> None:
    lin = nn.Linear(32, 50, bias=False)
    codes, scales, zeros = encode_weight(lin.weight.detach(), weight_only_spec(bits=4, group_size=16))
    head = WeightOnlyLinear.from_codes(lin, codes, scales, zeros, bits=4, group_size=16)
    emb = QuantEmbedding(head)
    ids = torch.tensor([[0, 3, 49], [7, 7, 1]])
    assert torch.equal(emb(ids), head.weight_float()[ids])
    assert list(emb.state_dict()) == []  # the table is saved once, with the head


def test_partial_last_group_is_padded_and_the_kernel_still_runs() -> None:
    lin = nn.Linear(96, 32, bias=False)  # groups of 64: 96 inputs stored as 128
    codes, scales, zeros = encode_weight(lin.weight.detach(), weight_only_spec(bits=4, group_size=64))
    assert codes.shape == (32, 128) and scales.shape == (32, 2)
    q = WeightOnlyLinear.from_codes(lin, codes, scales, zeros, bits=4, group_size=64)
    assert q.weight_float().shape == (32, 96) and q.sqnr_db > 14.0
    x = torch.randn(3, 96)
    with torch.no_grad():
        y = q(x)
        assert q._kernel and q._kernel[0] == "int4"
    assert sqnr_db(x @ q.weight_float().t(), y) > 35.0
