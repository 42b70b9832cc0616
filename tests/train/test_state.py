from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchslim.errors import CheckpointError
from torchslim.train.state import load_state, save_state


def test_nested_state_with_tensors_and_int_keys_round_trips(tmp_path: Path) -> None:
    state = {"epoch": 2, "optimizer": {"state": {0: {"momentum_buffer": torch.ones(3)}},
                                       "param_groups": [{"lr": 0.1, "params": [0]}]},
             "history": [{"loss": 1.5}], "none": None}
    save_state(tmp_path, state)
    back = load_state(tmp_path)
    assert back["optimizer"]["state"][0]["momentum_buffer"].tolist() == [1.0, 1.0, 1.0]
    assert back["optimizer"]["param_groups"] == [{"lr": 0.1, "params": [0]}]
    assert back["epoch"] == 2 and back["history"] == [{"loss": 1.5}] and back["none"] is None


def test_no_state_means_fresh_start(tmp_path: Path) -> None:
    assert load_state(tmp_path) is None


def test_tensors_from_another_epoch_are_detected(tmp_path: Path) -> None:
    save_state(tmp_path, {"a": torch.zeros(1)})
    other = tmp_path / "other"
    save_state(other, {"b": torch.zeros(1)})
    (tmp_path / "train_state.safetensors").write_bytes((other / "train_state.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="different"):
        load_state(tmp_path)
