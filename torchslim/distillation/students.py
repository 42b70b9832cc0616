"""Student builders: a zoo model scaled in depth and width, or the teacher's own
architecture with every width scaled by ``w``.

Both return models built by ``build_model``, so a student checkpoint records how to
rebuild it. Each zoo family says how it scales through a small registered function.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from torchslim._record import record_of
from torchslim._registry import Registry
from torchslim.errors import ConfigError, UnknownNameError
from torchslim.zoo import build_model, list_models, model_spec

__all__ = ["StudentConfig", "build_student", "make_student", "scaled_like", "SCALERS"]

# family -> fn(name, kwargs, depth_mult, width_mult) -> (zoo name, kwargs)
Scaler = Callable[[str, dict[str, Any], float, float], tuple[str, dict[str, Any]]]
SCALERS: Registry[Scaler] = Registry("scalable model family")


@SCALERS.register("resnet")
def _scale_resnet(name: str, kwargs: dict[str, Any], depth_mult: float,
                  width_mult: float) -> tuple[str, dict[str, Any]]:
    """ResNet-(6n+2): n blocks per stage scale with depth, the base width with width."""
    depth = kwargs.get("depth") or int(name.removeprefix("resnet"))
    blocks = max(1, round((depth - 2) // 6 * depth_mult))
    width = max(1, round(kwargs.get("width", 16) * width_mult))
    rest = {k: v for k, v in kwargs.items() if k not in ("depth", "width")}
    new_depth = 6 * blocks + 2
    if name == "resnet":
        return "resnet", {**rest, "depth": new_depth, "width": width}
    return f"resnet{new_depth}", {**rest, "width": width}


@SCALERS.register("mobilenetv2")
def _scale_mobilenet(name: str, kwargs: dict[str, Any], depth_mult: float,
                     width_mult: float) -> tuple[str, dict[str, Any]]:
    if depth_mult != 1.0:
        raise ConfigError(f"mobilenetv2 has a fixed stage list; depth_mult={depth_mult} is not "
                          "supported (scale its width_mult instead)")
    return name, {**kwargs, "width_mult": kwargs.get("width_mult", 1.0) * width_mult}


def _family(name: str) -> str:
    family = name if name in SCALERS else re.sub(r"\d+$", "", name)  # resnet20 -> resnet
    if family not in SCALERS:
        scalable = [m for m in list_models() if m in SCALERS or re.sub(r"\d+$", "", m) in SCALERS]
        raise UnknownNameError(f"cannot build a student from {name!r}: no depth/width scaling "
                               f"for it; choose one of {', '.join(scalable)}")
    return family


def build_student(name: str, *, depth_mult: float = 1.0, width_mult: float = 1.0,
                  num_classes: int = 10, in_channels: int = 1, **kwargs: Any) -> nn.Module:
    """A zoo model with its depth and width multiplied, e.g.
    ``build_student("resnet20", depth_mult=0.5, width_mult=0.5)`` -> ResNet-8, width 8."""
    for key, value in (("depth_mult", depth_mult), ("width_mult", width_mult)):
        if not value > 0:
            raise ConfigError(f"{key}={value} must be > 0 (0.5 halves, 1.0 keeps)")
    scaled_name, scaled = SCALERS.get(_family(name))(name, dict(kwargs), depth_mult, width_mult)
    return build_model(scaled_name, num_classes=num_classes, in_channels=in_channels, **scaled)


def scaled_like(teacher: nn.Module, width_mult: float, *, depth_mult: float = 1.0) -> nn.Module:
    """The teacher's architecture (from its zoo spec) with every width scaled by
    ``width_mult``, freshly initialised."""
    spec = model_spec(teacher)
    kwargs = dict(spec["kwargs"])
    num_classes, in_channels = kwargs.pop("num_classes", 10), kwargs.pop("in_channels", 1)
    return build_student(spec["name"], depth_mult=depth_mult, width_mult=width_mult,
                         num_classes=num_classes, in_channels=in_channels, **kwargs)


@dataclass(frozen=True, kw_only=True)
class StudentConfig:
    """Which student to distil into: a zoo model scaled in depth and width, or
    (``model=None``) the teacher's own architecture with every width scaled."""

    model: str | None = None          # a zoo name; None: the teacher's architecture
    width_mult: float | None = None   # None: 0.5 of the teacher's widths, 1.0 of a zoo model's
    depth_mult: float = 1.0
    width: int | None = None          # a zoo student's base width (ResNets), before width_mult

    def __post_init__(self) -> None:
        for key, value in (("width_mult", self.width_mult), ("depth_mult", self.depth_mult)):
            if value is not None and not value > 0:
                raise ConfigError(f"{key}={value} must be > 0 (0.5 halves, 1.0 keeps)")
        if self.model is not None:
            _family(self.model)  # UnknownNameError naming the scalable zoo models
        if self.width is not None and (not isinstance(self.width, int) or self.width < 1):
            raise ConfigError(f"width={self.width!r} must be a positive integer")


def make_student(spec: StudentConfig, teacher: nn.Module, *, num_classes: int = 10,
                 in_channels: int = 1) -> nn.Module:
    """A freshly initialised student as ``spec`` says, for ``teacher``."""
    if spec.model is None:
        if record_of(teacher).architecture is None:
            raise ConfigError("the teacher is not a zoo model, so its architecture cannot be "
                              "scaled; name a zoo student (student: resnet8)")
        width_mult = 0.5 if spec.width_mult is None else spec.width_mult
        return scaled_like(teacher, width_mult, depth_mult=spec.depth_mult)
    kwargs: dict[str, Any] = {"width": spec.width} if spec.width is not None else {}
    return build_student(spec.model, depth_mult=spec.depth_mult,
                         width_mult=1.0 if spec.width_mult is None else spec.width_mult,
                         num_classes=num_classes, in_channels=in_channels, **kwargs)
