from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torchslim.errors import ArchitectureMismatchError, CheckpointError
from torchslim.train import load_checkpoint, load_weights_, read_checkpoint, save_checkpoint
from torchslim.zoo import build_model


def test_round_trip_rebuilds_the_architecture(tmp_path: Path) -> None:
    model = build_model("resnet8", width=8)
    path = save_checkpoint(tmp_path / "m.safetensors", model, dataset="digits",
                           metrics={"top1": 0.5})
    assert path.is_file() and path.with_suffix(".json").is_file()
    loaded, meta = load_checkpoint(path)
    assert meta["architecture"]["name"] == "resnet8" and meta["dataset"] == "digits"
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(model.eval()(x), loaded(x))


def test_metadata_inside_weights_survives_a_lost_sidecar(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", build_model("resnet8", width=8))
    path.with_suffix(".json").unlink()
    _, meta = read_checkpoint(path)
    assert meta["architecture"]["kwargs"]["width"] == 8


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", build_model("resnet8", width=8))
    with pytest.raises(ArchitectureMismatchError, match="shape differs|missing"):
        load_weights_(build_model("resnet14", width=8), path)


def test_sidecar_naming_the_wrong_architecture_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", build_model("resnet8", width=8))
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["architecture"]["kwargs"]["width"] = 16
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(ArchitectureMismatchError, match="resnet|ResNet"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all"])
def test_damaged_or_foreign_file_is_a_checkpoint_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        read_checkpoint(path)


def test_missing_checkpoint_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="torchslim train"):
        read_checkpoint(tmp_path / "absent.safetensors")


@pytest.mark.parametrize("sidecar, needles", [
    (b"\xb9\x00\xff binary", ("sidecar", "m.json", "not valid JSON", "delete it")),
    (b"[1, 2]", ("sidecar", "m.json", "holds a JSON list", "delete it")),
    (b'{"architecture": {"name": null, "kwargs": {}}}',
     ("sidecar", "m.json", "records architecture", "None", "--model")),
    (b'{"architecture": "resnet8"}', ("sidecar", "m.json", "records architecture 'resnet8'")),
    (b'{"architecture": {"name": "resnet8", "kwargs": {"width": "wide"}}}',
     ("sidecar", "m.json", "'resnet8'", "width='wide'", "fix its 'architecture' entry")),
    (b'{"architecture": {"name": "resnet8", "kwargs": {"colour": 3}}}',
     ("sidecar", "m.json", "no option 'colour'", "fix its 'architecture' entry")),
    (b'{"architecture": {"name": "resnet99", "kwargs": {}}}',
     ("sidecar", "m.json", "resnet99", "resnet8")),
])
def test_errors_from_the_sidecar_say_the_value_came_from_it(tmp_path: Path, sidecar: bytes,
                                                           needles: tuple[str, ...]) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", build_model("resnet8", width=8))
    path.with_suffix(".json").write_bytes(sidecar)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    for needle in needles:
        assert needle in str(err.value), str(err.value)
    path.with_suffix(".json").unlink()   # the fix the message offers: the copy inside
    assert load_checkpoint(path)[1]["architecture"]["name"] == "resnet8"
