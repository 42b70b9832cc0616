"""Depth pruning: remove whole residual blocks, not just channels inside them.

A residual block with an identity shortcut computes ``y = act(x + g(x))``. Removing it
leaves ``y = x`` (exact when ``g`` contributes nothing and ``x`` is already past the
activation, as in a post-activation ResNet), so the model keeps its shapes and needs no
rewiring: the block becomes a ``RemovedBlock`` (an ``nn.Identity``) and vanishes from the
exported graph. Channel pruning cannot make the widest-resolution stage cheaper once its
width sits at a runtime's vector block (16 channels for ONNX Runtime's AVX-512 NCHWc
kernels); removing a block there can.

>>> names = residual_blocks(model, torch.zeros(1, 1, 28, 28))
>>> remove_blocks_(model, 1, example_inputs=torch.zeros(1, 1, 28, 28), data=val_batches)
['layer1.1']
"""

from __future__ import annotations

import difflib
import logging
import operator
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from torchslim._record import RemovedBlock, update_
from torchslim.errors import ConfigError, UnknownNameError
from torchslim.prune.graph import forward_once

__all__ = ["BLOCK_IMPORTANCE", "RemovedBlock", "block_importance", "remove_blocks_",
           "residual_blocks"]

logger = logging.getLogger(__name__)

BLOCK_IMPORTANCE = ("loss", "residual")
_ADDS = {operator.add, operator.iadd, torch.add}


def residual_blocks(model: nn.Module, example_inputs: Tensor) -> list[str]:
    """Names of the submodules that add their own input back to their output (an identity
    shortcut) and keep its shape: the blocks ``remove_blocks_`` may remove, in order."""
    shapes = _io_shapes(model, example_inputs)
    found = []
    for name, module in model.named_modules():
        if not name or isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict,
                                           RemovedBlock)):
            continue
        if name not in shapes or shapes[name][0] != shapes[name][1]:
            continue
        if any(name.startswith(f + ".") for f in found):
            continue  # nested inside a block already found
        if _adds_its_input(module):
            found.append(name)
    return found


def block_importance(model: nn.Module, names: Sequence[str], batches: Sequence[Any], *,
                     criterion: str = "loss") -> dict[str, float]:
    """How much the model relies on each block; lower is safer to remove.

    ``loss``: the rise in cross-entropy on ``batches`` of ``(x, y)`` when the block alone
    is bypassed. ``residual``: the block's mean relative change of its input,
    ``||y - x|| / ||x||`` (needs only inputs).
    """
    if criterion not in BLOCK_IMPORTANCE:
        raise ConfigError(f"block importance {criterion!r}; choose one of {BLOCK_IMPORTANCE}")
    if not batches:
        raise ConfigError("block importance needs at least one batch of data")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if criterion == "residual":
                return _relative_change(model, names, batches)
            base = _mean_loss(model, batches)
            scores = {}
            for name in names:
                with _bypassed(model, name):
                    scores[name] = _mean_loss(model, batches) - base
            return scores
    finally:
        model.train(was_training)


def remove_blocks_(model: nn.Module, blocks: int | Sequence[str], *, example_inputs: Tensor,
                   data: Iterable[Any] | None = None, criterion: str = "loss",
                   num_batches: int = 8) -> list[str]:
    """Remove residual blocks from ``model`` in place; returns the names removed.

    ``blocks`` is a count (the least important blocks by ``block_importance`` on the first
    ``num_batches`` of ``data``; without data, by the relative change on
    ``example_inputs``) or the names of the blocks to remove.
    """
    candidates = residual_blocks(model, example_inputs)
    if isinstance(blocks, int):
        if blocks < 0:
            raise ConfigError(f"blocks={blocks} must be >= 0: how many residual blocks to remove")
        if blocks == 0:
            return []
        if blocks > len(candidates):
            raise ConfigError(f"blocks={blocks}, but {type(model).__name__} has only "
                              f"{len(candidates)} removable residual blocks "
                              f"({', '.join(candidates) or 'none'})")
        batches = _first(data, num_batches) if data is not None else []
        if not batches:
            batches, criterion = [(example_inputs, None)], "residual"
        scores = block_importance(model, candidates, batches, criterion=criterion)
        chosen = sorted(candidates, key=scores.__getitem__)[:blocks]  # stable: ties keep order
        logger.info("block importance (%s): %s", criterion,
                    ", ".join(f"{n} {scores[n]:.4f}" for n in candidates))
    else:
        chosen = list(blocks)
        for name in chosen:
            if name not in candidates:
                close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
                raise UnknownNameError(
                    f"{name!r} is not a removable residual block; "
                    + (f"did you mean {', '.join(close)}? " if close else "")
                    + f"removable: {', '.join(candidates) or 'none'}")
    for name in chosen:
        model.set_submodule(name, RemovedBlock())
    if chosen:  # a checkpoint must record the shallower structure
        update_(model, reshaped=True)
    logger.info("removed %d residual block(s): %s", len(chosen), ", ".join(chosen))
    return [n for n in candidates if n in chosen]


def _adds_its_input(module: nn.Module) -> bool:
    """True when an fx trace of ``module`` adds its (sole) input, passed through nothing
    but identities, to something else."""
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception:  # untraceable control flow: not a candidate
        return False
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return False
    modules = dict(module.named_modules())

    def is_input(node: Any) -> bool:
        while isinstance(node, fx.Node) and node.op == "call_module" and isinstance(
                modules.get(str(node.target)), nn.Identity):
            node = node.args[0]
        return node is inputs[0]

    for node in graph.nodes:
        is_add = (node.op == "call_function" and node.target in _ADDS) or (
            node.op == "call_method" and node.target in ("add", "add_"))
        if is_add and len(node.args) >= 2 and sum(is_input(a) for a in node.args[:2]) == 1:
            return True
    return False


def _io_shapes(model: nn.Module, example_inputs: Tensor) -> dict[str, tuple[Any, Any]]:
    shapes: dict[str, tuple[Any, Any]] = {}

    def hook(name: str):
        def record(_m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            if len(args) == 1 and isinstance(args[0], Tensor) and isinstance(out, Tensor):
                shapes.setdefault(name, (tuple(args[0].shape), tuple(out.shape)))
        return record

    forward_once(model, example_inputs, {m: hook(n) for n, m in model.named_modules() if n})
    return shapes


class _bypassed:
    """Context manager: the named block is an identity inside the ``with``."""

    def __init__(self, model: nn.Module, name: str) -> None:
        self.model, self.name = model, name
        self.block = model.get_submodule(name)

    def __enter__(self) -> None:
        self.model.set_submodule(self.name, nn.Identity())

    def __exit__(self, *_exc: Any) -> None:
        self.model.set_submodule(self.name, self.block)


def _mean_loss(model: nn.Module, batches: Sequence[Any]) -> float:
    total, count = 0.0, 0
    for x, y in batches:
        if y is None:
            raise ConfigError("block importance 'loss' needs labelled (x, y) batches")
        total += float(F.cross_entropy(model(x), y, reduction="sum"))
        count += len(y)
    return total / max(count, 1)


def _relative_change(model: nn.Module, names: Sequence[str], batches: Sequence[Any]) -> dict[str, float]:
    sums = dict.fromkeys(names, 0.0)

    def hook(name: str):
        def record(_m: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
            x = args[0]
            sums[name] += float((out - x).flatten(1).norm(dim=1).div(
                x.flatten(1).norm(dim=1).clamp_min(1e-12)).mean())
        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        for batch in batches:
            model(batch[0])
    finally:
        for h in handles:
            h.remove()
    return {n: s / len(batches) for n, s in sums.items()}


def _first(data: Iterable[Any], n: int) -> list[Any]:
    out = []
    for batch in data:
        out.append((batch[0], batch[1]))
        if len(out) >= n:
            break
    return out
