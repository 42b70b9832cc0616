"""``capture(model, example_inputs)``: a graph of every op the model runs, by the best
route that works.

Routes, in order ("auto"):

1. ``torch.export`` non-strict, then strict (``torchslim.capture.export``): ATen ops,
   module subclasses and functional calls included;
2. torch.fx symbolic tracing (``torchslim.capture.fx``): submodules fx cannot trace become
   leaves, and each such leaf is then captured on its own with torch.export (its example
   inputs recorded by a hook on one forward of the model);
3. per submodule: when neither can trace the root ``forward`` (e.g. it branches on a
   tensor value), each child module is captured on its own, recursively, and the root
   stays the model's own Python code around the captured children.

A part that no route captures is reported in ``Captured.float_parts`` with the reason.
Each captured graph carries the shape and dtype of every value
(``torchslim.capture.values``), recorded from one forward on the example inputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from torchslim.capture.export import export_graph
from torchslim.capture.fx import one_line, trace
from torchslim.capture.inputs import ExampleInputs, as_example_inputs, positional_names
from torchslim.capture.values import record_values_
from torchslim.errors import ConfigError, UnsupportedModelError

__all__ = ["Captured", "capture", "METHODS"]

logger = logging.getLogger(__name__)

METHODS = ("auto", "export", "fx")


@dataclass
class Captured:
    """What capture produced. ``module`` computes what the model computes; ``units`` are
    its captured graphs by qualified name ("" is the root when the root was captured)."""

    module: nn.Module
    method: str                     # "export", "export-strict", "fx" or "submodules"
    units: dict[str, fx.GraphModule] = field(default_factory=dict)
    float_parts: list[tuple[str, str]] = field(default_factory=list)  # (name, why)
    notes: list[str] = field(default_factory=list)  # why the earlier routes failed


def _export(model: nn.Module, inputs: ExampleInputs, notes: list[str]) -> Captured | None:
    for method, strict in (("export", False), ("export-strict", True)):
        try:
            gm = export_graph(model, inputs, strict=strict)
            record_values_(gm, inputs)
        except Exception as e:  # torch.export raises many kinds; the reason is kept
            notes.append(f"{method}: {one_line(e)}")
            logger.info("capture of %s with %s failed: %s", type(model).__name__, method,
                        notes[-1])
            continue
        return Captured(gm, method, {"": gm}, [], notes)
    return None


def _prefixed(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


@torch.no_grad()
def record_call_inputs(model: nn.Module, names: list[str], inputs: ExampleInputs
                       ) -> dict[str, ExampleInputs]:
    """The arguments each named submodule received in its first call during one forward
    of ``model`` on ``inputs`` (submodules never called are missing)."""
    seen: dict[str, ExampleInputs] = {}
    handles = []
    for name in names:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                 name: str = name) -> None:
            if name not in seen:
                seen[name] = ExampleInputs(tuple(args), dict(kwargs),
                                           positional_names(module, len(args)))
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook, with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        inputs.call(model)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


def _fx(model: nn.Module, inputs: ExampleInputs, notes: list[str], *,
        capture_leaves: bool) -> Captured | None:
    try:
        gm, leaves = trace(model, warn=not capture_leaves)
    except UnsupportedModelError as e:
        notes.append(f"fx: {e}")
        return None
    captured = Captured(gm, "fx", {"": gm}, [], notes)
    leaf_inputs = record_call_inputs(model, list(leaves), inputs) if capture_leaves else {}
    for leaf in leaves:
        leaf_notes: list[str] = []
        sub = _export(gm.get_submodule(leaf), leaf_inputs[leaf], leaf_notes) \
            if leaf in leaf_inputs else None
        if sub is None:
            tried = f"; {leaf_notes[0]}" if leaf_notes else ""
            captured.float_parts.append((leaf, f"cannot trace: {leaf.reason}{tried}"))
            continue
        gm.set_submodule(leaf, sub.module)
        captured.units[leaf] = sub.units[""]
    record_values_(gm, inputs)
    return captured


def _per_submodule(model: nn.Module, inputs: ExampleInputs, notes: list[str]) -> Captured:
    """Each child captured on its own (recursively); ``model`` keeps its own forward."""
    captured = Captured(model, "submodules", {}, [], notes)
    children = [n for n, c in model.named_children() if any(True for _ in c.parameters())]
    called = record_call_inputs(model, children, inputs)
    if not children:
        captured.float_parts.append(("", f"no capture route worked ({'; '.join(notes)})"))
    for name in children:
        if name not in called:
            continue  # never runs: nothing to quantize
        sub = _capture(model.get_submodule(name), called[name], "auto")
        model.set_submodule(name, sub.module)
        captured.units.update({_prefixed(name, k): v for k, v in sub.units.items()})
        captured.float_parts += [(_prefixed(name, k), why) for k, why in sub.float_parts]
    return captured


def _capture(model: nn.Module, inputs: ExampleInputs, method: str) -> Captured:
    notes: list[str] = []
    if method in ("auto", "export"):
        found = _export(model, inputs, notes)
        if found is not None:
            return found
        if method == "export":
            raise UnsupportedModelError(f"torch.export cannot capture {type(model).__name__}: "
                                        f"{notes[-1]}; use capture='auto' to fall back to fx")
    found = _fx(model, inputs, notes, capture_leaves=method == "auto")
    if found is not None:
        return found
    if method == "fx":
        raise UnsupportedModelError(f"cannot trace {type(model).__name__} with fx: "
                                    f"{notes[-1]}; use capture='auto' to capture its parts")
    logger.info("%s: no route captured the root (%s); capturing its children",
                type(model).__name__, "; ".join(notes))
    return _per_submodule(model, inputs, notes)


def capture(model: nn.Module, example_inputs: Any, *, method: str = "auto") -> Captured:
    """Capture ``model`` (in eval mode) on ``example_inputs`` (a tensor, tuple or dict).

    ``method``: "auto" (the routes in the module docstring), "export" (torch.export
    only) or "fx" (fx only, untraceable submodules kept as float leaves). The captured
    graphs share ``model``'s parameters, and the per-submodule route replaces children
    of ``model`` in place: pass a copy you may change.
    """
    if method not in METHODS:
        raise ConfigError(f"capture={method!r} must be one of {', '.join(METHODS)}")
    inputs = as_example_inputs(example_inputs, model=model)
    was_training = model.training
    model.eval()
    try:
        captured = _capture(model, inputs, method)
    finally:
        model.train(was_training)
    logger.info("captured %s with %s (%d graphs, %d parts in float)", type(model).__name__,
                captured.method, len(captured.units), len(captured.float_parts))
    return captured
