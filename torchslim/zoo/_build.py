"""The model registry and the one entry point that builds from it.

Every model is built by name with keyword arguments, and the model's record remembers both
(``record_of(model).architecture``), so a checkpoint can record how to rebuild its
architecture without pickling code.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from torchslim._record import record_of, update_
from torchslim._registry import Registry
from torchslim.errors import ConfigError, UnsupportedModelError

__all__ = ["MODELS", "build_model", "list_models", "model_spec"]

# name -> builder(*, num_classes, in_channels, **kwargs) -> nn.Module
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def list_models() -> list[str]:
    """Names ``build_model`` accepts."""
    return MODELS.names()


def _bind(name: str, builder: Callable[..., nn.Module], kwargs: dict[str, Any]) -> dict[str, Any]:
    """All keyword arguments the builder will see, defaults included, so the recorded spec
    stays valid even if a default changes later."""
    signature = inspect.signature(builder)
    accepted = [p for p in signature.parameters if p != "self"]
    for key in kwargs:
        if key not in signature.parameters:
            raise ConfigError(f"model {name!r} has no option {key!r}; "
                              f"it accepts: {', '.join(accepted)}")
    bound = signature.bind(**kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def build_model(name: str, *, num_classes: int = 10, in_channels: int = 1,
                **kwargs: Any) -> nn.Module:
    """Build a registered model with freshly initialised weights.

    Unknown names raise UnknownNameError (listing the known ones); unknown or invalid
    options raise ConfigError naming the option.
    """
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}={value!r} must be a positive integer")
    builder = MODELS.get(name)
    full = _bind(name, builder, {"num_classes": num_classes, "in_channels": in_channels, **kwargs})
    model = builder(**full)
    update_(model, architecture={"name": name, "kwargs": full})
    return model


def model_spec(model: nn.Module) -> dict[str, Any]:
    """``{"name": ..., "kwargs": {...}}`` such that ``build_model(name, **kwargs)`` rebuilds
    the architecture of ``model`` (a copy: editing it leaves the model alone)."""
    spec = record_of(model).architecture
    if not spec or "name" not in spec:
        raise UnsupportedModelError(
            f"{type(model).__name__} records no architecture: it was not built by "
            "torchslim.zoo.build_model, so its architecture cannot be recorded; "
            "build it with build_model(name, ...) or save its weights with your own code")
    return copy.deepcopy(dict(spec))
