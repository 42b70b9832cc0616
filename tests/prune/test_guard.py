"""The pruning guard: a snapshot that undoes a Torch-Pruning rewrite exactly, a forward check
against the outputs the model had, and the bisection that finds the groups at fault."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchslim.prune.graph import CouplingGraph
from torchslim.prune.guard import ModelSnapshot, PlanTrial, breaking_groups, output_signature
from torchslim.zoo import build_model

X = torch.randn(2, 1, 28, 28)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_snapshot_undoes_a_torch_pruning_rewrite_exactly() -> None:
    model = build_model("resnet8", width=16).eval()
    state, out = _state(model), model(X)
    conv = model.layer1[0].conv1
    snapshot = ModelSnapshot(model)
    graph = CouplingGraph(model, X)
    graph.prune_({g.name: [0, 1, 2] for g in graph.groups})
    assert conv.out_channels == 13 and conv.weight.shape[0] == 13
    snapshot.restore()
    assert conv.out_channels == 16 and model.layer1[0].bn1.num_features == 16
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(model(X), out)
    snapshot.restore()  # a second restore (after another failed attempt) is as exact
    assert model.layer1[0].conv1 is conv and conv.weight.shape == (16, 16, 3, 3)


def test_output_signature_keeps_structure_and_shapes() -> None:
    out = {"logits": torch.zeros(1, 4), "hidden": (torch.zeros(1, 3, 8), None)}
    assert output_signature(out) == {"logits": (1, 4), "hidden": [(1, 3, 8), "NoneType"]}


class _StoredWidth(nn.Module):
    """conv -> reshape with the width it was built with (as torchvision's ViT does)."""

    def __init__(self) -> None:
        super().__init__()
        self.width = 8
        self.conv = nn.Conv2d(1, self.width, 4, stride=4)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).reshape(x.shape[0], self.width, -1).transpose(1, 2)  # (N, 49, 8)
        x = x + self.fc2(torch.relu(self.fc1(x)))
        return self.head(x.mean(dim=1))


def test_plan_trial_reports_the_stored_size_and_restores() -> None:
    model = _StoredWidth().eval()
    trial = PlanTrial(model, X)
    graph = CouplingGraph(model, X)
    width = next(g for g in graph.groups if "conv" in g.layers("out"))
    why = trial.apply(graph, {width.name: [0]})
    assert why is not None and "invalid for input of size" in why
    assert model.conv.out_channels == 8 and model.fc1.in_features == 8   # restored
    assert trial({"fc1": [0, 1]}) is None                                # the MLP is fine
    assert model.fc1.out_features == 16                                  # restored again


@pytest.mark.parametrize("culprits", [{"c"}, {"a", "h"}, {"b", "c", "d", "e", "f"}])
def test_bisection_finds_every_culprit_in_few_trials(culprits: set[str]) -> None:
    plan = {n: [0] for n in "abcdefgh"}
    calls: list[set[str]] = []

    def trial(part: dict[str, list[int]]) -> str | None:
        calls.append(set(part))
        bad = sorted(set(part) & culprits)
        return f"{bad[0]} breaks it" if bad else None

    found = breaking_groups(plan, trial, why="whole plan breaks it")
    assert set(found) == culprits
    assert all(found[c] == f"{c} breaks it" or found[c] == "whole plan breaks it"
               for c in culprits)
    assert len(calls) <= 2 * len(culprits) * 3   # ~2 trials per culprit per halving (8 -> 1)


def test_bisection_blames_the_later_of_two_that_break_only_together() -> None:
    plan = {n: [0] for n in "abcd"}

    def trial(part: dict[str, list[int]]) -> str | None:
        return "a and d together" if {"a", "d"} <= set(part) else None

    assert breaking_groups(plan, trial, why="a and d together") == {"d": "a and d together"}
