"""Structured pruning: coupled groups, MAC targets met, shapes rewritten, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torchslim.errors import ConfigError, UnknownNameError, UnsupportedModelError
from torchslim.evaluation.model_stats import count_macs
from torchslim.prune import ChannelPruneConfig, CouplingGraph, prune_, prune_channels_
from torchslim.prune.importance import IMPORTANCE
from torchslim.zoo import build_model

X = torch.zeros(2, 1, 28, 28)


def resnet() -> nn.Module:
    return build_model("resnet8", width=16).eval()


def test_residual_add_couples_the_stem_with_every_block_output() -> None:
    graph = CouplingGraph(resnet(), X)
    stem = next(g for g in graph.groups if "conv1" in g.layers("out"))
    assert {"conv1", "layer1.0.conv2"} <= set(stem.layers("out"))
    assert "fc" in graph.protected                       # the output layer is never pruned
    assert all("fc" not in g.layers("out") for g in graph.groups)


def test_protected_layer_keeps_its_group() -> None:
    graph = CouplingGraph(resnet(), X, protected=("conv1",))
    assert all("conv1" not in g.layers("out") for g in graph.groups)


def test_unknown_protected_layer_is_named() -> None:
    with pytest.raises(UnsupportedModelError, match="'stem'"):
        CouplingGraph(resnet(), X, protected=("stem",))


@pytest.mark.parametrize("model_name", ["resnet8", "mobilenetv2"])
@pytest.mark.parametrize("scope", ["global", "uniform"])
@pytest.mark.parametrize("target", [0.5, 1 / 3])
def test_mac_target_is_met_within_3_percent(model_name: str, scope: str, target: float) -> None:
    model = build_model(model_name).eval()
    before = count_macs(model, (1, 28, 28))
    result = prune_channels_(model, ChannelPruneConfig(target_macs=target, scope=scope),
                             example_inputs=X)
    measured = count_macs(model, (1, 28, 28)) / before   # counted after the rewrite
    assert measured == pytest.approx(result.mac_ratio)
    assert abs(measured - target) <= 0.03 * target
    assert model(X).shape == (2, 10)


def test_parameter_target() -> None:
    model = resnet()
    result = prune_channels_(model, ChannelPruneConfig(target_params=0.5), example_inputs=X)
    assert abs(result.param_ratio - 0.5) <= 0.015


def test_round_to_gives_multiples() -> None:
    model = build_model("resnet8", width=32).eval()
    prune_channels_(model, ChannelPruneConfig(target_macs=0.5, round_to=8), example_inputs=X)
    convs = [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n != "conv1.0"]
    assert all(m.out_channels % 8 == 0 for m in convs)


def test_ratio_removes_that_share_of_each_group() -> None:
    model = resnet()
    result = prune_channels_(model, ChannelPruneConfig(ratio=0.25, scope="uniform"),
                             example_inputs=X)
    assert all(g["after"] == g["before"] - g["before"] // 4 for g in result.groups.values())
    assert result.layers["layer1.0.conv1"]["out"] == [16, 12]


def test_weakest_channels_go_first() -> None:
    model = resnet()
    conv = model.layer1[0].conv1
    with torch.no_grad():
        conv.weight[3].zero_()                       # channel 3 of an inner group is dead
        model.layer1[0].bn1.weight[3] = 0.0
    keep = conv.weight[[i for i in range(16) if i != 3]].clone()
    prune_channels_(model, ChannelPruneConfig(ratios={"layer1.0.conv1": 1 / 16}), example_inputs=X)
    assert torch.equal(model.layer1[0].conv1.weight, keep)


@pytest.mark.parametrize("importance", ["l1", "l2", "bn", "taylor"])
def test_every_importance_prunes_and_runs(importance: str) -> None:
    model = resnet()
    batches = [(torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,)))]
    result = prune_(model, ChannelPruneConfig(target_macs=0.6, importance=importance),
                    example_inputs=X, data=batches)
    assert abs(result.mac_ratio - 0.6) <= 0.03 * 0.6
    assert all(p.grad is None for p in model.parameters())   # Taylor's gradients are cleared


def test_group_scores_add_up_members() -> None:
    graph = CouplingGraph(resnet(), X)
    group = next(g for g in graph.groups if g.name == "layer1.0.conv1")
    assert {m.dim for m in group.members} == {"out", "norm", "in"}   # conv1, bn1, conv2

    def per_channel(m) -> torch.Tensor:
        w = m.module.weight.detach().abs()
        if m.dim == "in":
            w = w.transpose(0, 1)
        return w.reshape(16, -1).sum(1)

    expected = sum(per_channel(m) for m in group.members)
    assert torch.allclose(IMPORTANCE.get("l1")(group).float(), expected, rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one"),
    ({"ratio": 0.5, "target_macs": 0.5}, "exactly one"),
    ({"target_macs": 1.5}, "fraction to keep"),
    ({"ratio": 1.0}, "share of channels"),
    ({"target_macs": 0.5, "scope": "layer"}, "scope"),
])
def test_bad_config_is_explained(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ChannelPruneConfig(**kwargs)


def test_unknown_importance_lists_the_known() -> None:
    with pytest.raises(UnknownNameError, match="l1, l2"):
        ChannelPruneConfig(target_macs=0.5, importance="hessian")


def test_taylor_without_data_is_an_error() -> None:
    with pytest.raises(ConfigError, match="needs data"):
        prune_channels_(resnet(), ChannelPruneConfig(target_macs=0.5, importance="taylor"),
                        example_inputs=X)


def test_prune_needs_example_inputs() -> None:
    with pytest.raises(ConfigError, match="example_inputs"):
        prune_(resnet(), ChannelPruneConfig(target_macs=0.5))


def test_input_model_is_changed_in_place_only() -> None:
    model = resnet()
    copy_ = copy.deepcopy(model)
    prune_channels_(copy_, ChannelPruneConfig(target_macs=0.5), example_inputs=X)
    assert model.layer1[0].conv1.out_channels == 16
    assert copy_.layer3[0].conv1.out_channels < 64
