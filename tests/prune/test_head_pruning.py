"""Attention-head and MLP-channel pruning of transformers (torchslim/prune/heads.py) on the
three small-config families: whole heads go (the output equals the original's with the
same heads masked), the sizes halve, and the result saves, reloads in a new process and
exports to ONNX Runtime at two sequence lengths."""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

import torchslim  # noqa: E402
from torchslim.errors import ConfigError, UnknownNameError, UnsupportedModelError  # noqa: E402
from torchslim.prune import HeadPruneConfig, prune_heads_  # noqa: E402
from torchslim.runtime import open as open_session  # noqa: E402
from torchslim.transformers import (TextModel, dynamic_dims, example_inputs,  # noqa: E402
                                    save_pretrained, tiny_model)
from torchslim.transformers.persist import resizable_layers  # noqa: E402

FAMILIES = ("bert", "gpt2", "llama")
# where each family's o and down projections are: the TEST's own knowledge, to build the
# masked reference independently of how prune_heads_ found them
O_AND_DOWN = {"bert": ("encoder.layer.{}.attention.output.dense",
                       "encoder.layer.{}.output.dense"),
              "gpt2": ("transformer.h.{}.attn.c_proj", "transformer.h.{}.mlp.c_proj"),
              "llama": ("model.layers.{}.self_attn.o_proj", "model.layers.{}.mlp.down_proj")}
STACK = {"bert": "encoder.layer.", "gpt2": "transformer.h.", "llama": "model.layers."}


def _out(model: nn.Module, batch: dict) -> torch.Tensor:  # type: ignore[type-arg]
    with torch.no_grad():
        out = model(**batch)
    return (out if isinstance(out, torch.Tensor) else out[0]).float()


def _masked(original: nn.Module, family: str, result, heads: list[list[int]] | None = None
            ) -> nn.Module:  # type: ignore[no-untyped-def]
    """A copy of ``original`` with the removed heads' o columns and the removed channels'
    down columns zeroed (``heads``: other heads instead, per layer)."""
    model = copy.deepcopy(original)
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    o_name, down_name = O_AND_DOWN[family]
    with torch.no_grad():
        for i, layer in enumerate(result.layers):
            removed = heads[i] if heads is not None else layer.heads_removed
            cols = [h * head_dim + j for h in removed for j in range(head_dim)]
            for name, idx in ((o_name.format(i), cols),
                              (down_name.format(i), layer.channels_removed)):
                module = model.get_submodule(name)
                weight = module.weight if isinstance(module, nn.Linear) else module.weight.t()
                weight[:, idx] = 0  # Conv1D stores (in, out): its input rows
    return model


def _sizes(model: nn.Module, family: str) -> tuple[int, int]:
    """(weight elements, parameters) of every projection inside the layer stack."""
    layers = {n: m for n, m in resizable_layers(model).items() if n.startswith(STACK[family])}
    return (sum(m.weight.numel() for m in layers.values()),
            sum(p.numel() for m in layers.values() for p in m.parameters(recurse=False)))


@pytest.fixture(scope="module")
def pruned() -> dict:  # type: ignore[type-arg]
    """family -> (original, pruned, result): 2 of 4 heads and half the MLP removed."""
    out = {}
    for family in FAMILIES:
        original = tiny_model(family)
        model = copy.deepcopy(original)
        out[family] = (original, model, prune_heads_(model, HeadPruneConfig(heads=0.5, mlp=0.5)))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_half_the_heads_and_channels_go_and_the_sizes_halve(family: str, pruned) -> None:  # type: ignore[no-untyped-def]
    original, model, result = pruned[family]
    weights0, params0 = _sizes(original, family)
    weights1, params1 = _sizes(model, family)
    assert weights1 * 2 == weights0  # every q, k, v, o, up, gate, down weight halves
    assert 0.49 < params1 / params0 < 0.51  # o's and down's biases stay hidden-sized
    assert result.params_before == params0 and result.params_after == params1
    assert result.mac_ratio(128) == pytest.approx(0.5, abs=1e-12)
    assert model.config.num_attention_heads == 2
    width = 256 if family == "gpt2" else 128  # GPT-2's MLP is 4 x hidden
    for layer in result.layers:
        assert len(layer.heads_kept) == 2 and len(layer.heads_removed) == 2
        assert sorted(layer.heads_kept + layer.heads_removed) == [0, 1, 2, 3]
        assert len(layer.channels_kept) == width // 2
        assert sorted(layer.channels_kept + layer.channels_removed) == list(range(width))
    if family == "llama":  # 2 KV heads of 2 query heads each: one whole group goes
        assert model.config.num_key_value_heads == 1
        assert all(len(layer.kv_heads_kept) == 1 for layer in result.layers)
        assert all(layer.heads_removed in ([0, 1], [2, 3]) for layer in result.layers)
        assert model.model.layers[0].mlp.intermediate_size == 64
    if family == "gpt2":
        assert model.config.n_inner == 128 and model.transformer.h[0].attn.split_size == 32
    if family == "bert":
        assert model.encoder.layer[0].attention.self.all_head_size == 32
        assert model.config.head_dim == 16  # 64 / 2 heads no longer gives it


@pytest.mark.parametrize("family", FAMILIES)
def test_output_equals_the_original_with_those_heads_masked(family: str, pruned) -> None:  # type: ignore[no-untyped-def]
    original, model, result = pruned[family]
    reference = _masked(original, family, result)
    others = [[h for h in range(4) if h not in layer.heads_removed][:2] for layer in result.layers]
    wrong = _masked(original, family, result, heads=others)
    for seq in (9, 23):
        batch = example_inputs(model, batch=3, seq=seq, seed=seq)
        out = _out(model, batch)
        assert out.shape == _out(original, batch).shape
        assert (out - _out(reference, batch)).abs().max() < 1e-5
        # the check can fail: masking two other heads gives another output
        assert (out - _out(wrong, batch)).abs().max() > 1e-3


def test_grouped_query_attention_can_keep_every_kv_head() -> None:
    original = tiny_model("llama")
    model = copy.deepcopy(original)
    result = prune_heads_(model, HeadPruneConfig(heads=0.5, mlp=0.0, gqa="queries"))
    assert model.config.num_attention_heads == 2 and model.config.num_key_value_heads == 2
    assert model.model.layers[0].self_attn.num_key_value_groups == 1
    for layer in result.layers:  # one query head of each group of two
        assert [h // 2 for h in layer.heads_kept] == [0, 1] and layer.kv_heads_removed == []
    batch = example_inputs(model, batch=2, seq=12)
    reference = _masked(original, "llama", result)
    assert (_out(model, batch) - _out(reference, batch)).abs().max() < 1e-5
    assert model.model.layers[0].self_attn.k_proj.out_features == 32  # k, v untouched


_RELOAD = """
import json, sys, numpy as np, torch
from torchslim.transformers import load_pretrained
path, inputs, out = sys.argv[1], np.load(sys.argv[2]), sys.argv[3]
batch = {k: torch.from_numpy(inputs[k]) for k in inputs.files}
models = {"torchslim": load_pretrained(path)}
if sys.argv[4] == "1":  # the config alone describes a pruned Llama: transformers reads it
    import transformers
    models["transformers"] = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
with torch.no_grad():
    np.savez(out, **{k: m(**batch)[0].float().numpy() for k, m in models.items()})
"""


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_saves_and_reloads_in_a_new_process(family: str, pruned, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, model, _ = pruned[family]
    directory = save_pretrained(model, tmp_path / "model")
    saved = json.loads((directory / "config.json").read_text())
    assert saved["torchslim_structure"]["build"]["num_attention_heads"] == 4
    batch = example_inputs(model, batch=2, seq=14, seed=3)
    np.savez(tmp_path / "in.npz", **{k: v.numpy() for k, v in batch.items()})
    subprocess.run([sys.executable, "-c", _RELOAD, str(directory), str(tmp_path / "in.npz"),
                    str(tmp_path / "out.npz"), "1" if family == "llama" else "0"],
                   check=True, timeout=300)
    outputs = np.load(tmp_path / "out.npz")
    assert set(outputs.files) == ({"torchslim", "transformers"} if family == "llama"
                                  else {"torchslim"})
    for name in outputs.files:
        np.testing.assert_allclose(outputs[name], _out(model, batch).numpy(), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_exports_to_onnx_runtime_at_two_sequence_lengths(family: str, pruned,
                                                         tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, model, _ = pruned[family]
    wrapped = TextModel(model)
    ex = example_inputs(wrapped)
    path = torchslim.export(wrapped, tmp_path / "pruned.onnx", example_inputs=ex,
                            dynamic_dims=dynamic_dims(ex))
    session = open_session(path)
    for seq in (7, 19):
        batch = example_inputs(wrapped, batch=3, seq=seq, seed=seq)
        with torch.no_grad():
            ref = wrapped(**batch).numpy()
        out = session.run({k: v.numpy() for k, v in batch.items()})
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_a_head_count_that_does_not_divide_the_hidden_size_reloads(family: str,
                                                                   tmp_path: Path) -> None:
    from torchslim.transformers import load_pretrained

    model = TextModel(tiny_model(family))  # a wrapper is pruned (and saved) as its model
    prune_heads_(model, HeadPruneConfig(heads=0.25, mlp=0.3))
    assert model.config.num_attention_heads == 3  # 64 / 3: BERT and GPT-2 would not build
    assert torchslim.record_of(model).reshaped and torchslim.record_of(model.model).reshaped
    reloaded = load_pretrained(save_pretrained(model, tmp_path / "m"))
    assert reloaded.config.num_attention_heads == 3 and reloaded.config.head_dim == 16
    batch = example_inputs(model, batch=2, seq=10)
    assert (_out(reloaded, batch) - _out(model.model, batch)).abs().max() == 0


def _dead_head(model: nn.Module, family: str) -> None:
    """Head 1 of layer 0 reads zero values (its v rows and bias zeroed) but has the
    largest q and k rows: it adds nothing to the output, its weights are large."""
    head_dim = 16
    rows = slice(head_dim, 2 * head_dim)
    with torch.no_grad():
        if family == "bert":
            att = model.encoder.layer[0].attention.self
            att.value.weight[rows] = 0
            att.value.bias[rows] = 0
            att.query.weight[rows] *= 20
            att.key.weight[rows] *= 20
        else:  # gpt2: fused c_attn, weight (in, out) = [q | k | v] columns
            c_attn = model.transformer.h[0].attn.c_attn
            v = slice(128 + head_dim, 128 + 2 * head_dim)
            c_attn.weight[:, v] = 0
            c_attn.bias[v] = 0
            c_attn.weight[:, rows] *= 20
            c_attn.weight[:, 64 + head_dim:64 + 2 * head_dim] *= 20


@pytest.mark.parametrize("family, importance", [("bert", "activation"), ("gpt2", "taylor")])
def test_data_based_importance_removes_the_head_that_adds_nothing(family: str,
                                                                  importance: str) -> None:
    data = [example_inputs(tiny_model(family), batch=4, seq=16, seed=s) for s in range(3)]
    by_weight, by_data = tiny_model(family), tiny_model(family)
    _dead_head(by_weight, family)
    _dead_head(by_data, family)
    cfg = HeadPruneConfig(heads=0.25, mlp=0.25)
    assert 1 not in prune_heads_(by_weight, cfg).layers[0].heads_removed  # large weights stay
    result = prune_heads_(by_data, HeadPruneConfig(heads=0.25, mlp=0.25, importance=importance),
                          data=data)
    assert result.importance == importance and result.layers[0].heads_removed == [1]
    assert all(p.grad is None for p in by_data.parameters())  # Taylor's gradients dropped


def test_data_defaults_to_activation_and_taylor_needs_a_loss() -> None:
    model = tiny_model("bert")
    data = [example_inputs(model, seed=s) for s in range(2)]
    assert prune_heads_(copy.deepcopy(model), data=data).importance == "activation"
    assert prune_heads_(copy.deepcopy(model)).importance == "l2"
    with pytest.raises(ConfigError, match="BertModel has no head.*importance='activation'"):
        prune_heads_(copy.deepcopy(model), HeadPruneConfig(importance="taylor"), data=data)
    with pytest.raises(ConfigError, match="needs data="):
        prune_heads_(copy.deepcopy(model), HeadPruneConfig(importance="activation"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(heads=1.0), r"heads=1.0 must be in \[0, 1\)"),
    (dict(mlp=-0.1), r"mlp=-0.1 must be in \[0, 1\)"),
    (dict(gqa="kv"), "choose one of groups, queries"),
    (dict(batches=0), "batches=0 must be >= 1"),
])
def test_bad_configs_say_what_is_wrong(kwargs: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=match):
        HeadPruneConfig(**kwargs)
    with pytest.raises(UnknownNameError, match="known: activation, l1, l2, taylor"):
        HeadPruneConfig(importance="l3")


def test_removing_every_kv_group_is_refused_and_leaves_the_model_alone() -> None:
    model = tiny_model("llama")  # 2 KV groups: heads=0.8 rounds to both
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="heads=0.8 would remove all 2 KV groups"):
        prune_heads_(model, HeadPruneConfig(heads=0.8))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


class _TokenMixer(nn.Module):
    """An attention-free layer (one projection mixing features), in BERT's place."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mix = nn.Linear(hidden, hidden)

    def forward(self, hidden_states, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.mix(hidden_states), None


def test_an_unrecognised_attention_is_named_with_the_fix() -> None:
    model = tiny_model("bert")
    model.encoder.layer[1].attention = _TokenMixer(64)
    with pytest.raises(UnsupportedModelError,
                       match=r"_TokenMixer in encoder\.layer\.1 is not an attention .*heads=0"):
        prune_heads_(model)
    result = prune_heads_(model, HeadPruneConfig(heads=0.0, mlp=0.5))  # the fix works
    assert [len(layer.channels_kept) for layer in result.layers] == [64, 64]
    assert model.config.num_attention_heads == 4
    with pytest.raises(UnsupportedModelError, match="no transformers config"):
        prune_heads_(nn.Sequential(nn.Linear(4, 4)))


def test_a_head_count_it_cannot_update_fails_the_check_and_restores_the_model() -> None:
    from transformers.models.bert.modeling_bert import BertSelfAttention

    class StoredHeads(BertSelfAttention):
        """Derives its head size from a head count of its own, which pruning misses."""

        @property
        def attention_head_size(self) -> int:  # type: ignore[override]
            return self.query.out_features // self.stored_heads

        @attention_head_size.setter
        def attention_head_size(self, value: int) -> None:
            pass

    model = tiny_model("bert")
    for layer in model.encoder.layer:
        layer.attention.self.__class__ = StoredHeads
        layer.attention.self.stored_heads = 4
    batch = example_inputs(model)
    before, config = _out(model, batch), model.config.to_dict()
    with pytest.raises(UnsupportedModelError, match="BertAttention: heads and channels not "
                                                    "removed, its output differs"):
        prune_heads_(model, HeadPruneConfig(heads=0.5, mlp=0.0))
    assert torch.equal(_out(model, batch), before) and model.config.to_dict() == config
    assert model.encoder.layer[0].attention.self.query.out_features == 64


def test_the_result_explains_itself_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="torchslim.prune.heads"):
        result = prune_heads_(tiny_model("llama"), HeadPruneConfig(heads=0.5, mlp=0.25))
    lines = [r.getMessage() for r in caplog.records]
    assert any("model.layers.0: heads kept" in m and "KV heads kept" in m and
               "MLP channels kept 96 of 128" in m for m in lines)
    assert any("MACs" in m for m in lines)
    data = result.to_dict()
    assert data["layers"][1]["heads_removed"] == result.layers[1].heads_removed
    assert json.dumps(data)  # JSON as it is


def test_prune_dispatches_a_head_prune_config() -> None:
    from torchslim.prune import prune_

    model = tiny_model("bert")
    result = prune_(model, HeadPruneConfig(heads=0.5, mlp=0.0))
    assert model.config.num_attention_heads == 2
    assert result.mac_ratio(16) < 1.0
