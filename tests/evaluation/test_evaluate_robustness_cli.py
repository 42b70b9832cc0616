"""`torchslim evaluate PATH --robustness [--robustness-n N]`: the robustness block in
report.json, the candidate's against the reference's, attacks made on a torch model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from torchslim.cli import app
from torchslim.exporters import export_onnx
from torchslim.train import save_checkpoint

runner = CliRunner()


@pytest.fixture
def digits_files(digits_model, tmp_path: Path) -> tuple[Path, Path]:
    """(checkpoint, its FP32 ONNX export) of the trained digits ResNet-8."""
    model, _ = digits_model
    ckpt = save_checkpoint(tmp_path / "ck" / "resnet8.safetensors", model, dataset="digits")
    onnx = export_onnx(model, tmp_path / "ck" / "resnet8.onnx", input_shape=(1, 8, 8))
    return ckpt, Path(onnx)


def _evaluate(*args: str, out: Path) -> list[dict]:
    result = runner.invoke(app, ["evaluate", *args, "--dataset", "digits", "--threads", "1",
                                 "--batch-sizes", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())["candidates"]


def test_an_artifact_against_its_reference_checkpoint(digits_files, tmp_path: Path,
                                                      one_thread) -> None:
    ckpt, onnx = digits_files
    reference, candidate = _evaluate(str(onnx), "--reference", str(ckpt), "--robustness",
                                     "--robustness-n", "60", out=tmp_path / "ev")
    base, block = reference["extra"]["robustness"], candidate["extra"]["robustness"]
    assert base["sample"] == {**base["sample"], "n": 60, "of": 360}
    assert block["sample"] == base["sample"]
    assert base["flips"] is None and base["adversarial"]["is_source"] is True
    # attacks made white-box on the reference's torch model, transferred to the ONNX file
    adv = block["adversarial"]
    assert adv["source"] == reference["name"] and adv["is_source"] is False
    assert {a["white_box_top1"] for a in adv["attacks"].values()} == {None}
    # the same network on another runtime: paired against the reference on all 360 images
    flips = block["flips"]
    assert flips["n"] == 360 and flips["right_to_wrong"] + flips["wrong_to_right"] <= 2
    assert abs(block["delta_clean_top1"]) <= 1 / 60 + 1e-9
    assert all(abs(a["delta_worst"]) <= 2 / 60 + 1e-9 for a in adv["attacks"].values())
    assert block["corruptions"]["by_corruption"].keys() == base["corruptions"][
        "by_corruption"].keys()


def test_a_checkpoint_alone_is_its_own_attack_source_and_no_flag_adds_nothing(
        digits_files, tmp_path: Path, one_thread) -> None:
    ckpt, _ = digits_files
    [alone] = _evaluate(str(ckpt), "--robustness", "--robustness-n", "40", out=tmp_path / "a")
    block = alone["extra"]["robustness"]
    assert block["sample"]["n"] == 40 and block["flips"] is None
    assert block["adversarial"]["is_source"] is True and block["adversarial"]["attacks"]
    [plain] = _evaluate(str(ckpt), out=tmp_path / "b")
    assert "robustness" not in plain["extra"]


def test_robustness_n_without_robustness_is_refused(digits_files, tmp_path: Path,
                                                    one_line_error) -> None:
    ckpt, _ = digits_files
    result = runner.invoke(app, ["evaluate", str(ckpt), "--dataset", "digits",
                                 "--robustness-n", "50", "--out", str(tmp_path / "x")])
    one_line_error(result, "--robustness-n 50", "--robustness")
