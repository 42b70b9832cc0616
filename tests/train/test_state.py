from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from torchslim.errors import CheckpointError
from torchslim.train import state as train_state
from torchslim.train.state import load_resume, load_state, save_state, saved_meta


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
    assert load_state(tmp_path) is None and load_resume(tmp_path) is None
    assert saved_meta(tmp_path / "missing") is None


def test_tensors_from_another_epoch_are_detected(tmp_path: Path) -> None:
    one = save_state(tmp_path / "a", {"epoch": 1, "a": torch.zeros(1)})
    other = save_state(tmp_path / "b", {"epoch": 1, "b": torch.zeros(1)})
    shutil.copy(other / train_state.TENSORS, one / train_state.TENSORS)
    with pytest.raises(CheckpointError, match="different"):
        load_state(tmp_path / "a")


def _model(value: float) -> nn.Module:
    net = nn.Linear(2, 2)
    nn.init.constant_(net.weight, value)
    return net


def test_weights_and_state_are_one_set_per_epoch(tmp_path: Path) -> None:
    save_state(tmp_path, {"epoch": 1, "step": 5}, model=_model(1.0),
               checkpoint_meta={"settings": {"lr": 0.1}})
    second = save_state(tmp_path, {"epoch": 2, "step": 10}, model=_model(2.0),
                        checkpoint_meta={"settings": {"lr": 0.1}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-000002"]   # the older went
    assert sorted(p.name for p in second.iterdir()) == [
        "last.json", "last.safetensors", "train_state.json", "train_state.safetensors"]
    resume = load_resume(tmp_path)
    assert resume.path == second and resume.state["step"] == 10
    assert torch.equal(resume.weights["weight"], torch.full((2, 2), 2.0))
    assert saved_meta(tmp_path)["settings"] == {"lr": 0.1}


def test_a_writer_killed_mid_set_leaves_the_previous_epoch(tmp_path: Path, monkeypatch) -> None:
    """SIGKILL after the weights were written but before the set was renamed into place
    (simulated by failing the rename): the previous epoch is what resumes, whole."""
    save_state(tmp_path, {"epoch": 1, "step": 5}, model=_model(1.0))

    def killed(src, dst):
        raise KeyboardInterrupt   # what is left after a kill: the temporary directory
    monkeypatch.setattr(os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        save_state(tmp_path, {"epoch": 2, "step": 10}, model=_model(2.0))
    monkeypatch.undo()
    resume = load_resume(tmp_path)
    assert resume.state["epoch"] == 1 and torch.equal(resume.weights["weight"],
                                                      torch.full((2, 2), 1.0))
    # and a set a killed writer really left behind (no cleanup ran) is ignored, then removed
    partial = tmp_path / ".epoch-000002.abc"
    partial.mkdir()
    (partial / train_state.SIDECAR).write_text("{")
    assert load_resume(tmp_path).state["epoch"] == 1
    save_state(tmp_path, {"epoch": 2}, model=_model(2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-000002"]


def test_sets_honour_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        where = save_state(tmp_path, {"epoch": 1}, model=_model(1.0))
    finally:
        os.umask(old)
    assert where.stat().st_mode & 0o777 == 0o750
    assert (where / train_state.WEIGHTS).stat().st_mode & 0o777 == 0o640


def test_the_layout_before_sets_still_resumes(tmp_path: Path) -> None:
    """Directories written by older versions hold the four files directly."""
    from torchslim.train import save_checkpoint

    where = save_state(tmp_path / "new", {"epoch": 3, "step": 7})
    for f in where.iterdir():
        shutil.copy(f, tmp_path / f.name)
    save_checkpoint(tmp_path / "last.safetensors", _model(3.0))
    resume = load_resume(tmp_path)
    assert resume.state["step"] == 7 and torch.equal(resume.weights["weight"],
                                                     torch.full((2, 2), 3.0))
    assert json.loads((tmp_path / "last.json").read_text())["architecture"]["class"] == "Linear"
