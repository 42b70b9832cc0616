"""Module shapes that differ from the architecture's defaults, saved and restored.

Structured pruning leaves an ordinary ``nn.Module`` whose layers are narrower than the
ones ``build_model`` creates. ``structure_of`` records every shape-defining attribute
(channels, features, groups) by module name, and every residual block that depth pruning
removed; ``restructure_`` removes and resizes the same modules of a freshly built model, so
that its state dict loads without "size mismatch" or "missing key" errors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchslim._record import RemovedBlock
from torchslim.errors import ArchitectureMismatchError

__all__ = ["SHAPE_ATTRS", "RemovedBlock", "structure_of", "restructure_"]

# Attributes that define a module's parameter shapes, per module type.
SHAPE_ATTRS: tuple[tuple[type[nn.Module], tuple[str, ...]], ...] = (
    (nn.modules.conv._ConvNd, ("in_channels", "out_channels", "groups")),
    (nn.Linear, ("in_features", "out_features")),
    (nn.modules.batchnorm._BatchNorm, ("num_features",)),
    (nn.LayerNorm, ("normalized_shape",)),
    (nn.GroupNorm, ("num_groups", "num_channels")),
    (nn.PReLU, ("num_parameters",)),
    (nn.Embedding, ("num_embeddings", "embedding_dim")),
)


REMOVED = {"removed": True}


def _attrs_for(module: nn.Module) -> tuple[str, ...]:
    for kind, attrs in SHAPE_ATTRS:
        if isinstance(module, kind):
            return attrs
    return ()


def structure_of(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module_name: {attribute: value}}`` for every module with shape attributes."""
    out: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if isinstance(module, RemovedBlock):
            out[name] = dict(REMOVED)
            continue
        attrs = _attrs_for(module)
        if attrs:
            out[name] = {a: _jsonable(getattr(module, a)) for a in attrs}
    return out


def restructure_(model: nn.Module, structure: dict[str, dict[str, Any]],
                 state: dict[str, torch.Tensor]) -> nn.Module:
    """Resize ``model``'s modules to ``structure`` and its tensors to ``state``'s shapes."""
    removed = [name for name, attrs in structure.items() if attrs == REMOVED]
    known = dict(model.named_modules())
    for name in removed:
        if name not in known:
            raise ArchitectureMismatchError(
                f"the recorded structure removed block {name!r}, which this model lacks; "
                "rebuild the architecture the checkpoint was saved from (see its .json sidecar)")
        model.set_submodule(name, RemovedBlock())
    structure = {n: a for n, a in structure.items() if a != REMOVED}
    modules = dict(model.named_modules())
    unknown = [name for name in structure if name not in modules]
    if unknown:
        raise ArchitectureMismatchError(
            f"the recorded structure names modules this model lacks: {', '.join(unknown[:3])}; "
            "rebuild the architecture the checkpoint was saved from (see its .json sidecar)")
    for name, attrs in structure.items():
        module = modules[name]
        for attr, value in attrs.items():
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
    for key, tensor in state.items():
        owner_name, _, leaf = key.rpartition(".")
        owner = modules.get(owner_name)
        if owner is None:
            continue
        current = getattr(owner, leaf, None)
        if not isinstance(current, torch.Tensor) or current.shape == tensor.shape:
            continue
        fresh = torch.empty(tensor.shape, dtype=current.dtype, device=current.device)
        if isinstance(current, nn.Parameter):
            setattr(owner, leaf, nn.Parameter(fresh, requires_grad=current.requires_grad))
        else:
            owner.register_buffer(leaf, fresh, persistent=leaf not in owner._non_persistent_buffers_set)
    return model


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value
