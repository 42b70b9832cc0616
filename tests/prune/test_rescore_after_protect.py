"""Protecting a group that breaks the model can split or merge the groups around it; the
new groups must be scored, not looked up among the old ones (the zoo sweep's SqueezeNet 1.0
and BERT failed with a raw ``KeyError: 'features.10.squeeze'`` / ``'...output.dense'``)."""

from __future__ import annotations

import torch

from torchslim.prune.graph import ChannelGroup
from torchslim.prune.structured import _scored


class _Graph:
    def __init__(self, *groups: ChannelGroup) -> None:
        self.groups = list(groups)


def test_a_group_that_was_not_scored_or_changed_size_is_scored_again() -> None:
    a, b = ChannelGroup("a", 4), ChannelGroup("b", 8)
    scores = {"a": torch.rand(4), "b": torch.rand(8)}
    assert not _scored(_Graph(a, b), None)
    assert _scored(_Graph(a, b), scores)
    assert _scored(_Graph(b), scores)                                # one protected: kept
    assert not _scored(_Graph(a, ChannelGroup("c", 8)), scores)      # a new group
    assert not _scored(_Graph(a, ChannelGroup("b", 16)), scores)     # b merged with another
