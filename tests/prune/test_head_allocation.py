"""prune_heads_ with HeadPruneConfig(macs=...): heads and MLP channels chosen across all
layers by importance per MAC (torchslim/prune/head_allocation.py), so layers keep
different head counts and widths; the result still equals the masked original (checked
inside prune_heads_), reaches the MACs asked for, reloads and exports."""

from __future__ import annotations

import copy
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
from torchslim.errors import ConfigError  # noqa: E402
from torchslim.prune import HeadPruneConfig, prune_heads_  # noqa: E402
from torchslim.prune.head_allocation import attention_units  # noqa: E402
from torchslim.runtime import open as open_session  # noqa: E402
from torchslim.transformers import (TextModel, dynamic_dims, example_inputs,  # noqa: E402
                                    save_pretrained, tiny_model)

FAMILIES = ("bert", "gpt2", "llama")
HEAD_DIM = 16  # every tiny model: hidden 64, 4 heads


def _out(model: nn.Module, batch: dict) -> torch.Tensor:  # type: ignore[type-arg]
    with torch.no_grad():
        out = model(**batch)
    return (out if isinstance(out, torch.Tensor) else out[0]).float()


def _data(model: nn.Module) -> list[dict[str, torch.Tensor]]:
    return [example_inputs(model, batch=4, seq=16, seed=s) for s in range(3)]


def _kill_layer0_units(model: nn.Module) -> None:
    """BERT layer 0: heads 1-3 read zero values and channels 64-127 of its MLP write
    nothing (down columns zeroed): they add nothing, layer 1 stays as it was."""
    layer = model.encoder.layer[0]
    with torch.no_grad():
        rows = slice(HEAD_DIM, 4 * HEAD_DIM)
        layer.attention.self.value.weight[rows] = 0
        layer.attention.self.value.bias[rows] = 0
        layer.output.dense.weight[:, 64:] = 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("share", [0.3, 0.5])
def test_the_share_of_macs_asked_for_goes(family: str, share: float) -> None:
    model = tiny_model(family)
    result = prune_heads_(model, HeadPruneConfig(macs=share, seq=16), data=_data(model))
    assert result.allocation == "global" and result.importance == "activation"
    ratio = result.mac_ratio(16)
    # at least the share, and at most one unit (a head: < 8 % of a tiny model) beyond it
    assert 1 - share - 0.08 < ratio <= 1 - share
    before, after = result.macs(16)
    assert after < before


def test_the_layer_whose_units_add_nothing_gives_them_up_first() -> None:
    model = tiny_model("bert")
    _kill_layer0_units(model)
    reference = copy.deepcopy(model)
    batch = example_inputs(model, batch=2, seq=12, seed=5)
    result = prune_heads_(model, HeadPruneConfig(macs=0.3, seq=16), data=_data(model))
    first, second = result.layers
    assert first.heads_removed == [1, 2, 3] and second.heads_removed == []
    assert set(first.channels_removed) <= set(range(64, 128))
    assert len(second.channels_removed) < len(first.channels_removed)
    # what was removed added nothing: the output is the original's
    assert (_out(model, batch) - _out(reference, batch)).abs().max() < 1e-5
    att = model.encoder.layer
    assert att[0].attention.self.num_attention_heads == 1
    assert att[1].attention.self.num_attention_heads == 4
    assert model.config.num_attention_heads == 4  # the largest; modules keep their own
    # the same MACs taken evenly from both layers cost accuracy; the global plan did not
    uniform = copy.deepcopy(reference)
    prune_heads_(uniform, HeadPruneConfig(heads=0.25, mlp=0.25), data=_data(uniform))
    assert (_out(uniform, batch) - _out(reference, batch)).abs().max() > 1e-3


def test_floors_stop_it_and_it_says_so(caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_model("bert")
    with caplog.at_level(logging.WARNING, logger="torchslim.prune.heads"):
        result = prune_heads_(model, HeadPruneConfig(macs=0.9, min_heads=2, min_mlp=0.25,
                                                     seq=16))
    for layer in result.layers:
        assert len(layer.heads_kept) == 2 and len(layer.channels_kept) == 32
    assert result.mac_ratio(16) > 0.1
    assert any("macs=0.9" in r.getMessage() and "min_heads" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("gqa, kv_kept", [("groups", 1), ("queries", 2)])
def test_grouped_query_attention_units(gqa: str, kv_kept: int) -> None:
    model = tiny_model("llama")  # 4 query heads, 2 KV heads
    result = prune_heads_(model, HeadPruneConfig(macs=0.5, gqa=gqa, min_heads=2, seq=16),
                          data=_data(model))
    for layer in result.layers:
        assert len(layer.kv_heads_kept) in (kv_kept, 2)
        assert len(layer.heads_kept) % len(layer.kv_heads_kept) == 0
        assert len(layer.heads_kept) >= 2


def test_attention_units_of_each_mode() -> None:
    q, kv = torch.tensor([1.0, 5.0, 2.0, 0.5], dtype=torch.float64), torch.zeros(2,
                                                                               dtype=torch.float64)
    units, q_per, kv_per = attention_units(q, kv, group=2, gqa="groups")
    assert units.tolist() == [6.0, 2.5] and (q_per, kv_per) == (2, 1)
    units, q_per, kv_per = attention_units(q, kv, group=2, gqa="queries")
    assert units.tolist() == [1.5, 7.0] and (q_per, kv_per) == (2, 0)  # j-th least per group


@pytest.mark.parametrize("kwargs, match", [
    (dict(macs=0.5, heads=0.5), "not both"),
    (dict(macs=1.0), r"macs=1.0 must be in \[0, 1\)"),
    (dict(macs=0.5, min_heads=0), "min_heads=0 must be an integer >= 1"),
    (dict(macs=0.5, min_mlp=1.5), r"min_mlp=1.5 must be in \[0, 1\]"),
    (dict(macs=0.5, seq=0), "seq=0 must be an integer >= 1"),
])
def test_bad_values_say_what_is_wrong(kwargs: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=match):
        HeadPruneConfig(**kwargs)


def test_defaults_stay_half_of_every_layer() -> None:
    cfg = HeadPruneConfig()
    assert (cfg.heads, cfg.mlp, cfg.macs, cfg.allocation) == (0.5, 0.5, None, "uniform")
    assert HeadPruneConfig(macs=0.5).heads is None


_RELOAD = """
import sys
import numpy as np
import torch
from torchslim.transformers import load_pretrained
model = load_pretrained(sys.argv[1])
batch = {k: torch.from_numpy(v) for k, v in np.load(sys.argv[2]).items()}
with torch.no_grad():
    np.save(sys.argv[3], model(**batch)[0].float().numpy())
"""


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_layers_of_different_sizes_reload_and_export(family: str, tmp_path: Path) -> None:
    model = tiny_model(family)
    if family == "bert":
        _kill_layer0_units(model)
    result = prune_heads_(model, HeadPruneConfig(macs=0.4, seq=16), data=_data(model))
    sizes = {(len(x.heads_kept), len(x.channels_kept)) for x in result.layers}
    if family == "bert":
        assert len(sizes) == 2  # the layers differ
    directory = save_pretrained(model, tmp_path / "model")
    batch = example_inputs(model, batch=2, seq=14, seed=3)
    np.savez(tmp_path / "in.npz", **{k: v.numpy() for k, v in batch.items()})
    subprocess.run([sys.executable, "-c", _RELOAD, str(directory), str(tmp_path / "in.npz"),
                    str(tmp_path / "out.npy")], check=True, timeout=300)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), _out(model, batch).numpy(),
                               atol=1e-6)
    wrapped = TextModel(model)
    ex = example_inputs(wrapped)
    path = torchslim.export(wrapped, tmp_path / "pruned.onnx", example_inputs=ex,
                            dynamic_dims=dynamic_dims(ex))
    session = open_session(path)
    for seq in (7, 19):
        feeds = example_inputs(wrapped, batch=3, seq=seq, seed=seq)
        with torch.no_grad():
            ref = wrapped(**feeds).numpy()
        np.testing.assert_allclose(session.run({k: v.numpy() for k, v in feeds.items()}), ref,
                                   atol=2e-5, rtol=1e-4)
