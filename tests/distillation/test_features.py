"""Named layers, hooks and automatic adapters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchslim.distillation import FeatureTaps, find_module, make_adapter
from torchslim.errors import ConfigError, UnknownNameError


def test_unknown_layer_lists_close_matches_on_one_line(teacher: nn.Module) -> None:
    with pytest.raises(UnknownNameError) as e:
        find_module(teacher, "layer33", role="teacher")
    message = str(e.value)
    assert "'layer33'" in message and "close matches: layer3" in message and "\n" not in message


def test_a_name_with_no_close_match_lists_some_layers(teacher: nn.Module) -> None:
    with pytest.raises(UnknownNameError, match="its layers include: conv1"):
        find_module(teacher, "zzzz")


def test_taps_keep_the_latest_output(teacher: nn.Module) -> None:
    taps = FeatureTaps(teacher, ["layer3", "layer1", "layer3"])
    teacher.eval()
    teacher(torch.randn(2, 1, 8, 8))
    assert taps["layer1"].shape == (2, 8, 8, 8) and taps["layer3"].shape == (2, 32, 2, 2)
    taps.remove()
    taps.outputs.clear()
    teacher(torch.randn(2, 1, 8, 8))
    assert taps.outputs == {}


@pytest.mark.parametrize("s_shape, t_shape, kind, out_shape", [
    ((2, 16, 7, 7), (2, 64, 7, 7), nn.Conv2d, (2, 64, 7, 7)),
    ((2, 16, 14, 14), (2, 64, 7, 7), nn.Conv2d, (2, 64, 14, 14)),   # pooled in the loss
    ((2, 64, 7, 7), (2, 64, 7, 7), nn.Identity, (2, 64, 7, 7)),
    ((2, 16), (2, 32), nn.Sequential, (2, 32)),
    ((2, 16, 7, 7), (2, 32), nn.Sequential, (2, 32)),
])
def test_adapters_bridge_mismatched_shapes(s_shape: tuple, t_shape: tuple, kind: type,
                                           out_shape: tuple) -> None:
    adapter = make_adapter(s_shape, t_shape)
    assert isinstance(adapter, kind)
    assert adapter(torch.randn(s_shape)).shape == out_shape


def test_a_vector_cannot_hint_a_map() -> None:
    with pytest.raises(ConfigError, match="cannot hint"):
        make_adapter((2, 16), (2, 32, 7, 7))
