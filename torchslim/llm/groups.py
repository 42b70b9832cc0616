"""Scale groups found from the captured graph, for any architecture.

A group is a producer whose output channels can absorb a per-channel factor ``1 / s`` and
the Linears that read that output (and nothing else), whose input columns take ``s``:
the model computes the same function after the fold. The producer is

- a norm: ``aten.layer_norm`` with a weight (LayerNorm: weight and bias scale), or a
  per-channel weight multiplying a normalised tensor (RMSNorm, ``weight * x``);
- a Linear (``nn.Linear`` or transformers' ``Conv1D``) whose output reaches the readers
  through ops that are linear per channel: reshapes, dropout, one operand of a
  ``mul`` (a gated MLP's ``up`` projection), or the value input of attention (``v -> o``:
  the attention output is linear in each value channel).

The model is captured with ``torch.export`` (``torchslim.capture``; a Hugging Face model
through ``TextModel``), each candidate is checked for exclusivity on the graph (a post-LN
encoder's LayerNorm also feeds the residual, so it is no group), and every group found is
verified numerically: random scales folded into a copy must leave the output unchanged.
No module names are consulted.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, fx, nn

from torchslim.capture import capture
from torchslim.capture.ops import op_name
from torchslim.llm.scaling import ScaleGroup, fold_scales_, in_features, out_features

__all__ = ["find_scale_groups", "verify_groups"]

logger = logging.getLogger(__name__)

# ops a per-channel factor passes through unchanged (same channel, last dim)
_THROUGH = {"view", "reshape", "_unsafe_view", "contiguous", "clone", "dropout", "alias",
            "detach", "to", "_to_copy", "type_as", "flatten", "unflatten"}
# ops that move the channel dim around between a value projection and attention
_HEAD_MOVES = {"transpose", "permute", "expand", "unsqueeze", "squeeze"}
_LINEARS = {"linear", "addmm"}


def _param_owner(gm: fx.GraphModule, node: Any) -> tuple[str, str] | None:
    """``(module name, attribute)`` when ``node`` reads a parameter of the model."""
    if isinstance(node, fx.Node) and node.op == "get_attr":
        module, _, attr = str(node.target).rpartition(".")
        return module, attr
    return None


def _linear_parts(gm: fx.GraphModule, node: fx.Node) -> tuple[str, fx.Node] | None:
    """``(module, input node)`` of a Linear node: ``linear(x, w, b)`` or Conv1D's
    ``addmm(b, x, w)``."""
    name = op_name(node)
    if name == "linear" and len(node.args) >= 2:
        owner, x = _param_owner(gm, node.args[1]), node.args[0]
    elif name == "addmm" and len(node.args) >= 3:
        owner, x = _param_owner(gm, node.args[2]), node.args[1]
    else:
        return None
    if owner is None or owner[1] != "weight" or not isinstance(x, fx.Node):
        return None
    return owner[0], x


def _back(node: Any, moves: bool = False) -> Any:
    """Walk up through per-channel-transparent ops (and head moves when ``moves``)."""
    while isinstance(node, fx.Node) and node.op == "call_function":
        name = op_name(node)
        if name in _THROUGH or (moves and name in _HEAD_MOVES):
            node = node.args[0]
            continue
        break
    return node


def _producer(gm: fx.GraphModule, node: Any, linears: dict[fx.Node, str]
              ) -> tuple[str, str, fx.Node] | None:
    """``(producer module, kind, producer node)`` for the value a Linear reads."""
    node = _back(node)
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return None
    name = op_name(node)
    if node in linears:
        return linears[node], "linear", node
    if name == "layer_norm" and len(node.args) >= 3:
        owner = _param_owner(gm, node.args[2])
        return (owner[0], "norm", node) if owner else None
    if name == "mul" and len(node.args) == 2:
        owners = [_param_owner(gm, a) for a in node.args]
        if any(owners):  # RMSNorm: weight * normalised x
            owner = next(o for o in owners if o)
            return (owner[0], "norm", node) if owner[1] == "weight" else None
        sides = [_back(a) for a in node.args]
        found = [linears[s] for s in sides if isinstance(s, fx.Node) and s in linears]
        if len(found) == 1:  # gated MLP: act(gate(x)) * up(x) -> fold into up
            src = next(s for s in sides if isinstance(s, fx.Node) and s in linears)
            return found[0], "linear", src
        return None
    if name == "scaled_dot_product_attention" and len(node.args) >= 3:
        value = _back(node.args[2], moves=True)
        if isinstance(value, fx.Node) and value in linears:
            return linears[value], "linear", value
    return None


def _source(gm: fx.GraphModule, x: Any, linears: dict[fx.Node, str]
            ) -> tuple[str, str, fx.Node] | None:
    """The producer of a Linear's input; behind head moves only attention counts (the
    attention output reaches ``o`` through a transpose and a reshape)."""
    found = _producer(gm, x, linears)
    if found is not None:
        return found
    moved = _back(x, moves=True)
    if isinstance(moved, fx.Node) and op_name(moved) == "scaled_dot_product_attention":
        return _producer(gm, moved, linears)
    return None


def _exclusive(start: fx.Node, readers: set[fx.Node]) -> bool:
    """Whether every use of ``start``'s value ends as the input of a node in ``readers``,
    through ops that carry a per-channel factor to the output unchanged."""
    todo, seen = [start], set()
    while todo:
        node = todo.pop()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            name = op_name(user) if user.op == "call_function" else ""
            if user in readers:
                continue
            if name in _THROUGH or name in _HEAD_MOVES:
                todo.append(user)
            elif name == "mul" and sum(a is node for a in user.args) == 1 and not any(
                    isinstance(a, fx.Node) and a.op == "get_attr" for a in user.args):
                todo.append(user)  # one operand of a product: the product scales too
            elif name == "scaled_dot_product_attention" and len(user.args) > 2 and \
                    user.args[2] is node and node not in user.args[:2]:
                todo.append(user)  # the value of attention: the output is linear in it
            else:
                return False
    return True


def _candidates(gm: fx.GraphModule) -> list[ScaleGroup]:
    linears: dict[fx.Node, str] = {}
    inputs: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        parts = _linear_parts(gm, node) if node.op == "call_function" else None
        if parts is not None:
            linears[node], inputs[node] = parts
    by_source: dict[fx.Node, tuple[str, str, list[fx.Node]]] = {}
    for node, x in inputs.items():
        found = _source(gm, x, linears)
        if found is None:
            continue
        prev, kind, source = found
        by_source.setdefault(source, (prev, kind, []))[2].append(node)
    groups = []
    for source, (prev, kind, readers) in by_source.items():
        names = tuple(dict.fromkeys(linears[r] for r in readers))
        if len(names) != len(readers) or prev in names:
            continue  # a Linear read twice, or reading itself: no per-channel fold
        if _exclusive(source, set(readers)):
            groups.append(ScaleGroup(prev, names, kind))
    return groups


def _fits(model: nn.Module, group: ScaleGroup) -> bool:
    """The producer's channel count equals every reader's input width."""
    prev = model.get_submodule(group.prev)
    width = out_features(prev) if group.kind == "linear" else getattr(
        prev, "weight", torch.empty(0)).numel()
    return all(in_features(model.get_submodule(n)) == width for n in group.linears)


@torch.no_grad()
def verify_groups(model: nn.Module, groups: list[ScaleGroup], example_inputs: Any, *,
                  tolerance: float = 1e-3) -> list[ScaleGroup]:
    """The groups whose fold leaves ``model``'s output unchanged: random scales in
    ``[0.5, 2]`` are folded into a copy and the outputs compared (relative error); all
    groups at once first, one by one only when that fails."""
    from torchslim.capture.inputs import as_example_inputs

    inputs = as_example_inputs(example_inputs, model=model)
    ref = _first_tensor(inputs.call(model))

    def preserved(part: list[ScaleGroup]) -> float:
        trial = copy.deepcopy(model)
        gen = torch.Generator().manual_seed(0)
        for group in part:
            k = in_features(trial.get_submodule(group.linears[0]))
            fold_scales_(trial, group, torch.exp((torch.rand(k, generator=gen) - 0.5) * 1.4))
        out = _first_tensor(inputs.call(trial))
        return float((out - ref).norm() / ref.norm().clamp(min=1e-12))

    if not groups or preserved(groups) <= tolerance:
        return list(groups)
    ok = []
    for group in groups:
        err = preserved([group])
        if err <= tolerance:
            ok.append(group)
        else:
            logger.info("scale group %s -> %s is not function-preserving (relative error "
                        "%.2g); left out", group.prev, ", ".join(group.linears), err)
    return ok


def _first_tensor(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out.float()
    if isinstance(out, (tuple, list)):
        return _first_tensor(out[0])
    if isinstance(out, dict):
        return _first_tensor(next(iter(out.values())))
    logits = getattr(out, "logits", None)
    return _first_tensor(logits if logits is not None else out.last_hidden_state)


def find_scale_groups(model: nn.Module, example_inputs: Any, *,
                      kinds: Iterable[str] = ("norm", "linear"), verify: bool = True
                      ) -> list[ScaleGroup]:
    """Every scale group of ``model`` (names relative to ``model``), found on its
    ``torch.export`` graph for ``example_inputs`` and, with ``verify``, checked
    numerically. A bare Hugging Face model is captured through ``TextModel``."""
    from torchslim.transformers.model import TextModel

    # a bare Hugging Face model is captured through TextModel (names then start "model.")
    wrap = hasattr(model, "config") and not isinstance(model, TextModel)
    wrapped = TextModel(model) if wrap else model
    prefix = "model." if wrap else ""
    captured = capture(wrapped, example_inputs, method="export")
    kinds = tuple(kinds)
    groups = [g for g in _candidates(captured.units[""]) if g.kind in kinds
              and _fits(wrapped, g)]
    if verify and groups:
        groups = verify_groups(wrapped, groups, example_inputs)
    groups = [ScaleGroup(g.prev[len(prefix):], tuple(n[len(prefix):] for n in g.linears),
                         g.kind) for g in groups]
    logger.info("%s: %d scale groups from the graph (%d norm -> linear, %d linear -> linear)",
                type(model).__name__, len(groups), sum(g.kind == "norm" for g in groups),
                sum(g.kind == "linear" for g in groups))
    return groups
