"""Masks: exact sparsity levels, N:M patterns, zeros that survive fine-tuning, QAT, export."""

from __future__ import annotations

import zlib
from pathlib import Path

import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from torchslim import record_of
from torchslim.errors import ConfigError
from torchslim.exporters import export_onnx, export_qdq
from torchslim.prune import (GradualSparsity, SparsityConfig, layer_sparsity, nm_mask, prune_,
                             sparsify_, sparsity_at)
from torchslim.quant.api import qat
from torchslim.train import TrainConfig, fit
from torchslim.zoo import build_model


def masked_zeros(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() == 0 for n, m in model.named_modules()
            if record_of(m).masked}


def test_global_unstructured_hits_the_share_of_weights() -> None:
    model = build_model("resnet8", width=16)
    sparsity = sparsify_(model, SparsityConfig(sparsity=0.7))
    zeros = sum(int((m.weight == 0).sum()) for n, m in model.named_modules() if n in sparsity)
    total = sum(m.weight.numel() for n, m in model.named_modules() if n in sparsity)
    assert zeros / total == pytest.approx(0.7, abs=1e-3)
    assert len(set(round(v, 2) for v in sparsity.values())) > 1  # global: layers differ


def test_per_layer_sparsity_is_the_same_everywhere() -> None:
    model = build_model("resnet8", width=16)
    sparsity = prune_(model, SparsityConfig(sparsity=0.5, scope="layer"))
    assert all(v == pytest.approx(0.5, abs=0.01) for v in sparsity.values())


def test_two_four_keeps_two_of_every_four_inputs() -> None:
    w = torch.randn(8, 16, 3, 3)
    keep = nm_mask(w.abs(), 2, 4)
    blocks = keep.movedim(1, -1).reshape(-1, 4)
    assert bool((blocks.sum(1) == 2).all())
    # the kept ones are the two largest of their block
    ranked = w.abs().movedim(1, -1).reshape(-1, 4)
    assert bool((ranked[blocks].reshape(-1, 2).min(1).values >= ranked[~blocks].reshape(-1, 2).max(1).values).all())


def test_nm_skips_layers_whose_inputs_do_not_divide() -> None:
    model = build_model("resnet8", width=16)   # the stem has 1 input channel
    sparsity = sparsify_(model, SparsityConfig(pattern="n:m", n=2, m=4))
    assert "conv1.0" not in sparsity and "conv1" not in sparsity
    assert all(v == pytest.approx(0.5) for v in sparsity.values())


def test_masks_stay_exactly_zero_through_fine_tuning(digits_model) -> None:
    base, data = digits_model
    model = build_model("resnet8", width=8)
    model.load_state_dict(base.state_dict())
    sparsify_(model, SparsityConfig(sparsity=0.6))
    before = masked_zeros(model)
    fit(model, data.train, config=TrainConfig(epochs=1, lr=0.05, max_steps_per_epoch=10,
                                              weight_decay=5e-4))
    after = masked_zeros(model)
    assert all(bool(after[n][before[n]].all()) for n in before)


def test_masks_stay_zero_through_qat_and_export(tmp_path: Path, digits_model) -> None:
    base, data = digits_model
    model = build_model("resnet8", width=8)
    model.load_state_dict(base.state_dict())
    sparsify_(model, SparsityConfig(pattern="n:m", n=2, m=4))
    before = masked_zeros(model)
    trained = qat(model, data.train, train_config=TrainConfig(epochs=1, lr=1e-3, max_steps_per_epoch=5))
    after = {n.removesuffix(".conv"): z for n, z in masked_zeros(trained).items()}
    for name, zero in before.items():
        assert bool(after[name][zero].all()), name
    path = export_qdq(trained, tmp_path / "sparse.onnx", input_shape=(1, 8, 8))
    weights = [numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer
               if i.data_type == onnx.TensorProto.INT8 and len(i.dims) in (2, 4)]
    assert weights and sum(int((w == 0).sum()) for w in weights) >= sum(int(z.sum()) for z in before.values())


def test_sparse_export_compresses(tmp_path: Path) -> None:
    dense = build_model("resnet8", width=16).eval()
    sparse = build_model("resnet8", width=16).eval()
    sparse.load_state_dict(dense.state_dict())
    sparsify_(sparse, SparsityConfig(sparsity=0.8))
    sizes = [len(zlib.compress(export_onnx(m, tmp_path / f"{i}.onnx", input_shape=(1, 28, 28)).read_bytes()))
             for i, m in enumerate((dense, sparse))]
    assert sizes[1] < 0.5 * sizes[0]


def test_gradual_sparsity_reaches_its_target_inside_fit(digits_model) -> None:
    base, data = digits_model
    model = build_model("resnet8", width=8)
    model.load_state_dict(base.state_dict())
    cb = GradualSparsity(SparsityConfig(sparsity=0.6), end=0.5, every=2)
    fit(model, data.train, config=TrainConfig(epochs=1, lr=0.02, max_steps_per_epoch=10),
        callbacks=[cb])
    levels = [s for _, s in cb.history]
    assert levels == sorted(levels) and levels[-1] == pytest.approx(0.6)
    values = list(layer_sparsity(model).values())
    total = sum(v * m.weight.numel() for v, (_, m) in zip(values, [(n, m) for n, m in model.named_modules()
                                                                  if record_of(m).masked]))
    assert total / sum(m.weight.numel() for m in model.modules() if record_of(m).masked) \
        == pytest.approx(0.6, abs=0.01)


def test_cubic_schedule_prunes_fast_then_slow() -> None:
    assert sparsity_at(0.0, final=0.8) == 0.0
    assert sparsity_at(1.0, final=0.8) == pytest.approx(0.8)
    assert sparsity_at(0.5, final=0.8) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert sparsity_at(0.5, final=0.8, schedule="linear") == pytest.approx(0.4)


@pytest.mark.parametrize("kwargs, message", [
    ({"sparsity": 1.0}, "sparsity"), ({"pattern": "blocks"}, "pattern"),
    ({"pattern": "n:m", "n": 4, "m": 4}, "0 < n < m"), ({"score": "hessian"}, "score"),
])
def test_bad_sparsity_config(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SparsityConfig(**kwargs)
