"""Student builders: depth/width multipliers and the scaled teacher."""

from __future__ import annotations

import pytest

from torchslim.distillation import build_student, scaled_like
from torchslim.errors import ConfigError, UnknownNameError
from torchslim.train import load_checkpoint, save_checkpoint
from torchslim.zoo import build_model, model_spec


def _params(m) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name, depth_mult, width_mult, spec", [
    ("resnet20", 0.5, 0.5, ("resnet14", 8)),
    ("resnet20", 1 / 3, 1.0, ("resnet8", 16)),
    ("resnet56", 1.0, 0.25, ("resnet56", 4)),
])
def test_zoo_students_scale_depth_and_width(name, depth_mult, width_mult, spec) -> None:
    m = build_student(name, depth_mult=depth_mult, width_mult=width_mult)
    got = model_spec(m)
    assert (got["name"], got["kwargs"]["width"]) == spec


def test_scaled_teacher_has_a_quarter_of_the_conv_weights(tmp_path) -> None:
    teacher = build_model("resnet14", width=16)
    student = scaled_like(teacher, 0.5)
    assert model_spec(student)["kwargs"]["width"] == 8
    assert [n for n, _ in student.named_modules()] == [n for n, _ in teacher.named_modules()]
    assert 0.24 < _params(student) / _params(teacher) < 0.27
    # it rebuilds from its checkpoint like any zoo model
    path = save_checkpoint(tmp_path / "s.safetensors", student)
    assert _params(load_checkpoint(path)[0]) == _params(student)


def test_mobilenet_scales_width_only() -> None:
    m = build_student("mobilenetv2", width_mult=0.5)
    assert model_spec(m)["kwargs"]["width_mult"] == 0.5
    with pytest.raises(ConfigError, match="depth_mult"):
        build_student("mobilenetv2", depth_mult=0.5)


def test_bad_students() -> None:
    with pytest.raises(ConfigError, match="width_mult=0"):
        build_student("resnet8", width_mult=0)
    with pytest.raises(UnknownNameError, match="'vgg11'.*mobilenetv2, resnet"):
        build_student("vgg11")
