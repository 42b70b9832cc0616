"""quantize_llm on a tiny random Llama: every method, the copy and in-place semantics,
config checks."""

from __future__ import annotations

import copy

import pytest
import torch

from torchslim.errors import ConfigError, UnknownNameError
from torchslim.llm import (LLMQuantConfig, quantize_llm, quantize_llm_, quantized_layers,
                           weight_sqnr)
from torchslim.llm.evaluate import model_nbytes
from torchslim.llm.qlinear import QuantEmbedding, W8A8Linear, WeightOnlyLinear
from torchslim.quant.affine import sqnr_db

CONFIGS = [
    LLMQuantConfig(method="rtn", bits=8, group_size=None),
    LLMQuantConfig(method="rtn", bits=4, group_size=64),
    LLMQuantConfig(method="rtn", bits=3, group_size=32, symmetric=False),
    LLMQuantConfig(method="gptq", bits=4, group_size=64),
    LLMQuantConfig(method="gptq", bits=4, group_size=32, act_order=True),
    LLMQuantConfig(method="awq", bits=4, group_size=64, grid=5),
    LLMQuantConfig(method="smoothquant", bits=8, group_size=None),
]


def _logits(model, ids):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.label + ("-ao" if c.act_order else ""))
def test_every_method_quantizes_all_linears_and_stays_close(cfg, tiny_llama, calib_ids) -> None:
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    ref = _logits(tiny_llama, calib_ids[:2])
    q = quantize_llm(tiny_llama, cfg, calibration=calib_ids)
    layers = quantized_layers(q)
    assert len(layers) == 2 * 7 + 1  # 7 Linears per decoder layer + lm_head
    kind = W8A8Linear if cfg.method == "smoothquant" else WeightOnlyLinear
    assert isinstance(layers["model.layers.1.mlp.down_proj"], kind)
    assert isinstance(q.model.embed_tokens, QuantEmbedding)
    min_db = {8: 25.0, 4: 10.0, 3: 5.0}[cfg.bits]
    assert sqnr_db(ref, _logits(q, calib_ids[:2])) > min_db
    assert min(weight_sqnr(q).values()) > min_db
    for key, value in tiny_llama.state_dict().items():  # the input model is untouched
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.label + ("-ao" if c.act_order else ""))
def test_in_place_variant_matches_the_copy_and_drops_float_weights(cfg, tiny_llama,
                                                                   calib_ids) -> None:
    ref = quantize_llm(tiny_llama, cfg, calibration=calib_ids)
    model = copy.deepcopy(tiny_llama)
    out = quantize_llm_(model, cfg, calibration=calib_ids)
    assert out is model
    expected, got = ref.state_dict(), model.state_dict()
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    assert torch.equal(_logits(model, calib_ids[:2]), _logits(ref, calib_ids[:2]))
    # float parameters left: the RMSNorm weights only (2 per layer + the final one, 128 each)
    assert sum(p.numel() for p in model.parameters()) == (2 * 2 + 1) * 128


def test_gptq_and_awq_beat_rtn_at_3_bits(tiny_llama, calib_ids) -> None:
    ref = _logits(tiny_llama, calib_ids)
    err = {}
    for method in ("rtn", "gptq", "awq"):
        q = quantize_llm(tiny_llama, LLMQuantConfig(method=method, bits=3, group_size=32,
                                                    lm_head=False), calibration=calib_ids)
        err[method] = float((_logits(q, calib_ids) - ref).pow(2).mean())
    assert err["gptq"] < err["rtn"]
    assert err["awq"] <= err["rtn"]


def test_int4_model_is_small(tiny_llama) -> None:
    q = quantize_llm(tiny_llama, LLMQuantConfig(method="rtn", bits=4, group_size=64))
    assert model_nbytes(q) < 0.3 * model_nbytes(tiny_llama)


def test_calibration_from_texts_needs_a_tokenizer(tiny_llama, tiny_tokenizer, words) -> None:
    cfg = LLMQuantConfig(method="gptq", n_samples=4, seq_len=16)
    with pytest.raises(ConfigError, match="tokenizer"):
        quantize_llm(tiny_llama, cfg, calibration=[words(200)])
    with pytest.raises(ConfigError, match="calibration"):
        quantize_llm(tiny_llama, cfg)
    q = quantize_llm(tiny_llama, cfg, calibration=[words(200)], tokenizer=tiny_tokenizer)
    assert len(quantized_layers(q)) == 15


def test_skip_keeps_layers_float(tiny_llama) -> None:
    q = quantize_llm(tiny_llama, LLMQuantConfig(skip=(r"model\.layers\.0\..*", "lm_head")))
    names = set(quantized_layers(q))
    assert not any(n.startswith("model.layers.0.") for n in names) and "lm_head" not in names
    assert isinstance(q.model.embed_tokens, torch.nn.Embedding)


@pytest.mark.parametrize("kwargs,error", [
    ({"method": "hqq"}, UnknownNameError), ({"bits": 5}, ConfigError),
    ({"method": "smoothquant", "bits": 4}, ConfigError), ({"group_size": 0}, ConfigError),
    ({"method": "gptq", "group_size": 96}, ConfigError), ({"damp": 2.0}, ConfigError)])
def test_config_validates(kwargs, error) -> None:
    with pytest.raises(error):
        LLMQuantConfig(**kwargs)


def test_group_size_that_does_not_divide_pads_the_last_group(tiny_llama, calib_ids) -> None:
    ref = _logits(tiny_llama, calib_ids[:2])
    for method in ("rtn", "gptq", "awq"):  # 128 and 256 inputs in groups of 96
        q = quantize_llm(tiny_llama, LLMQuantConfig(method=method, group_size=96, block_size=96),
                         calibration=calib_ids)
        assert q.model.layers[0].mlp.down_proj.scales.shape == (128, 3)
        assert sqnr_db(ref, _logits(q, calib_ids[:2])) > 10.0


def test_label() -> None:
    assert LLMQuantConfig(method="gptq", bits=4, group_size=64).label == "gptq-int4-g64"
    assert LLMQuantConfig(method="rtn", bits=8, group_size=None).label == "rtn-int8-pc"
    assert LLMQuantConfig(method="smoothquant", bits=8, group_size=None).label == "smoothquant-w8a8"
