"""Loading local models only, and the quantized save / reload round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torchslim import record_of
from torchslim.errors import CheckpointError, ConfigError
from torchslim.llm import LLMQuantConfig, quantize_llm, weight_sqnr
from torchslim.llm.model import QUANT_MANIFEST, load_causal_lm, save_quantized
from torchslim.llm.qlinear import QuantEmbedding, WeightOnlyLinear


def test_hub_names_are_refused_with_a_clear_message() -> None:
    with pytest.raises(ConfigError, match="never downloads from a model hub"):
        load_causal_lm("HuggingFaceTB/SmolLM2-135M-Instruct")


def test_missing_path_and_wrong_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_causal_lm(tmp_path / "nope")
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="not a .gguf"):
        load_causal_lm(tmp_path / "w.bin")
    with pytest.raises(CheckpointError, match="not a model directory"):
        load_causal_lm(tmp_path)


def test_loads_a_local_directory(tiny_dir: Path, tiny_llama) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = load_causal_lm(tiny_dir)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, tiny_llama(ids).logits, atol=1e-5)
    assert tokenizer("w1 w2").input_ids == [2, 3]


@pytest.mark.parametrize("cfg", [LLMQuantConfig(method="rtn", bits=4, group_size=64),
                                 LLMQuantConfig(method="rtn", bits=3, group_size=32, symmetric=False),
                                 LLMQuantConfig(method="smoothquant", bits=8, group_size=None)],
                         ids=lambda c: c.label)
def test_quantized_model_saves_and_reloads_exactly(cfg, tiny_llama, tiny_tokenizer, calib_ids,  # type: ignore[no-untyped-def]
                                                   tmp_path: Path) -> None:
    q = quantize_llm(tiny_llama, cfg, calibration=calib_ids)
    out = save_quantized(q, tmp_path / "q", tokenizer=tiny_tokenizer)
    manifest = json.loads((out / QUANT_MANIFEST).read_text())
    assert manifest["config"]["method"] == cfg.method
    assert manifest["modules"]["model.embed_tokens"]["kind"] == "tied_embedding"
    loaded, tokenizer = load_causal_lm(out)
    assert isinstance(loaded.model.embed_tokens, QuantEmbedding)
    assert isinstance(loaded.lm_head, WeightOnlyLinear)
    assert record_of(loaded).quantization.config == cfg
    assert weight_sqnr(loaded) == weight_sqnr(q)
    with torch.no_grad():
        for ids in (calib_ids[:2], calib_ids[:1, :4]):  # fp32 GEMM path and kernel path
            assert torch.equal(loaded(ids).logits, q(ids).logits)
    # packed int4 storage: half a byte per weight
    if cfg.bits == 4:
        assert loaded.model.layers[0].mlp.up_proj.qweight.shape == (256, 64)
