"""What flows along each edge of a captured graph: shape and dtype of every node's value,
recorded from one real forward on the example inputs (the same for every capture route).

Quantization reads them to leave integer tensors alone (token ids, masks, sizes) and to
count MACs; ``value_of(node)`` is None for a node whose value is not a tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn

from torchslim.capture.inputs import ExampleInputs

__all__ = ["ValueInfo", "record_values_", "value_of", "is_float_node", "module_macs"]

META = "torchslim_value"


@dataclass(frozen=True)
class ValueInfo:
    """Shape and dtype of a tensor value (the first tensor of a tuple value)."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def is_float(self) -> bool:
        return self.dtype.is_floating_point

    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class _Recorder(fx.Interpreter):
    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, Tensor):
            n.meta[META] = ValueInfo(tuple(out.shape), out.dtype)
        elif n.op != "output":
            n.meta.pop(META, None)
        return out


def _flat(inputs: ExampleInputs, gm: fx.GraphModule) -> list[Any]:
    """The placeholder values for ``gm`` in order; a pytree-flattening graph (torch.export's)
    takes the flattened leaves, a plain one its arguments (keywords by name)."""
    codegen = gm.graph._codegen
    if isinstance(codegen, fx.graph._PyTreeCodeGen):
        from torch.fx._pytree import tree_flatten_spec

        return list(tree_flatten_spec((inputs.args, dict(inputs.kwargs)),
                                      codegen.pytree_info.in_spec))
    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    given = dict(inputs.items())
    values = list(inputs.args)
    for name in names[len(values):]:
        values.append(given.get(str(name).lstrip("*")))
    return values


@torch.no_grad()
def record_values_(gm: fx.GraphModule, inputs: ExampleInputs) -> Any:
    """Run ``gm`` once on ``inputs`` and store a ``ValueInfo`` on every tensor node;
    returns the output."""
    was_training = gm.training
    gm.eval()
    try:
        return _Recorder(gm).run(*_flat(inputs, gm))
    finally:
        gm.train(was_training)


def value_of(node: Any) -> ValueInfo | None:
    """The recorded value of ``node`` (None for constants and non-tensor values)."""
    if not isinstance(node, fx.Node):
        return None
    return node.meta.get(META)


def is_float_node(node: Any) -> bool:
    """Whether ``node`` carries a floating-point tensor (what activation quantizers take)."""
    info = value_of(node)
    return info is not None and info.is_float


def _layer_macs(module: nn.Module, args: tuple[Any, ...], out: Any) -> int:
    """MACs of one call of a conv, linear or multi-head attention module."""
    y = out[0] if isinstance(out, tuple) else out
    if not isinstance(y, Tensor):
        return 0
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return args[0].numel() * math.prod(module.weight.shape[1:])
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        return y.numel() * math.prod(module.weight.shape[1:])
    if isinstance(module, nn.MultiheadAttention) and len(args) >= 2:
        q, k, e = args[0], args[1], module.embed_dim
        batch = 1 if q.dim() == 2 else q.shape[0 if module.batch_first else 1]
        tokens_q, tokens_k = q.numel() // e, k.numel() // e
        # q, k, v projections, then softmax(q k^T) v per sequence (out_proj is a Linear)
        return (tokens_q + 2 * tokens_k) * e * e + 2 * tokens_q * (tokens_k // batch) * e
    return 0


@torch.no_grad()
def module_macs(model: nn.Module, names: list[str], inputs: ExampleInputs) -> dict[str, int]:
    """MACs of one forward of each named submodule (its convs, linears and attentions,
    counted by hooks during one forward of ``model`` on ``inputs``)."""
    if not names:
        return {}
    per_module: dict[int, int] = {}
    handles = []
    for m in model.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention)):
            def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
                per_module[id(mod)] = per_module.get(id(mod), 0) + _layer_macs(mod, args, out)
            handles.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        inputs.call(model)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    result = {}
    for name in names:
        sub = model.get_submodule(name)
        result[name] = sum(per_module.get(id(m), 0) for m in {id(m): m for m in sub.modules()}.values())
    return result
