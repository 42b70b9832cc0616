"""Where activation quantizers go: ONNX Runtime's QDQ patterns, matched by op kind
(``torchslim.capture.ops``) on a captured graph.

ONNX Runtime (x86) runs an op on integers when every float input comes out of a
DequantizeLinear and its output goes into a QuantizeLinear: Conv (QLinearConv, a ReLU /
Clip before the Q folded in), Gemm (QGemm, float output allowed), MatMul (QLinearMatMul,
or MatMulIntegerToFloat), Add / Mul (QLinearAdd / QLinearMul), Concat (QLinearConcat),
AveragePool / GlobalAveragePool and Sigmoid (QLinear* of the com.microsoft domain).
So quantizers go

(a) on each floating-point model input (integer inputs, e.g. token ids, never);
(b) on the output of each quantized conv / linear, after its ReLU / ReLU6 / hardtanh /
    clamp(0, .) when that activation is the only consumer;
(c) on the output of each add, mul or concatenation of float tensors (after a
    sole-consumer ReLU for an add), of average pooling (and ``mean`` over all spatial
    dims with keepdim, which the exporter writes as GlobalAveragePool), of a matmul / bmm
    of two activations, and of a sigmoid / hard-sigmoid gate (the SE block's
    ``x * sigmoid(s)`` and SiLU's ``x * sigmoid(x)`` become QLinearSigmoid + QLinearMul);
(d) on every input of those integer ops that has none yet, once per tensor, right after
    its producer.

Max-pool, reshapes, transposes, slicing, dropout and zero padding keep their input's grid
(``pass`` ops) and get no quantizer. A quantizer is then dropped when nothing reads it as
an integer op does (repeated until nothing changes): an add whose sum only feeds a
LayerNorm runs in float, and so its inputs need no quantizers either; the logits stay
float. Two exceptions, both because ONNX Runtime fuses only exact patterns: a conv's
output quantizer is always kept (QLinearConv needs the Q after it, even when a float
``ReduceMean`` reads it), and a zero ``Pad`` right before a layer gets a quantizer of its
own (DQ -> Pad -> Conv does not fuse). Nodes inside a skipped submodule get no quantizer at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import fx

from torchslim.capture.ops import op_kind
from torchslim.capture.values import is_float_node, value_of
from torchslim.quant.config import LayerPlan, QuantConfig
from torchslim.quant.fake_quant import FakeQuantize

__all__ = ["Placement", "place_quantizers", "role", "INTEGER_ROLES", "quantized_inputs",
           "integer_nodes"]

# roles that run as integer kernels when their inputs (and, but for layers and matmuls,
# their output) are quantized
INTEGER_ROLES = ("layer", "add", "mul", "cat", "pool", "gate", "matmul")
_OUTPUT_RULES = {"add": "add", "mul": "mul", "cat": "cat", "pool": "pool", "gate": "gate",
                 "matmul": "matmul"}
_NEEDS_OUTPUT = ("add", "mul", "cat", "pool", "gate")  # float unless their result is quantized


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    """The float tensor arguments of an elementwise / matmul / cat node."""
    if node.args and isinstance(node.args[0], (list, tuple)):  # cat([a, b, ...], dim)
        items = list(node.args[0])
    else:
        items = list(node.args[:2])
    return [a for a in items if isinstance(a, fx.Node) and is_float_node(a)]


def _is_spatial_mean(node: fx.Node) -> bool:
    """``x.mean(dims, keepdim=True)`` over every dim after the channels (a global pool)."""
    x = value_of(node.args[0]) if node.args else None
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if x is None or not keep or len(x.shape) < 3 or not isinstance(dims, (list, tuple)):
        return False
    rank = len(x.shape)
    return sorted(int(d) % rank for d in dims) == list(range(2, rank))


def role(gm: fx.GraphModule, node: fx.Node, plans: dict[str, LayerPlan],
         in_skip: Callable[[fx.Node], bool]) -> str:
    """The node's part in the placement: layer, float_layer, fusable, add, mul, cat,
    pool, gate, matmul, pass, placeholder, skipped, quantizer or other."""
    if node.op == "placeholder":
        return "placeholder" if is_float_node(node) else "other"
    if node.op == "call_module":
        target = str(node.target)
        if target in plans:
            return "layer" if plans[target].weight is not None else "float_layer"
        if isinstance(gm.get_submodule(target), FakeQuantize):
            return "quantizer"
    if node.op not in ("call_module", "call_function", "call_method"):
        return "other"
    if in_skip(node):
        return "skipped"
    kind = op_kind(gm, node)
    if kind in ("pass", "dropout", "pad"):
        return "pass" if is_float_node(node) else "other"
    if kind == "relu":
        return "fusable"
    if not is_float_node(node):
        return "other"
    args = _tensor_args(node)
    if kind in ("add", "mul", "matmul") and len(args) == 2:
        return kind
    if kind == "cat" and len(args) >= 2 and len(args) == len(node.args[0]):
        return "cat"
    if kind == "avg_pool" or (kind == "mean" and _is_spatial_mean(node)):
        return "pool"
    if kind in ("sigmoid", "hardsigmoid"):
        return "gate"
    return "other"


def _is_conv(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether a layer node is a convolution (a weight of more than two dims)."""
    weight = getattr(gm.get_submodule(str(node.target)), "weight", None)
    return weight is not None and weight.dim() > 2


def _consumed(node: fx.Node, r: str) -> list[Any]:
    """The inputs an integer op of role ``r`` reads quantized."""
    if r == "layer":
        return list(node.args[:1])
    if r in ("pool", "gate"):
        return list(node.args[:1])
    return _tensor_args(node)


class Placement:
    """Adds FakeQuantize modules to one captured graph and remembers each one's rule."""

    def __init__(self, gm: fx.GraphModule, config: QuantConfig, plans: dict[str, LayerPlan],
                 in_skip: Callable[[fx.Node], bool]) -> None:
        self.gm, self.config, self.plans, self.in_skip = gm, config, plans, in_skip
        self.rules: dict[str, str] = {}  # quantizer module name -> rule
        # output quantizers of convs: kept even when no integer op reads them, since ONNX
        # Runtime fuses DQ -> Conv -> Q into QLinearConv only with the Q there (a conv
        # before a float ReduceMean would otherwise run in float while counted as INT8)
        self.kept: set[str] = set()

    def role(self, node: fx.Node) -> str:
        return role(self.gm, node, self.plans, self.in_skip)

    def _new(self, base: str, rule: str, spec: Any) -> str:
        name, i = f"{base}_act_fq", 1
        while hasattr(self.gm, name):
            name, i = f"{base}_act_fq{i}", i + 1
        self.gm.add_submodule(name, FakeQuantize(spec, observer=self.config.activation_observer,
                                                 **self.config.activation_observer_kwargs))
        self.rules[name] = rule
        return name

    def after(self, node: fx.Node, rule: str, spec: Any = None) -> fx.Node:
        name = self._new(node.name, rule, spec or self.config.activation)
        with self.gm.graph.inserting_after(node):
            fq = self.gm.graph.call_module(name, (node,))
        fq.meta.update({k: v for k, v in node.meta.items() if k != "nn_module_stack"})
        node.replace_all_uses_with(fq, delete_user_cb=lambda user: user is not fq)
        return fq

    def remove(self, fq: fx.Node) -> None:
        fq.replace_all_uses_with(fq.args[0])  # type: ignore[arg-type]
        self.gm.graph.erase_node(fq)
        self.gm.delete_submodule(str(fq.target))
        del self.rules[str(fq.target)]

    def is_fq(self, node: Any) -> bool:
        return isinstance(node, fx.Node) and node.op == "call_module" and \
            str(node.target) in self.rules

    def source(self, node: fx.Node) -> fx.Node:
        """Walk back through grid-preserving ops (max-pool, flatten, view, pad, ...)."""
        while self.role(node) == "pass" and node.args and isinstance(node.args[0], fx.Node):
            node = node.args[0]
        return node

    def fused_end(self, node: fx.Node) -> fx.Node:
        """``node``'s sole-consumer ReLU-like activation if any, else ``node`` itself."""
        users = list(node.users)
        if len(users) == 1 and self.role(users[0]) == "fusable" and is_float_node(users[0]):
            return users[0]
        return node


def _quantize_outputs(p: Placement, nodes: list[fx.Node], roles: dict[fx.Node, str]) -> None:
    """Rules (a) to (c)."""
    for node in nodes:
        r = roles[node]
        if r == "placeholder":
            p.after(node, "input")
        elif r == "layer":
            fq = p.after(p.fused_end(node), "output", p.plans[str(node.target)].activation)
            if _is_conv(p.gm, node):
                p.kept.add(str(fq.target))
        elif r in _OUTPUT_RULES:
            p.after(p.fused_end(node) if r == "add" else node, _OUTPUT_RULES[r])


def _quantize_inputs(p: Placement, nodes: list[fx.Node], roles: dict[fx.Node, str]) -> None:
    """Rule (d): one quantizer per tensor, after its producer, however many integer ops
    read it."""
    for node in nodes:
        r = roles[node]
        if r not in INTEGER_ROLES:
            continue
        for arg in _consumed(node, r):
            if not (isinstance(arg, fx.Node) and is_float_node(arg)):
                continue
            if not p.is_fq(p.source(arg)):
                p.after(arg, "matmul_input" if r == "matmul" else "input_of")
            elif r == "layer" and op_kind(p.gm, arg) == "pad":
                # DQ -> Pad -> Conv is not a pattern ORT fuses: quantize the padded tensor too
                p.after(arg, "input_of")


def _integer_reader(p: Placement, user: fx.Node) -> bool:
    """Whether ``user`` reads its input as an integer op (through pass ops)."""
    r = p.role(user)
    if r == "pass":
        return any(_integer_reader(p, u) for u in user.users)
    if r in ("layer", "matmul"):
        return True
    if r in _NEEDS_OUTPUT:  # an integer op only while its own result is quantized
        end = p.fused_end(user) if r == "add" else user
        return any(p.is_fq(u) for u in end.users)
    return False


def _drop_unread(p: Placement) -> None:
    """Remove quantizers no integer op reads, until none is left to remove."""
    changed = True
    while changed:
        changed = False
        for node in list(p.gm.graph.nodes):
            if p.is_fq(node) and str(node.target) not in p.kept and \
                    not any(_integer_reader(p, u) for u in node.users):
                p.remove(node)
                changed = True


def place_quantizers(gm: fx.GraphModule, config: QuantConfig, plans: dict[str, LayerPlan],
                     in_skip: Callable[[fx.Node], bool]) -> Placement:
    """Insert the activation quantizers of the module docstring into ``gm``, in place."""
    p = Placement(gm, config, plans, in_skip)
    nodes = list(gm.graph.nodes)
    roles = {n: p.role(n) for n in nodes}
    _quantize_outputs(p, nodes, roles)
    _quantize_inputs(p, nodes, roles)
    _drop_unread(p)
    return p


def quantized_inputs(p: Placement, node: fx.Node) -> list[str]:
    """Names of the quantizers feeding ``node``'s integer inputs (for sensitivity)."""
    r = p.role(node)
    names = []
    for arg in _consumed(node, r) if r in INTEGER_ROLES else ():
        if isinstance(arg, fx.Node):
            src = p.source(arg)
            if p.is_fq(src):
                names.append(str(src.target))
    return names


def integer_nodes(p: Placement, nodes: Iterable[fx.Node]) -> dict[fx.Node, bool]:
    """For each integer-pattern node: whether it will run on integers (every consumed
    input quantized and, for ops that need it, its output too)."""
    result = {}
    for node in nodes:
        r = p.role(node)
        if r not in INTEGER_ROLES:
            continue
        inputs = [a for a in _consumed(node, r) if isinstance(a, fx.Node)]
        quantized_in = bool(inputs) and all(p.is_fq(p.source(a)) for a in inputs)
        if r in _NEEDS_OUTPUT:
            end = p.fused_end(node) if r == "add" else node
            quantized_in = quantized_in and any(p.is_fq(u) for u in end.users)
        result[node] = quantized_in
    return result
