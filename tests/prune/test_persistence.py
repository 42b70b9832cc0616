"""A pruned model saves, reloads (in a new process too) and quantizes with its shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import torchslim
from torchslim import record_of
from torchslim.exporters import export_onnx, export_qdq
from torchslim.prune import ChannelPruneConfig, prune_channels_
from torchslim.quant.api import qat, quantize
from torchslim.train import TrainConfig, load_checkpoint, read_checkpoint, save_checkpoint
from torchslim.zoo import build_model, model_spec

X = torch.zeros(2, 1, 28, 28)


def pruned_resnet() -> torch.nn.Module:
    model = build_model("resnet8", width=16).eval()
    prune_channels_(model, ChannelPruneConfig(target_macs=0.5), example_inputs=X)
    return model


def test_sidecar_records_channel_counts(tmp_path: Path) -> None:
    model = pruned_resnet()
    path = save_checkpoint(tmp_path / "p.safetensors", model, spec=model_spec(model))
    _, meta = read_checkpoint(path)
    record = meta["record"]
    assert record["reshaped"] and record["masked"] == [] and record["removed_blocks"] == []
    assert record["structure"]["layer1.0.conv1"]["out_channels"] == model.layer1[0].conv1.out_channels


def test_a_sidecar_from_before_the_record_still_loads(tmp_path: Path) -> None:
    """Older sidecars held the shapes at the top level (``structure``) and no record."""
    model = pruned_resnet()
    path = save_checkpoint(tmp_path / "p.safetensors", model, spec=model_spec(model))
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["structure"] = meta.pop("record")["structure"]
    sidecar.write_text(json.dumps(meta))
    again, _ = load_checkpoint(path)
    assert again.layer3[0].conv1.out_channels == model.layer3[0].conv1.out_channels
    assert record_of(again).reshaped


def test_reload_in_a_new_process_gives_identical_outputs(tmp_path: Path,
                                                        outputs_in_a_new_process) -> None:
    model = pruned_resnet()
    path = save_checkpoint(tmp_path / "p.safetensors", model, spec=model_spec(model))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.array_equal(outputs_in_a_new_process(path, x, tmp_path), expected)


def test_reload_in_process(tmp_path: Path) -> None:
    model = pruned_resnet()
    path = save_checkpoint(tmp_path / "p.safetensors", model, spec=model_spec(model))
    again, _ = load_checkpoint(path)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert torchslim.load(path).layer3[0].conv1.out_channels == model.layer3[0].conv1.out_channels


def _conv_channels(path: Path) -> list[tuple[int, ...]]:
    graph = onnx.load(str(path)).graph
    inits = {i.name: tuple(i.dims) for i in graph.initializer}
    shapes = []
    for node in graph.node:
        if node.op_type == "Conv":
            name = node.input[1]
            if name not in inits:  # QDQ: the weight comes through DequantizeLinear
                producer = next(n for n in graph.node if name in n.output)
                name = producer.input[0]
            shapes.append(inits[name][:2])
    return shapes


@pytest.mark.parametrize("blocks", [0, ("layer1.0",)], ids=["channels", "channels+block"])
def test_ptq_and_qat_keep_the_pruned_channels(tmp_path: Path, digits_model, blocks) -> None:
    _, data = digits_model
    model = build_model("resnet8", width=16).eval()
    x = torch.zeros(2, 1, 8, 8)
    prune_channels_(model, ChannelPruneConfig(target_macs=0.5, blocks=blocks), example_inputs=x)
    float_shapes = _conv_channels(export_onnx(model, tmp_path / "f.onnx", input_shape=(1, 8, 8)))
    ptq = quantize(model, calibration=data.val, num_batches=2)
    assert _conv_channels(export_qdq(ptq, tmp_path / "ptq.onnx", input_shape=(1, 8, 8))) == float_shapes
    trained = qat(model, data.train, train_config=TrainConfig(epochs=1, lr=1e-3, max_steps_per_epoch=3))
    assert _conv_channels(export_qdq(trained, tmp_path / "qat.onnx", input_shape=(1, 8, 8))) == float_shapes
