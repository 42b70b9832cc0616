"""Structured pruning: coupled groups, MAC targets met, shapes rewritten, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.regnet import BlockParams, RegNet

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


def tiny_vit() -> nn.Module:
    """torchvision's VisionTransformer at toy width: its forward reshapes the patch
    embedding with the stored ``hidden_dim`` (the ViT-B/16 768 -> 692 failure)."""
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=10).eval()


def tiny_regnet() -> nn.Module:
    """torchvision's RegNet with grouped 3x3 convs (groups 4 and 8) and SE blocks."""
    params = BlockParams.from_init_params(depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=4,
                                          se_ratio=0.25)
    return RegNet(params, num_classes=10, stem_width=8).eval()


X32 = torch.randn(2, 3, 32, 32)


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[tuple[int, ...]]]:
    convs = [(m.in_channels, m.out_channels, m.groups) for m in model.modules()
             if isinstance(m, nn.Conv2d)]
    return {k: v.clone() for k, v in model.state_dict().items()}, convs


def _assert_untouched(model: nn.Module, before: tuple, out: torch.Tensor) -> None:
    state, convs = before
    assert [(m.in_channels, m.out_channels, m.groups) for m in model.modules()
            if isinstance(m, nn.Conv2d)] == convs
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(model(X32), out)


def test_stored_hidden_width_is_protected_and_the_rest_pruned() -> None:
    model = tiny_vit()
    result = prune_channels_(model, ChannelPruneConfig(target_macs=0.8), example_inputs=X32)
    assert model.hidden_dim == 16 and model.conv_proj.out_channels == 16   # width kept
    assert model.encoder.layers[0].mlp[0].out_features < 32                 # MLPs pruned
    assert abs(result.mac_ratio - 0.8) <= 0.03 * 0.8
    assert model(X32).shape == (2, 10)
    hidden = [name for name, why in result.protected.items() if "breaks the model" in why]
    assert len(hidden) == 1
    why = result.protected[hidden[0]]
    assert "conv_proj" in why and "16 channels" in why and "invalid for input" in why
    assert "output layer" in result.protected["heads.head"]
    assert result.to_dict()["protected"] == result.protected


def test_without_auto_protect_the_error_names_the_group_and_the_model_is_untouched() -> None:
    model = tiny_vit()
    before, out = _snapshot(model), model(X32)
    with pytest.raises(UnsupportedModelError, match=r"conv_proj.*protected=\('encoder"):
        prune_channels_(model, ChannelPruneConfig(target_macs=0.8, auto_protect=False),
                        example_inputs=X32)
    _assert_untouched(model, before, out)
    assert model.hidden_dim == 16 and model.encoder.layers[0].mlp[0].out_features == 32


def test_grouped_convs_keep_equal_groups() -> None:
    model = tiny_regnet()
    grouped = {n: m.groups for n, m in model.named_modules()
               if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels}
    result = prune_channels_(model, ChannelPruneConfig(target_macs=0.5), example_inputs=X32)
    assert abs(result.mac_ratio - 0.5) <= 0.03 * 0.5
    assert list(result.protected) == ["fc"]                      # nothing had to be kept
    for name, groups in grouped.items():
        conv = model.get_submodule(name)
        assert conv.groups == groups and conv.in_channels % groups == 0
        assert conv.out_channels % groups == 0
    assert any(model.get_submodule(n).in_channels < result.layers[n]["in"][0] for n in grouped)
    assert model(X32).shape == (2, 10)


def test_torch_pruning_failure_is_protected_or_one_clear_error(monkeypatch) -> None:
    """Without the block coupling, Torch-Pruning breaks RegNet's grouped convs: the groups
    are found and protected, or (auto_protect=False) named in one error, model untouched."""
    monkeypatch.setattr(CouplingGraph, "_blocks", lambda self, group, size: 1)
    model = tiny_regnet()
    before, out = _snapshot(model), model(X32)
    with pytest.raises(UnsupportedModelError, match=r"groups=\d.*protected=\('trunk_output"):
        prune_channels_(model, ChannelPruneConfig(target_macs=0.5, auto_protect=False),
                        example_inputs=X32)
    _assert_untouched(model, before, out)
    result = prune_channels_(model, ChannelPruneConfig(target_macs=0.5), example_inputs=X32)
    kept = [n for n, why in result.protected.items() if "breaks the model" in why]
    assert kept and all(".f.a.0" in n or ".f.b.0" in n for n in kept)
    assert model(X32).shape == (2, 10)


def test_an_interrupt_mid_rewrite_leaves_the_model_untouched(monkeypatch) -> None:
    model = resnet()
    state, out = {k: v.clone() for k, v in model.state_dict().items()}, model(X)
    original = CouplingGraph.prune_

    def two_groups_then_interrupt(self, plan):
        original(self, dict(list(plan.items())[:2]))   # two groups rewritten ...
        raise KeyboardInterrupt                           # ... then Ctrl-C

    monkeypatch.setattr(CouplingGraph, "prune_", two_groups_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prune_channels_(model, ChannelPruneConfig(ratio=0.25), example_inputs=X)
    assert all(m.out_channels == m.weight.shape[0] for m in model.modules()
               if isinstance(m, nn.Conv2d))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(model(X), out)


class _TokenMLP(nn.Module):
    """Token ids (int64) and a float mask, as a transformers encoder takes them."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 8)
        self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids) * attention_mask[..., None]
        h = h + self.fc2(torch.relu(self.fc1(h)))
        return self.head(h.mean(dim=1))


def test_dict_inputs_with_integer_ids_prune() -> None:
    model = _TokenMLP().eval()
    inputs = {"input_ids": torch.randint(0, 30, (2, 5)), "attention_mask": torch.ones(2, 5)}
    result = prune_channels_(model, ChannelPruneConfig(ratio=0.5, protected=("fc2",)),
                             example_inputs=inputs)
    assert model.fc1.out_features == 16 and model.fc2.in_features == 16
    # one sample of 5 tokens: fc1 and fc2 per token, the head once (after the mean)
    assert (result.macs_before, result.macs_after) == (5 * 8 * 32 * 2 + 16, 5 * 8 * 16 * 2 + 16)
    assert result.protected["fc2"] == "protected= in the config"
    assert model(**inputs).shape == (2, 2)
