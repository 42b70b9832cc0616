"""`torchslim distill` through typer's runner: errors are one line + exit 2; a run writes
the student checkpoint and a teacher-vs-student report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from torchslim import record_of
from torchslim.cli import app
from torchslim.train import load_checkpoint, save_checkpoint
from torchslim.zoo import build_model

runner = CliRunner()


@pytest.fixture
def teacher_ckpt(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "ck" / "teacher.safetensors", build_model("resnet8", width=8),
                           dataset="digits")


@pytest.mark.parametrize("args, needles", [
    (["--feature", "layer3:layer33"], ("'layer33'", "close matches: layer3")),
    (["--feature", "layer9:layer3"], ("student", "'layer9'")),
    (["--feature", "layer3"], ("layer3:layer3",)),
    (["--alpha", "2"], ("alpha=2.0",)),
    (["--alpha-schedule", "cosine"], ("cosine", "warmup")),
    (["--student", "vgg11"], ("vgg11",)),
])
def test_bad_options_are_one_line(teacher_ckpt: Path, tmp_path: Path, args: list[str],
                                  needles: tuple[str, ...], one_line_error) -> None:
    result = runner.invoke(app, ["distill", "--teacher", str(teacher_ckpt), "--epochs", "1",
                                 "--out", str(tmp_path / "d"), *args])
    one_line_error(result, *needles)


def test_missing_teacher_checkpoint(tmp_path: Path, one_line_error) -> None:
    result = runner.invoke(app, ["distill", "--teacher", str(tmp_path / "none.safetensors")])
    one_line_error(result, "checkpoint not found")


@pytest.mark.slow
def test_distill_writes_the_student_and_a_report(teacher_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "d"
    result = runner.invoke(app, ["distill", "--teacher", str(teacher_ckpt), "--student", "resnet8",
                                 "--width", "4", "--temperature", "4", "--alpha", "0.7",
                                 "--feature", "layer3:layer3", "--epochs", "1", "--threads", "1",
                                 "--batch-sizes", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    student, meta = load_checkpoint(out / "resnet8-student.safetensors")
    assert meta["architecture"]["kwargs"]["width"] == 4
    assert meta["record"]["distillation"]["adapters"] == ["layer3->layer3"]
    assert meta["teacher"].endswith(".safetensors")
    assert record_of(student).distillation.adapters == ("layer3->layer3",)   # read back
    assert not any(k.startswith("adapters") for k in student.state_dict())
    report = json.loads((out / "report.json").read_text())
    names = [c["name"] for c in report["candidates"]]
    assert report["baseline"] == names[0] and names[0].startswith("teacher-")
    assert names[1].startswith("student-resnet8") and report["candidates"][1]["params"] < 6000
    assert {"train_kd", "train_ce", "train_hint"} <= set(report["distillation"]["history"][0])
    assert (out / "report.html").is_file()


@pytest.mark.slow
def test_scaled_teacher_student_with_cached_logits(teacher_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "d"
    result = runner.invoke(app, ["distill", "--teacher", str(teacher_ckpt), "--student", "teacher",
                                 "--width-mult", "0.5", "--cache-teacher", "--epochs", "1",
                                 "--threads", "1", "--batch-sizes", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    _, meta = load_checkpoint(out / "resnet8-student.safetensors")
    assert meta["architecture"]["kwargs"]["width"] == 4
