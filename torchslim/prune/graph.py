"""Coupled channels: which output channels must be removed together, and from where.

Removing output channel ``c`` of a conv also removes channel ``c`` of the BatchNorm after
it and input channel ``c`` of every layer that consumes it; a residual add ties the
channels of all the blocks it joins; a depthwise conv passes its channels through;
``flatten`` maps one channel to ``H*W`` Linear inputs; ``cat`` shifts indices. The
tracing and index bookkeeping come from Torch-Pruning's ``DependencyGraph``; this module
turns its groups into plain records (which module, which dimension, which indices) that
importance scores, MAC estimates and reports can read.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from torchslim.errors import MissingDependencyError, UnsupportedModelError

logger = logging.getLogger(__name__)

PRUNABLE_ROOTS = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass
class Member:
    """One module touched by a group: its ``dim`` ("out", "in" or "norm") loses ``idxs``;
    ``root_idxs[i]`` is the group channel that ``idxs[i]`` belongs to."""

    name: str
    module: nn.Module
    dim: str
    idxs: list[int]
    root_idxs: list[int]


@dataclass
class ChannelGroup:
    """Channels that live or die together; ``name`` is the root layer's name."""

    name: str
    size: int
    members: list[Member] = field(default_factory=list)

    def layers(self, dim: str) -> list[str]:
        return [m.name for m in self.members if m.dim == dim]

    def __str__(self) -> str:
        outs = ", ".join(self.layers("out"))
        return f"group {self.name} ({self.size} channels): outputs of {outs}"


def forward_once(model: nn.Module, example_inputs: Tensor,
                 hooks: dict[nn.Module, Callable[..., None]]) -> None:
    """One eval-mode, no-grad forward pass of the first sample with ``hooks`` (module ->
    forward hook) attached; the hooks are removed and the model's mode restored after."""
    handles = [m.register_forward_hook(h) for m, h in hooks.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_inputs[:1])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def _tp() -> Any:
    try:
        import torch_pruning
    except ImportError as e:  # pragma: no cover - a dependency, but say what to do
        raise MissingDependencyError("structured pruning needs: pip install torch-pruning") from e
    return torch_pruning


class CouplingGraph:
    """Channel groups of ``model``, traced once with ``example_inputs``.

    ``protected`` names layers whose output channels must stay (the classifier, a stem);
    a group that contains one of them is not offered for pruning. The model's output
    layer is always protected.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, *,
                 protected: Sequence[str] = ()) -> None:
        tp = _tp()
        self.model = model
        names = dict(model.named_modules())
        missing = [p for p in protected if p not in names]
        if missing:
            raise UnsupportedModelError(
                f"protected layer {missing[0]!r} is not in {type(model).__name__}; "
                f"layer names look like {', '.join(list(names)[1:4])}")
        self.protected = sorted(set(protected) | set(output_layers(model, example_inputs)))
        was_training = model.training
        model.eval()
        try:
            with warnings.catch_warnings(), torch.enable_grad():
                warnings.simplefilter("ignore")
                self._dg = tp.DependencyGraph().build_dependency(
                    model, example_inputs=example_inputs, verbose=False)
        except Exception as e:  # tracing failures come in many types; say which model
            raise UnsupportedModelError(
                f"cannot trace the channel dependencies of {type(model).__name__}: "
                f"{type(e).__name__}: {e}; protect the layer that blocks it or prune "
                "unstructured instead") from e
        finally:
            model.train(was_training)
        self._names = {m: n for n, m in model.named_modules()}
        self.groups = self._collect()

    def _collect(self) -> list[ChannelGroup]:
        ignored = [m for n, m in self.model.named_modules() if n in self.protected]
        groups = []
        for g in self._dg.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE_ROOTS):
            root = g[0].dep.target.module
            members = []
            for item in g:
                module = item.dep.target.module
                if not isinstance(module, nn.Module) or module not in self._names:
                    continue  # a bare nn.Parameter: pruned with the group, not scored
                members.append(Member(self._names[module], module, self._dim(item.dep.handler, module),
                                      list(item.idxs), list(item.root_idxs)))
            groups.append(ChannelGroup(self._names[root], len(g[0].idxs), members))
        return groups

    def _dim(self, handler: Any, module: nn.Module) -> str:
        if isinstance(module, PRUNABLE_ROOTS):
            return "out" if self._dg.is_out_channel_pruning_fn(handler) else "in"
        return "norm"

    def prune_(self, plan: dict[str, list[int]]) -> None:
        """Remove ``plan[group_name]`` (channel indices of the group's root layer)."""
        by_name = {g.name: g for g in self.groups}
        for name, idxs in plan.items():
            if not idxs:
                continue
            if len(idxs) >= by_name[name].size:
                raise UnsupportedModelError(f"refusing to remove every channel of {by_name[name]}")
            root = self.model.get_submodule(name)
            pruner = self._dg.get_pruner_of_module(root)
            self._dg.get_pruning_group(root, pruner.prune_out_channels, sorted(idxs)).prune()

    def describe(self) -> list[str]:
        return [str(g) for g in self.groups]


def output_layers(model: nn.Module, example_inputs: Any) -> list[str]:
    """Names of the conv/linear layers whose output is (part of) the model's output."""
    produced: dict[int, str] = {}

    def hook(name: str):
        def record(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                produced[id(out)] = name
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, PRUNABLE_ROOTS)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(*example_inputs) if isinstance(example_inputs, tuple) else model(example_inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    outs = out if isinstance(out, (tuple, list)) else [out]
    found = [produced[id(o)] for o in outs if isinstance(o, torch.Tensor) and id(o) in produced]
    if not found:  # the output went through a last op (reshape, activation): take the last layer
        names = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_ROOTS)]
        found = names[-1:]
    return found
