import pytest
import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.evaluation.model_stats import (count_macs, count_nonzero, count_params,
                                            state_dict_bytes)


def test_conv_macs_match_hand_count():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, (3, 10, 10)) == 9 * 3 * 8 * 100


def test_strided_conv_uses_real_output_shape():
    conv = nn.Conv2d(3, 8, 3, stride=2)  # 10x10 -> 4x4
    assert count_macs(conv, (3, 10, 10)) == 9 * 3 * 8 * 16


def test_depthwise_conv_divides_by_groups():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert count_macs(conv, (8, 10, 10)) == 9 * 1 * 8 * 100


def test_linear_macs_per_token():
    assert count_macs(nn.Linear(20, 5), (20,)) == 100
    assert count_macs(nn.Linear(20, 5), (7, 20)) == 7 * 100  # 7 tokens


def test_conv1d_and_sequential_sum():
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 8, 3))
    assert count_macs(model, (2, 10)) == 3 * 2 * 4 * 8 + 32 * 3


def test_count_macs_restores_train_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout()).train()
    count_macs(model, (4,))
    assert model.training


def test_params_and_nonzero():
    model = nn.Linear(10, 3)
    assert count_params(model) == 33
    with torch.no_grad():
        model.weight[0].zero_()
        model.bias.zero_()
    assert count_nonzero(model) == 33 - 10 - 3


def test_tied_weights_counted_and_stored_once():
    a, b = nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False)
    b.weight = a.weight
    model = nn.Sequential(a, b)
    assert count_params(model) == 64
    single = state_dict_bytes(nn.Sequential(nn.Linear(8, 8, bias=False)))
    assert state_dict_bytes(model) == pytest.approx(single, abs=100)


def test_state_dict_bytes_handles_channels_last():
    conv = nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    assert state_dict_bytes(conv) >= (8 * 3 * 9 + 8) * 4


class _TwoInputs(nn.Module):
    """Token ids (int64) and a float mask: no float zeros of one shape can run it."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.proj = nn.Linear(8, 4)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(ids) * mask[..., None])


def test_count_macs_on_example_inputs_of_any_structure():
    model = _TwoInputs()
    ids, mask = torch.randint(0, 50, (3, 7)), torch.ones(3, 7)
    expected = 7 * 8 * 4  # 7 tokens of one sample through Linear(8, 4)
    assert count_macs(model, example_inputs=(ids, mask)) == expected
    assert count_macs(model, example_inputs={"ids": ids, "mask": mask}) == expected


def test_count_macs_needs_one_of_shape_or_inputs():
    with pytest.raises(ConfigError, match="exactly one"):
        count_macs(nn.Linear(2, 2))
