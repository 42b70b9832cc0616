"""One form for every captured graph before quantization: layers are modules.

torch.export writes ``aten.conv2d(x, weight, bias, ...)`` with the weight as a ``get_attr``
node; fx writes the same for a Conv2d subclass it traced into, or for a functional
``F.conv2d`` / ``F.linear`` call. ``modulize_`` turns each such call whose weight is a
stored tensor into a ``call_module`` of a plain ``nn.Conv*d`` / ``nn.Linear`` holding the
SAME parameters (named after the weight: ``features.0.0.weight`` gives the layer
``features.0.0``), eval-mode batch norms into ``nn.BatchNorm*d`` modules and dropouts into
``nn.Dropout`` (so ``train()`` switches them, as QAT needs). After it, BN folding, the
Quant* swaps and sensitivity work on any captured graph as on an fx-traced one.

``decompose_silu_`` writes ``silu(x)`` as ``x * sigmoid(x)``: what both ONNX exporters emit
anyway, and what lets the gate (sigmoid) and the product (mul) each carry a quantizer, so
ONNX Runtime runs them as QLinearSigmoid and QLinearMul.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, fx, nn

from torchslim._record import carry_
from torchslim.capture.ops import op_kind, op_name
from torchslim.capture.values import META, value_of

__all__ = ["modulize_", "decompose_silu_"]

logger = logging.getLogger(__name__)

_CONV = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}  # weight rank -> module type
_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _tensor_attr(gm: fx.GraphModule, node: Any) -> Tensor | None:
    """The stored tensor a ``get_attr`` node reads, else None."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    value = _lookup(gm, str(node.target))
    return value if isinstance(value, Tensor) else None


def _lookup(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj


def _as_parameter(t: Tensor) -> nn.Parameter:
    return t if isinstance(t, nn.Parameter) else nn.Parameter(t, requires_grad=False)


def _pair(v: Any, n: int) -> tuple[int, ...] | str:
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v) if len(v) == n else tuple(int(v[0]) for _ in range(n))
    return tuple(int(v) for _ in range(n))


def _conv_module(node: fx.Node, weight: Tensor, bias: Tensor | None) -> nn.Module | None:
    """``nn.Conv*d`` computing ``node`` (an aten / functional conv), or None."""
    rank = weight.dim()
    if rank not in _CONV:
        return None
    dims = rank - 2
    stride, padding, dilation = (_arg(node, i, k, d) for i, k, d in
                                 ((3, "stride", 1), (4, "padding", 0), (5, "dilation", 1)))
    groups = _arg(node, 6, "groups", 1)
    if op_name(node) in ("convolution", "_convolution"):  # (..., transposed, out_pad, groups)
        groups = _arg(node, 8, "groups", 1)
    if not all(isinstance(v, (int, list, tuple, str)) for v in (stride, padding, dilation, groups)):
        return None  # a computed (symbolic) padding: keep the op as it is
    try:
        conv = _CONV[rank](weight.shape[1] * int(groups), weight.shape[0], tuple(weight.shape[2:]),
                           stride=_pair(stride, dims), padding=_pair(padding, dims),
                           dilation=_pair(dilation, dims), groups=int(groups),
                           bias=bias is not None, device="meta")
    except (TypeError, ValueError):
        return None
    conv.weight = _as_parameter(weight)
    conv.bias = _as_parameter(bias) if bias is not None else None
    return conv


def _linear_module(weight: Tensor, bias: Tensor | None) -> nn.Module | None:
    if weight.dim() != 2:
        return None
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = _as_parameter(weight)
    linear.bias = _as_parameter(bias) if bias is not None else None
    return linear


def _bn_module(gm: fx.GraphModule, node: fx.Node) -> tuple[nn.Module, fx.Node] | None:
    """``(nn.BatchNorm*d, the node holding its running mean)`` for an eval-mode batch norm."""
    aten = node.op == "call_function" and hasattr(node.target, "_opname")
    # aten.batch_norm(x, w, b, mean, var, training, momentum, eps, cudnn);
    # F.batch_norm(x, mean, var, w, b, training, momentum, eps)
    order = (1, 2, 3, 4) if aten else (3, 4, 1, 2)
    w, b, mean, var = (node.args[i] if len(node.args) > i else None for i in order)
    training = node.args[5] if len(node.args) > 5 else node.kwargs.get("training", False)
    momentum = node.args[6] if len(node.args) > 6 else node.kwargs.get("momentum", 0.1)
    eps = node.args[7] if len(node.args) > 7 else node.kwargs.get("eps", 1e-5)
    tensors = [_tensor_attr(gm, a) if a is not None else None for a in (w, b, mean, var)]
    x = value_of(node.args[0]) if node.args else None
    if training or tensors[2] is None or tensors[3] is None or x is None or len(x.shape) not in _BN:
        return None
    bn = _BN[len(x.shape)](tensors[2].shape[0], eps=float(eps), momentum=momentum,
                           affine=tensors[0] is not None, device="meta")
    if tensors[0] is not None:
        bn.weight = _as_parameter(tensors[0])
        bn.bias = _as_parameter(tensors[1]) if tensors[1] is not None else nn.Parameter(
            torch.zeros_like(tensors[0]), requires_grad=False)
    bn.running_mean, bn.running_var = tensors[2], tensors[3]
    bn.num_batches_tracked = torch.zeros((), dtype=torch.long, device=tensors[2].device)
    bn.eval()
    return bn, mean  # type: ignore[return-value]


class _Names:
    """Module names for new modules: the weight's owner when free, else a fresh one."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.made: set[str] = set()
        self.called = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}

    def place(self, base: str, module: nn.Module) -> str | None:
        """The name ``module`` now lives at, or None when its owner cannot give way."""
        name, i = base or "layer", 1
        while name in self.made or self._taken(name):
            name, i = f"{base or 'layer'}_{i}", i + 1
        if not self._install(name, module):
            return None
        self.made.add(name)
        return name

    def _taken(self, name: str) -> bool:
        """Free: nothing lives there, or a module no node calls (torch.export's holders of
        tensors, or the subclass fx traced into), which gives way to the new module."""
        if name in self.called:
            return True
        current = _lookup(self.gm, name)
        return current is not None and not isinstance(current, nn.Module) or \
            isinstance(current, fx.GraphModule)

    def _install(self, name: str, module: nn.Module) -> bool:
        """Put ``module`` at ``name``, moving over whatever the old holder held (other
        nodes may still read those tensors by their path); False on a clash."""
        parent_name, _, child = name.rpartition(".")
        parent = self.gm.get_submodule(parent_name) if parent_name else self.gm
        old = getattr(parent, child, None)
        if isinstance(old, nn.Module):
            for store in ("_parameters", "_buffers", "_modules"):
                mine = getattr(module, store)
                for key, value in getattr(old, store).items():
                    if key not in mine:
                        mine[key] = value
                    elif mine[key] is None and value is not None:
                        return False  # e.g. a bias this call does not use, read elsewhere
        setattr(parent, child, module)
        return True


def _owner(node: Any, suffix: str) -> str:
    """``a.b`` for a ``get_attr`` of ``a.b.weight`` (``a.b.in_proj`` for ``in_proj_weight``)."""
    target = str(node.target)
    for tail in (f".{suffix}", f"_{suffix}"):
        if target.endswith(tail):
            return target[: -len(tail)]
    return target.replace(".", "_")


def modulize_(gm: fx.GraphModule, owners: dict[int, nn.Module] | None = None) -> int:
    """Turn layer calls on stored weights into module calls, in place; returns how many.

    ``owners`` maps ``id(weight)`` to the model's module that held it: the new module
    takes over that module's record (a pruning mask stays marked)."""
    owners = owners or {}
    names = _Names(gm)
    made: dict[tuple, str] = {}  # (kind, weight id, conv args) -> module name, for reuse
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        kind = op_kind(gm, node)
        module, base, key, inputs = _module_for(gm, node, kind)
        if module is None:
            continue
        owner = owners.get(id(getattr(module, "weight", None)))
        if owner is not None:
            carry_(owner, module)
        name = made.get(key) or names.place(base, module)
        if name is None:
            continue
        made[key] = name
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(name, inputs)
        call.meta.update(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        count += 1
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return count


def _module_for(gm: fx.GraphModule, node: fx.Node, kind: str
                ) -> tuple[nn.Module | None, str, tuple, tuple]:
    """``(module, name base, reuse key, call args)`` for a node ``modulize_`` rewrites."""
    none: tuple[None, str, tuple, tuple] = (None, "", (), ())
    if kind in ("conv", "linear") and len(node.args) >= 2:
        weight = _tensor_attr(gm, node.args[1])
        bias_node = _arg(node, 2, "bias", None)
        bias = _tensor_attr(gm, bias_node) if bias_node is not None else None
        if weight is None or (bias_node is not None and bias is None):
            return none  # a weight (or bias) computed in forward: not a layer
        module = (_conv_module(node, weight, bias) if kind == "conv"
                  else _linear_module(weight, bias))
        key = (kind, id(weight), id(bias), tuple(map(str, node.args[3:])), str(node.kwargs))
        return module, _owner(node.args[1], "weight"), key, (node.args[0],)
    if kind == "batch_norm":
        found = _bn_module(gm, node)
        if found is None:
            return none
        bn, mean = found
        return bn, _owner(mean, "running_mean"), ("bn", node.name), (node.args[0],)
    if kind == "dropout" and node.args:
        p = _arg(node, 1, "p", 0.5)
        if not isinstance(p, (int, float)):
            return none
        return nn.Dropout(float(p)), f"{node.name}_module", ("dropout", node.name), (node.args[0],)
    return none


def decompose_silu_(gm: fx.GraphModule) -> int:
    """``silu(x)`` -> ``x * sigmoid(x)`` (functional, method or ``nn.SiLU``), in place."""
    count = 0
    for node in list(gm.graph.nodes):
        if op_kind(gm, node) != "silu" or not node.args:
            continue
        x = node.args[0]
        with gm.graph.inserting_before(node):
            gate = gm.graph.call_function(torch.ops.aten.sigmoid.default, (x,))
            product = gm.graph.call_function(torch.ops.aten.mul.Tensor, (x, gate))
        for new in (gate, product):
            if META in node.meta:
                new.meta[META] = node.meta[META]
            new.meta["nn_module_stack"] = node.meta.get("nn_module_stack", {})
        node.replace_all_uses_with(product)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return count
