"""Depth pruning: whole residual blocks removed, alone or before channel pruning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn

from torchslim.errors import ConfigError, UnknownNameError
from torchslim.evaluation.model_stats import count_macs
from torchslim.exporters import export_onnx
from torchslim.prune import (ChannelPruneConfig, RemovedBlock, block_importance,
                             prune_channels_, remove_blocks_, residual_blocks)
from torchslim.train import load_checkpoint, save_checkpoint
from torchslim.zoo import build_model, model_spec

X = torch.zeros(2, 1, 28, 28)
SHAPE = (1, 28, 28)


def resnet14() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet14", width=16).eval()


def batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g))
            for _ in range(n)]


def test_finds_the_blocks_with_an_identity_shortcut() -> None:
    # layer2.0 and layer3.0 change width and stride (their shortcut is a conv): not removable
    assert residual_blocks(resnet14(), X) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1"]


@pytest.mark.parametrize("name, expected", [
    ("resnet18", ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]),
    ("mobilenet_v2", ["features.3", "features.5", "features.6", "features.8", "features.9",
                      "features.10", "features.12", "features.13", "features.15", "features.16"]),
])
def test_finds_torchvision_blocks(name: str, expected: list[str]) -> None:
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    assert residual_blocks(model, torch.zeros(1, 3, 64, 64)) == expected


def test_a_removed_block_passes_its_input_through() -> None:
    model = resnet14()
    removed = remove_blocks_(model, ("layer1.1",), example_inputs=X)
    assert removed == ["layer1.1"] and isinstance(model.layer1[1], RemovedBlock)
    x = torch.rand(3, 16, 28, 28)
    assert torch.equal(model.layer1[1](x), x)
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_count_removes_the_blocks_whose_bypass_costs_least_loss() -> None:
    model, data = resnet14(), batches()
    scores = block_importance(model, residual_blocks(model, X), data)
    with torch.no_grad():  # make layer2.1's branch contribute nothing: bypassing it is free
        model.layer2[1].bn2.weight.zero_()
        model.layer2[1].bn2.bias.zero_()
    scores = block_importance(model, list(scores), data)
    assert abs(scores["layer2.1"]) < 1e-6          # a branch of zeros: bypassing it is exact
    assert remove_blocks_(model, 1, example_inputs=X, data=data) == [min(scores, key=scores.get)]


def test_residual_criterion_needs_no_labels() -> None:
    model = resnet14()
    scores = block_importance(model, ["layer1.0", "layer3.1"], [(torch.rand(4, 1, 28, 28), None)],
                              criterion="residual")
    assert all(s > 0 for s in scores.values())


def test_blocks_then_channels_land_on_the_original_target() -> None:
    model = resnet14()
    macs0 = count_macs(model, SHAPE)
    result = prune_channels_(model, ChannelPruneConfig(target_macs=0.5, round_to=8,
                                                       blocks=("layer1.1",)), example_inputs=X)
    assert result.removed_blocks == ["layer1.1"]
    assert result.macs_before == macs0
    assert abs(result.mac_ratio - 0.5) <= 0.03 * 0.5
    assert count_macs(model, SHAPE) == result.macs_after


def test_blocks_alone_can_meet_the_target() -> None:
    model = resnet14()
    result = prune_channels_(model, ChannelPruneConfig(target_macs=0.95, blocks=("layer3.1",)),
                             example_inputs=X)
    assert result.removed_blocks == ["layer3.1"]
    assert all(g["before"] == g["after"] for g in result.groups.values())  # no channel removed


def test_pruned_model_exports_and_onnx_runtime_agrees(tmp_path: Path) -> None:
    model = resnet14()
    prune_channels_(model, ChannelPruneConfig(target_macs=0.5, round_to=8, blocks=1),
                    example_inputs=X, data=batches())
    path = export_onnx(model, tmp_path / "m.onnx", input_shape=SHAPE)
    x = torch.rand(4, 1, 28, 28)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-3, atol=1e-4)


def test_reload_in_a_new_process_is_as_shallow(tmp_path: Path, outputs_in_a_new_process) -> None:
    model = resnet14()
    prune_channels_(model, ChannelPruneConfig(target_macs=0.5, round_to=8,
                                              blocks=("layer1.0", "layer2.1")), example_inputs=X)
    path = save_checkpoint(tmp_path / "p.safetensors", model, spec=model_spec(model))
    again, meta = load_checkpoint(path)
    assert meta["record"]["structure"]["layer2.1"] == {"removed": True}
    assert meta["record"]["removed_blocks"] == ["layer1.0", "layer2.1"]
    assert isinstance(again.layer1[0], RemovedBlock) and isinstance(again.layer2[1], RemovedBlock)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.array_equal(outputs_in_a_new_process(path, x, tmp_path), expected)


def test_unknown_block_name_lists_close_matches() -> None:
    with pytest.raises(UnknownNameError, match=r"did you mean layer1\.1.*removable: layer1\.0"):
        remove_blocks_(resnet14(), ("layer1.2",), example_inputs=X)


def test_a_block_that_changes_shape_is_not_removable() -> None:
    with pytest.raises(UnknownNameError, match="not a removable residual block"):
        remove_blocks_(resnet14(), ("layer2.0",), example_inputs=X)


def test_more_blocks_than_the_model_has_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="only 4 removable residual blocks"):
        remove_blocks_(resnet14(), 5, example_inputs=X)
    with pytest.raises(ConfigError, match="blocks=-1"):
        ChannelPruneConfig(target_macs=0.5, blocks=-1)
