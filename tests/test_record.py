"""The one record of what torchslim did to a module: survives copies, tracing, pickling and
checkpoints; every transform writes it."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from pathlib import Path

import pytest
import torch
from torch import fx, nn

from torchslim import record_of
from torchslim._record import Quantization, carry_, masked_layers, update_
from torchslim.prune import SparsityConfig, sparsify_
from torchslim.quant import QuantConfig, prepare
from torchslim.train import load_checkpoint, read_checkpoint, save_checkpoint
from torchslim.zoo import build_model


def test_a_plain_module_has_an_empty_record_and_updates_replace_it() -> None:
    layer = nn.Linear(4, 4)
    empty = record_of(layer)
    assert (empty.architecture, empty.reshaped, empty.masked, empty.quantization) == (
        None, False, False, None)
    new = update_(layer, masked=True)
    assert record_of(layer) is new and new.masked and not empty.masked  # records are frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        new.masked = False  # type: ignore[misc]


def test_build_model_records_its_architecture() -> None:
    model = build_model("resnet8", width=4)
    assert record_of(model).architecture["name"] == "resnet8"
    assert record_of(model).architecture["kwargs"]["width"] == 4


def test_the_record_survives_deepcopy_pickle_and_fx_tracing() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    update_(model, reshaped=True)
    update_(model[0], masked=True)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert record_of(other).reshaped and record_of(other[0]).masked
    traced = fx.symbolic_trace(model)
    assert [name for name, _ in masked_layers(traced)] == ["0"]   # layers are carried over
    carry_(model, traced, quantization=Quantization(config=QuantConfig()))
    again = copy.deepcopy(traced)   # GraphModule.__deepcopy__ rebuilds from the graph
    assert record_of(again).reshaped and record_of(again).quantization.kind == "QuantConfig"


def test_prepare_keeps_the_float_record_and_adds_the_quantization() -> None:
    model = build_model("resnet8", width=4).eval()
    sparsify_(model, SparsityConfig(sparsity=0.5))
    prepared = prepare(model, example_inputs=torch.zeros(1, 1, 28, 28))
    record = record_of(prepared)
    assert record.architecture["name"] == "resnet8"
    assert record.quantization.config == QuantConfig() and record.quantization.quantized
    # the quantized twins keep the masks (QAT keeps the zeros)
    assert [n for n, _ in masked_layers(prepared)] == [n for n, _ in masked_layers(model)]
    assert len(masked_layers(prepared)) == 8


def test_the_sidecar_holds_the_record_and_a_reload_restores_the_masks(tmp_path: Path) -> None:
    model = build_model("resnet8", width=8).eval()
    sparsify_(model, SparsityConfig(sparsity=0.5))
    masked = [name for name, _ in masked_layers(model)]
    path = save_checkpoint(tmp_path / "m.safetensors", model)
    _, meta = read_checkpoint(path)
    assert meta["record"]["masked"] == masked and not meta["record"]["reshaped"]
    again, _ = load_checkpoint(path)
    assert [name for name, _ in masked_layers(again)] == masked
