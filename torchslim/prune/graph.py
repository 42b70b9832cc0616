"""Coupled channels: which output channels must be removed together, and from where.

Removing output channel ``c`` of a conv also removes channel ``c`` of the BatchNorm after
it and input channel ``c`` of every layer that consumes it; a residual add ties the
channels of all the blocks it joins; a depthwise conv passes its channels through;
``flatten`` maps one channel to ``H*W`` Linear inputs; ``cat`` shifts indices. The
tracing and index bookkeeping come from Torch-Pruning's ``DependencyGraph``; this module
turns its groups into plain records (which module, which dimension, which indices) that
importance scores, MAC estimates and reports can read.

Some layers split their channels into equal blocks: a grouped convolution (RegNet,
ResNeXt), GroupNorm, the heads of ``nn.MultiheadAttention``. Torch-Pruning's graph alone
removes any index set, which leaves the blocks unequal (or reads past the end of a
grouped conv's weight); a ``ChannelGroup`` therefore says how many blocks its channels
fall into, and the planner removes the same offsets from every block, as Torch-Pruning's
own ``MetaPruner`` does.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchslim.errors import MissingDependencyError, UnsupportedModelError
from torchslim.evaluation.model_stats import call_model, first_sample

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
    """Channels that live or die together; ``name`` is the root layer's name.

    ``blocks``: the channels fall into this many equal, contiguous blocks (the groups of a
    grouped conv, GroupNorm groups, attention heads) that must stay equal, so a removal
    takes the same offsets from every block (see ``spread``).
    """

    name: str
    size: int
    members: list[Member] = field(default_factory=list)
    blocks: int = 1

    def spread(self, offsets: Sequence[int]) -> list[int]:
        """Channel indices for removing ``offsets`` (within a block) from every block."""
        width = self.size // self.blocks
        return sorted(o + b * width for b in range(self.blocks) for o in offsets)

    def layers(self, dim: str) -> list[str]:
        return [m.name for m in self.members if m.dim == dim]

    def __str__(self) -> str:
        outs = ", ".join(self.layers("out"))
        return f"group {self.name} ({self.size} channels): outputs of {outs}"

    def describe(self, most: int = 3) -> str:
        """``__str__`` with at most ``most`` layers named."""
        outs = self.layers("out")
        more = f" and {len(outs) - most} more" if len(outs) > most else ""
        return (f"group {self.name} ({self.size} channels: outputs of "
                f"{', '.join(outs[:most])}{more})")


def forward_once(model: nn.Module, example_inputs: Any,
                 hooks: dict[nn.Module, Callable[..., None]]) -> Any:
    """One eval-mode, no-grad forward pass of the first sample (of a tensor, tuple or dict
    batch) with ``hooks`` (module -> forward hook) attached; returns the output. The hooks
    are removed and the model's mode restored after."""
    handles = [m.register_forward_hook(h) for m, h in hooks.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            return call_model(model, first_sample(example_inputs))
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


class PruneFailure(UnsupportedModelError):
    """Pruning one group broke the model; ``group`` names its root layer."""

    def __init__(self, group: str, why: str) -> None:
        super().__init__(f"pruning group {group!r} failed: {why}; keep its channels with "
                         f"protected=({group!r},)")
        self.group = group
        self.why = why


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
        self.output_layers = output_layers(model, example_inputs)
        self.protected = sorted(set(protected) | set(self.output_layers))
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

    @functools.cached_property
    def groups(self) -> list[ChannelGroup]:
        """The prunable groups (collected on first use: a graph built only to apply a
        plan never needs them)."""
        return self._collect()

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
            size = len(g[0].idxs)
            groups.append(ChannelGroup(self._names[root], size, members,
                                       blocks=self._blocks(g, size)))
        return groups

    def _blocks(self, group: Any, size: int) -> int:
        """Equal channel blocks of the group: the most any member splits its channels
        into (grouped conv groups, GroupNorm groups, attention heads); depthwise convs
        carry their channels through and do not count."""
        blocks = 1
        for item in group:
            module, handler = item.dep.target.module, item.dep.handler
            if not isinstance(module, nn.Module):
                continue
            if isinstance(module, nn.MultiheadAttention):
                blocks = max(blocks, module.num_heads)
                continue
            if isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.out_channels:
                continue  # depthwise
            pruner = self._dg.get_pruner_of_module(module)
            if pruner is None:
                continue
            out = self._dg.is_out_channel_pruning_fn(handler)
            blocks = max(blocks, int(pruner.get_out_channel_groups(module) if out
                                     else pruner.get_in_channel_groups(module)))
        if size % blocks:  # an index mapping the planner cannot see; the forward check will
            logger.debug("group of %d channels in %d blocks: not divisible", size, blocks)
            return 1
        return blocks

    def _dim(self, handler: Any, module: nn.Module) -> str:
        if isinstance(module, PRUNABLE_ROOTS):
            return "out" if self._dg.is_out_channel_pruning_fn(handler) else "in"
        return "norm"

    def prune_(self, plan: dict[str, list[int]]) -> None:
        """Remove ``plan[group_name]`` (channel indices of the group's root layer)."""
        for name, idxs in plan.items():
            if not idxs:
                continue
            root = self.model.get_submodule(name)
            pruner = self._dg.get_pruner_of_module(root)
            size = pruner.get_out_channels(root)
            if len(idxs) >= size:
                raise UnsupportedModelError(f"refusing to remove every channel of group "
                                            f"{name} ({size} channels)")
            try:
                self._dg.get_pruning_group(root, pruner.prune_out_channels, sorted(idxs)).prune()
            except Exception as e:  # Torch-Pruning's errors are raw (IndexError, assert)
                raise PruneFailure(name, f"Torch-Pruning failed removing {len(idxs)} of "
                                   f"{size} channels: {type(e).__name__}: {e}") from e

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

    out = forward_once(model, example_inputs, {m: hook(n) for n, m in model.named_modules()
                                               if isinstance(m, PRUNABLE_ROOTS)})
    outs = list(out.values()) if isinstance(out, Mapping) else (
        out if isinstance(out, (tuple, list)) else [out])
    found = [produced[id(o)] for o in outs if isinstance(o, torch.Tensor) and id(o) in produced]
    if not found:  # the output went through a last op (reshape, activation): take the last layer
        names = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_ROOTS)]
        found = names[-1:]
    return found
