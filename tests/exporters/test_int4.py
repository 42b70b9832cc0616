"""Packed 4-bit weight-only ONNX (MatMulNBits) and quantized embedding lookups
(GatherBlockQuantized) for the three transformer families, run in ONNX Runtime against
the torch model."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
import torch

import torchslim
from torchslim.errors import ConfigError, UnsupportedModelError
from torchslim.exporters.int4 import export_int4
from torchslim.llm import LLMQuantConfig, quantize_llm
from torchslim.llm.embedding import quantize_embeddings_
from torchslim.llm.qlinear import WeightOnlyLinear, encode_weight
from torchslim.quant.config import DynamicQuantConfig, WeightOnlyConfig, weight_only_spec
from torchslim.runtime import open as open_session
from torchslim.transformers import TextModel, dynamic_dims, example_inputs, tiny_model

pytest.importorskip("transformers")


def _ops(path) -> collections.Counter:  # type: ignore[no-untyped-def]
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _numpy(batch: dict) -> dict:  # type: ignore[type-arg]
    return {k: v.numpy() for k, v in batch.items()}


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_int4_runs_at_two_sequence_lengths_and_matches_torch(family: str, tmp_path) -> None:
    model = TextModel(tiny_model(family))
    if family == "gpt2":  # its projections are Conv1D: the LLM path turns them into Linears
        q = TextModel(quantize_llm(model.model, LLMQuantConfig(method="rtn", group_size=32,
                                                               lm_head=False)))
    else:
        q = torchslim.quantize(model, WeightOnlyConfig(bits=4, group_size=32))
    ex = example_inputs(model)
    path = export_int4(q, tmp_path / "m.onnx", example_inputs=ex, dynamic_dims=dynamic_dims(ex))
    ops = _ops(path)
    # every Linear the output uses: BERT 2 x 6 (its pooler is not in the graph), GPT-2
    # 2 x 4 (head kept float), Llama 2 x 7 + its LM head
    assert ops["MatMulNBits"] == {"bert": 12, "gpt2": 8, "llama": 15}[family]
    session = open_session(path)
    for seq in (11, 17):  # > 32 rows: the torch layers multiply in float32 like the kernel
        batch = example_inputs(model, batch=3, seq=seq, seed=seq)
        with torch.no_grad():
            ref = q(**batch).numpy()
        out = session.run(_numpy(batch))
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)


def _bits(path) -> collections.Counter:  # type: ignore[no-untyped-def]
    """MatMulNBits nodes by their ``bits``."""
    return collections.Counter(next(a.i for a in n.attribute if a.name == "bits")
                               for n in onnx.load(str(path)).graph.node
                               if n.op_type == "MatMulNBits")


def test_gptq_result_exports_packed_with_an_int8_head(tmp_path) -> None:  # type: ignore[no-untyped-def]
    hf = tiny_model("llama")
    ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(2))
    q = TextModel(quantize_llm(hf, LLMQuantConfig(method="gptq", group_size=32, n_samples=4,
                                                  seq_len=32), calibration=ids))
    ex = example_inputs(q)
    path = export_int4(q, tmp_path / "gptq.onnx", example_inputs=ex, dynamic_dims=dynamic_dims(ex))
    # the int8 per-row head is a MatMulNBits too: as DequantizeLinear -> MatMul, ONNX Runtime
    # fused it into one with accuracy_level=4 (int8 activations), 3e-3 from the torch model
    assert _bits(path) == {4: 14, 8: 1} and _ops(path)["DequantizeLinear"] == 0
    batch = example_inputs(q, batch=3, seq=12, seed=5)
    with torch.no_grad():
        ref = q(**batch).numpy()
    np.testing.assert_allclose(open_session(path).run(_numpy(batch)), ref, atol=2e-5, rtol=1e-4)


def test_8bit_rows_of_any_width_and_zero_point_export_as_matmul_nbits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # hidden 40: the int8 head's rows (K = 40) are blocks of 16, padded to 48; one layer
    # is 8-bit per row with asymmetric zero points (stored, one byte per block)
    hf = tiny_model("llama", hidden_size=40, head_dim=10)
    q = quantize_llm(hf, LLMQuantConfig(method="rtn", group_size=32))
    down = hf.model.layers[0].mlp.down_proj
    codes, scales, zeros = encode_weight(down.weight.detach(), weight_only_spec(
        bits=8, group_size=None, symmetric=False))
    assert bool((zeros != 128).any())
    q.model.layers[0].mlp.down_proj = WeightOnlyLinear.from_codes(down, codes, scales, zeros,
                                                                  bits=8, group_size=None)
    model = TextModel(q)
    ex = example_inputs(model)
    path = export_int4(model, tmp_path / "m8.onnx", example_inputs=ex,
                       dynamic_dims=dynamic_dims(ex))
    assert _bits(path) == {4: 13, 8: 2}
    batch = example_inputs(model, batch=3, seq=12, seed=3)
    with torch.no_grad():
        ref = model(**batch).numpy()
    np.testing.assert_allclose(open_session(path).run(_numpy(batch)), ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_embeddings_become_gather_block_quantized(bits: int, tmp_path) -> None:
    model = TextModel(tiny_model("bert"))
    q = torchslim.quantize(model, WeightOnlyConfig(bits=4, group_size=32))
    assert quantize_embeddings_(q, bits=bits, min_rows=100) == ["model.embeddings.word_embeddings"]
    ex = example_inputs(model)
    path = export_int4(q, tmp_path / "e.onnx", example_inputs=ex, dynamic_dims=dynamic_dims(ex))
    ops = _ops(path)
    assert ops["GatherBlockQuantized"] == 1
    init = {i.name: i for i in onnx.load(str(path)).graph.initializer}
    table = next(i for n, i in init.items() if n.endswith("word_embeddings_quantized"))
    assert table.data_type == onnx.TensorProto.UINT8
    assert list(table.dims) == [128, 64 if bits == 8 else 32]
    batch = example_inputs(model, batch=3, seq=13, seed=1)
    with torch.no_grad():
        ref = q(**batch).numpy()
    np.testing.assert_allclose(open_session(path).run(_numpy(batch)), ref, atol=2e-5, rtol=1e-4)


def test_int4_file_is_at_most_0_6_of_the_int8_file(tmp_path) -> None:
    hf = tiny_model("bert", hidden_size=256, intermediate_size=1024, vocab_size=4096,
                    num_attention_heads=4)
    model = TextModel(hf)
    ex = example_inputs(model)
    dims = dynamic_dims(ex)
    int8 = torchslim.quantize(model, DynamicQuantConfig())
    quantize_embeddings_(int8, bits=8)
    int8_path = torchslim.export(int8, tmp_path / "int8.onnx", example_inputs=ex,
                                 dynamic_dims=dims)
    int4 = torchslim.quantize(model, WeightOnlyConfig(bits=4, group_size=32))
    quantize_embeddings_(int4, bits=4)
    int4_path = export_int4(int4, tmp_path / "int4.onnx", example_inputs=ex, dynamic_dims=dims)
    fp32 = torchslim.export(model, tmp_path / "fp32.onnx", example_inputs=ex, dynamic_dims=dims)
    # the group scales (one per 32 weights) are float16 values: stored in 2 bytes, not 4
    inits = onnx.load(str(int4_path)).graph.initializer
    assert {onnx.TensorProto.DataType.Name(i.data_type) for i in inits
            if i.name.endswith(("_scales", "_scales_fp16"))
            and "embeddings" not in i.name} == {"FLOAT16"}
    ratio = int4_path.stat().st_size / int8_path.stat().st_size
    assert ratio <= 0.6, ratio  # 0.601 with float32 group scales, 0.568 now
    assert int8_path.stat().st_size <= 0.3 * fp32.stat().st_size


def test_int4_refusals(tmp_path) -> None:
    model = TextModel(tiny_model("bert"))
    ex = example_inputs(model)
    with pytest.raises(UnsupportedModelError, match="no 4-bit weight-only Linear"):
        export_int4(model, tmp_path / "f.onnx", example_inputs=ex)
    q48 = torchslim.quantize(model, WeightOnlyConfig(bits=4, group_size=None))
    with pytest.raises(ConfigError, match="power of two"):  # per channel: block 64 is fine,
        export_int4(torchslim.quantize(TextModel(tiny_model("bert", hidden_size=48,
                                                            intermediate_size=96)),
                                       WeightOnlyConfig(bits=4, group_size=None)),
                    tmp_path / "g.onnx", example_inputs=ex)
    assert export_int4(q48, tmp_path / "pc.onnx", example_inputs=ex).is_file()  # K = 64
    w8a8 = TextModel(quantize_llm(tiny_model("llama"), LLMQuantConfig(
        method="smoothquant", bits=8, group_size=None, n_samples=2, seq_len=16),
        calibration=torch.randint(0, 128, (2, 16))))
    with pytest.raises(UnsupportedModelError, match="smooth_"):
        export_int4(w8a8, tmp_path / "s.onnx", example_inputs=example_inputs(w8a8))
