"""Pruning that never leaves a broken or half-modified model.

Torch-Pruning rewrites modules in place, group after group, and sees only what its trace
shows. A size stored in the model is invisible to it: torchvision's ViT reshapes the patch
embedding with ``self.hidden_dim`` (768), so removing hidden channels breaks the forward
although every layer was rewritten consistently; and a rewrite can fail halfway (a
grouped conv it cannot index). This module makes that safe:

- ``ModelSnapshot`` records every module's attributes, parameters, buffers and children
  (references, no weight is copied) and ``restore()`` puts them back, so a failed prune
  leaves the model exactly as it was.
- ``PlanTrial`` applies a plan on a fresh coupling graph and checks one forward pass
  against the outputs the model had before (same structure, same shapes).
- ``breaking_groups`` finds, by bisection over the plan's groups, which groups break the
  model and why, so they can be protected and the rest pruned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from torchslim.prune.graph import CouplingGraph, PruneFailure, forward_once

__all__ = ["ModelSnapshot", "PlanTrial", "breaking_groups", "output_signature"]

logger = logging.getLogger(__name__)

Plan = dict[str, list[int]]


class ModelSnapshot:
    """Every module's state as it is now; ``restore()`` returns the model to it (any
    number of times). Weights are held by reference: a rewrite that replaces parameters
    (as Torch-Pruning does) is undone by putting the old ones back."""

    def __init__(self, model: nn.Module) -> None:
        self._modules = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers),
                          dict(m._modules)) for m in model.modules()]
        tensors = {id(t): t for m in model.modules()
                   for t in (*m._parameters.values(), *m._buffers.values()) if t is not None}
        self._tensors = [(t, t.data, t.grad) for t in tensors.values()]

    def restore(self) -> None:
        for module, attrs, params, buffers, children in self._modules:
            module.__dict__.clear()
            module.__dict__.update(attrs)
            # fresh copies: the dicts themselves were edited in place by the rewrite
            module.__dict__["_parameters"] = type(attrs["_parameters"])(params)
            module.__dict__["_buffers"] = type(attrs["_buffers"])(buffers)
            module.__dict__["_modules"] = type(attrs["_modules"])(children)
        with torch.no_grad():
            for tensor, data, grad in self._tensors:
                tensor.data = data
                tensor.grad = grad


def output_signature(out: Any) -> Any:
    """The structure of a model output with each tensor replaced by its shape."""
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, Mapping):
        return {k: output_signature(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return [output_signature(v) for v in out]
    return type(out).__name__


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


class PlanTrial:
    """Apply plans to ``model`` and check that its forward still gives outputs of the
    shapes it gave before; the model can be returned to its state at construction."""

    def __init__(self, model: nn.Module, example_inputs: Any) -> None:
        self.model = model
        self.example_inputs = example_inputs
        self.snapshot = ModelSnapshot(model)
        self.expected = output_signature(forward_once(model, example_inputs, {}))

    def apply(self, graph: CouplingGraph, plan: Plan) -> str | None:
        """Prune ``plan`` with ``graph`` (built on the model in its snapshot state); None
        when the model still runs, else why not, with the model restored."""
        try:
            graph.prune_(plan)
        except PruneFailure as e:
            self.snapshot.restore()
            return e.why
        why = self.check()
        if why is not None:
            self.snapshot.restore()
        return why

    def check(self) -> str | None:
        try:
            out = forward_once(self.model, self.example_inputs, {})
        except Exception as e:  # any failure of the rewritten forward is the finding
            return f"the forward fails after pruning: {_first_line(e)}"
        got = output_signature(out)
        if got != self.expected:
            return f"the output changes from {self.expected} to {got}"
        return None

    def __call__(self, plan: Plan, protected: Sequence[str] = ()) -> str | None:
        """Prune only ``plan`` on a fresh graph (``protected`` as for the plan's graph),
        check, and restore either way."""
        try:
            graph = CouplingGraph(self.model, self.example_inputs, protected=protected)
            why = self.apply(graph, plan)
        finally:
            self.snapshot.restore()
        return why


def breaking_groups(plan: Plan, trial: Callable[[Plan], str | None], why: str
                    ) -> dict[str, str]:
    """``{group: reason}`` for the groups of ``plan`` that break the model, found by
    bisection: ``trial(part)`` prunes part of the plan on a fresh model and says what
    broke. ``why`` is what the whole plan broke. Of two groups that break the model only
    together, the later one is reported."""
    names = [n for n, idxs in plan.items() if idxs]
    broken: dict[str, str] = {}

    def search(part: list[str], background: list[str], reason: str) -> None:
        """``background + part`` breaks the model (``reason``); ``background`` alone not."""
        if len(part) == 1:
            broken[part[0]] = reason
            return
        half = len(part) // 2
        first, second = part[:half], part[half:]
        found = trial(_subplan(plan, background + first))
        if found is None:  # then the break needs something in the second half
            search(second, background + first, reason)
            return
        search(first, background, found)
        clean = [n for n in first if n not in broken]
        later = trial(_subplan(plan, background + clean + second))
        if later is not None:
            search(second, background + clean, later)

    search(names, [], why)
    logger.info("groups that break the model when pruned: %s", ", ".join(broken) or "none")
    return broken


def _subplan(plan: Plan, names: Sequence[str]) -> Plan:
    return {n: plan[n] for n in names}
