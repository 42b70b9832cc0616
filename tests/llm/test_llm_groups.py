"""Scale groups found on the captured graph of the three families, SmoothQuant as a float
transform, and the groups quantize_llm reports."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from torchslim import record_of
from torchslim.llm import LLMQuantConfig, SmoothConfig, find_scale_groups, quantize_llm, smooth_
from torchslim.transformers import TextModel, example_inputs, tiny_model

pytest.importorskip("transformers")

# (family, producer kinds expected, one group that must be there)
EXPECTED = {
    "bert": ({"linear"}, "encoder.layer.0.attention.self.value -> "
                         "encoder.layer.0.attention.output.dense"),
    "gpt2": ({"norm"}, "transformer.h.0.ln_1 -> transformer.h.0.attn.c_attn"),
    "llama": ({"norm", "linear"}, "model.layers.1.mlp.up_proj -> model.layers.1.mlp.down_proj"),
}


@pytest.mark.parametrize("family", list(EXPECTED))
def test_groups_come_from_the_graph(family: str) -> None:
    model = tiny_model(family)
    groups = find_scale_groups(model, example_inputs(TextModel(model)))
    kinds, one = EXPECTED[family]
    assert {g.kind for g in groups} == kinds
    assert one in {g.describe() for g in groups}
    if family == "bert":  # post-LN: every LayerNorm also feeds the residual, so no group
        assert not any("LayerNorm" in g.prev for g in groups)
    if family == "llama":  # grouped-query attention: v (32 wide) cannot fold into o (64)
        assert not any(g.prev.endswith("v_proj") for g in groups)
        assert len([g for g in groups if g.prev.endswith("input_layernorm")]) == 2


def test_value_output_group_with_full_attention_heads() -> None:
    model = tiny_model("llama", num_key_value_heads=4, num_hidden_layers=1)
    groups = {g.describe() for g in find_scale_groups(model, example_inputs(TextModel(model)))}
    assert "model.layers.0.self_attn.v_proj -> model.layers.0.self_attn.o_proj" in groups


@pytest.mark.parametrize("family", list(EXPECTED))
def test_smooth_keeps_the_function_and_reports_groups(family: str) -> None:
    model = TextModel(tiny_model(family))
    batches = [example_inputs(model, seed=s) for s in range(3)]
    with torch.no_grad():
        before = model(**batches[0])
    weights = {n: p.clone() for n, p in model.named_parameters()}
    result = smooth_(model, batches, config=SmoothConfig(alpha=0.5))
    assert result.groups and not result.notes
    with torch.no_grad():
        after = model(**batches[0])
    assert float((after - before).norm() / before.norm()) < 1e-4
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, weights[n])]
    assert len(changed) >= 2 * len(result.groups)  # the producer and its readers


def test_smooth_says_so_when_there_is_nothing_to_smooth(caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    before = [p.clone() for p in model.parameters()]
    with caplog.at_level(logging.WARNING):
        result = smooth_(model, [torch.randn(4, 8)])
    assert result.groups == [] and "nothing was smoothed" in result.notes[0]
    assert "found no" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("family,method", [("bert", "smoothquant"), ("gpt2", "smoothquant"),
                                           ("llama", "smoothquant"), ("bert", "awq")])
def test_quantize_llm_reports_the_groups_it_folded(family: str, method: str) -> None:
    model = tiny_model(family)
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    cfg = LLMQuantConfig(method=method, bits=8 if method == "smoothquant" else 4,
                         group_size=None if method == "smoothquant" else 32, n_samples=4,
                         seq_len=16, lm_head=False, grid=4)
    q = quantize_llm(model, cfg, calibration=ids)
    info = record_of(q).quantization
    assert info.scale_groups and not info.notes
    assert EXPECTED[family][1] in info.scale_groups
    assert info.to_json()["scale_groups"] == list(info.scale_groups)
    with torch.no_grad():
        ref, out = TextModel(model)(ids), TextModel(q)(ids)
    assert torch.nn.functional.cosine_similarity(out.flatten(1), ref.flatten(1)).mean() > 0.9
