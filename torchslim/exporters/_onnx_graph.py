"""Small helpers for editing an ONNX graph in place: who produces and who consumes a
tensor, constant lookups, fresh names, dead-code removal. Private to the exporters."""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper


class GraphIndex:
    """Producers, consumers and constants of ``graph``; rebuild it after structural edits."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
        self.initializers = {init.name: init for init in graph.initializer}
        self._names = {n for node in graph.node for n in (*node.input, *node.output)}
        self._names |= set(self.initializers) | {node.name for node in graph.node}
        self._names |= {v.name for v in (*graph.input, *graph.output)}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` when it is an initializer or a Constant node's output,
        possibly behind Identity nodes (the exporter's de-duplication of equal tensors)."""
        node = self.producer.get(name)
        while node is not None and node.op_type == "Identity":
            name = node.input[0]
            node = self.producer.get(name)
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def fresh(self, base: str) -> str:
        """A tensor / node name not used anywhere in the graph yet."""
        name, i = base, 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        init = numpy_helper.from_array(value, name)
        self.graph.initializer.append(init)
        self.initializers[name] = init
        return name


def attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(onnx.helper.get_attribute_value(attr))
    return default


def constants_to_initializers_(graph: onnx.GraphProto) -> None:
    """Turn ``Constant`` nodes holding a tensor into initializers (quantization parameters
    are then where every QDQ consumer, ONNX Runtime's fusions included, looks first)."""
    keep = []
    for node in graph.node:
        value = [a for a in node.attribute if a.name == "value"]
        if node.op_type == "Constant" and len(value) == 1 and len(node.attribute) == 1:
            init = onnx.TensorProto()
            init.CopyFrom(value[0].t)
            init.name = node.output[0]
            graph.initializer.append(init)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def remove_dead(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs reach no graph output, then unused initializers."""
    live = {v.name for v in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(list(graph.node)):
        if any(out in live for out in node.output):
            keep.append(node)
            live.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    used = live | {v.name for v in graph.input}
    inits = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    infos = [v for v in graph.value_info if v.name in used]
    del graph.value_info[:]
    graph.value_info.extend(infos)


# --- QDQ rewrites --------------------------------------------------------------------

_WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
# Ops that only move or select values: a quantized input gives a quantized output on the
# same grid, so a Q/DQ pair after them is exact.
_PASSTHROUGH_OPS = ("MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze")
_INT32_MAX = 2 ** 31 - 1


def digest(a: np.ndarray) -> tuple[tuple[int, ...], bytes]:
    return a.shape, hashlib.sha1(np.ascontiguousarray(a, dtype=np.float32).tobytes()).digest()


def rewrite_weights_(model: onnx.ModelProto, baked: list) -> tuple[set[str], int]:
    """Store each baked weight as int8 + DequantizeLinear and the matching biases as int32
    + DequantizeLinear. ``baked`` holds ``qdq.BakedWeight`` records, found again by value
    (the exporter renames and de-duplicates initializers). Returns the module names whose
    weights were found and the number of biases quantized."""
    graph = model.graph
    constants_to_initializers_(graph)
    _requantize_passthrough_(graph)
    index = GraphIndex(graph)
    lookup: dict[tuple, tuple[object, bool]] = {}
    same: dict[tuple, list[str]] = defaultdict(list)  # equal weights reach the graph once
    for b in baked:
        w = b.dequantized()
        lookup.setdefault(digest(w), (b, False))
        same[digest(w)].append(b.module)
        if w.ndim == 2:
            lookup.setdefault(digest(w.T), (b, True))
    new_nodes: list[onnx.NodeProto] = []
    done: dict[str, tuple[str, np.ndarray, int]] = {}  # float initializer -> (dq out, scale, axis)
    found: set[str] = set()
    biases = 0
    for node in graph.node:
        if node.op_type not in _WEIGHT_OPS or len(node.input) < 2:
            continue
        name = node.input[1]
        if name not in done:
            value = index.constant(name)
            float_weight = value is not None and value.dtype == np.float32
            hit = lookup.get(digest(value)) if float_weight else None
            if hit is None:
                continue
            b, transposed = hit
            q = b.q.T if transposed else b.q
            axis = (1 - b.axis) if transposed else b.axis
            done[name] = (_add_weight_dq(index, new_nodes, name, q, b, axis), b.scale, axis)
            found.update(same[digest(b.dequantized())])
        dq_out, w_scale, axis = done[name]
        node.input[1] = dq_out
        if (_out_axis(node, axis) and _runs_integer(index, node)
                and _quantize_bias(index, new_nodes, node, w_scale)):
            biases += 1
    # The new DequantizeLinear nodes read only initializers: put them first (topological).
    nodes = new_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    remove_dead(graph)
    return found, biases


def _out_axis(node: onnx.NodeProto, axis: int) -> bool:
    """Whether the weight's per-channel axis is the layer's output-channel axis (the only
    case in which a per-channel bias scale lines up with the bias)."""
    if node.op_type == "Conv":
        return axis == 0
    if node.op_type == "Gemm":
        return axis == (0 if attribute(node, "transB", 0) else 1)
    return False


def _runs_integer(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """Whether ONNX Runtime can run ``node`` as an integer kernel, so that an INT32 bias
    is what it computes with anyway: a Gemm (QGemm may output float), or a Conv whose
    output is requantized right away (QLinearConv), possibly after a Relu / Clip that the
    requantization absorbs. Elsewhere the bias stays float: rounding it to the int32 grid
    would only move the float result away from the fake-quant model's."""
    if node.op_type == "Gemm":
        return True
    users = index.consumers.get(node.output[0], [])
    if len(users) == 1 and users[0].op_type in ("Relu", "Clip"):
        users = index.consumers.get(users[0].output[0], [])
    return bool(users) and all(u.op_type == "QuantizeLinear" for u in users)


def _add_weight_dq(index: GraphIndex, new_nodes: list[onnx.NodeProto], name: str,
                   q: np.ndarray, b: object, axis: int) -> str:
    q_name = index.add_initializer(f"{name}_quantized", np.ascontiguousarray(q))
    s_name = index.add_initializer(f"{name}_scale", b.scale.astype(np.float32))
    z_name = index.add_initializer(f"{name}_zero_point", b.zero_point.astype(q.dtype))
    out = index.fresh(f"{name}_dequantized")
    attrs = {"axis": axis} if b.scale.ndim == 1 else {}
    new_nodes.append(onnx.helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [out],
                                           name=index.fresh(f"{name}_DequantizeLinear"), **attrs))
    return out


def _quantize_bias(index: GraphIndex, new_nodes: list[onnx.NodeProto], node: onnx.NodeProto,
                   w_scale: np.ndarray) -> bool:
    """INT32 bias with scale ``x_scale * w_scale`` when the layer's input is dequantized."""
    if len(node.input) < 3 or not node.input[2]:
        return False
    bias = index.constant(node.input[2])
    x_scale = _dq_scale(index, node.input[0])
    if bias is None or bias.ndim != 1 or x_scale is None:
        return False
    scale = (np.float32(x_scale) * np.broadcast_to(w_scale, bias.shape)).astype(np.float32)
    q = np.round(bias.astype(np.float64) / scale.astype(np.float64))
    if np.abs(q).max(initial=0) > _INT32_MAX:
        return False  # a tiny weight scale: keep this bias in float rather than clip it
    name = node.input[2]
    q_name = index.add_initializer(f"{name}_quantized", q.astype(np.int32))
    s_name = index.add_initializer(f"{name}_scale", scale)
    z_name = index.add_initializer(f"{name}_zero_point", np.zeros(bias.shape, np.int32))
    out = index.fresh(f"{name}_dequantized")
    new_nodes.append(onnx.helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [out],
                                           name=index.fresh(f"{name}_DequantizeLinear"), axis=0))
    node.input[2] = out
    return True


def _dq_scale(index: GraphIndex, tensor: str) -> float | None:
    """The per-tensor scale of the DequantizeLinear producing ``tensor``, if any."""
    node = index.producer.get(tensor)
    if node is None or node.op_type != "DequantizeLinear":
        return None
    scale = index.constant(node.input[1])
    return float(scale) if scale is not None and scale.size == 1 else None


def _requantize_passthrough_(graph: onnx.GraphProto) -> None:
    """``DQ -> MaxPool -> Conv`` becomes ``DQ -> MaxPool -> Q -> DQ -> Conv`` (same grid),
    so that the layer after a pooling / reshaping op also reads a dequantized input."""
    index = GraphIndex(graph)
    outputs = {v.name for v in graph.output}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        nodes.append(node)
        if node.op_type not in _PASSTHROUGH_OPS:
            continue
        dq = index.producer.get(node.input[0])
        users = index.consumers.get(node.output[0], [])
        if (dq is None or dq.op_type != "DequantizeLinear" or not users
                or node.output[0] in outputs
                or all(u.op_type == "QuantizeLinear" for u in users)):
            continue
        scale_zp = list(dq.input[1:3])
        q_out = index.fresh(node.output[0] + "_quantized")
        dq_out = index.fresh(node.output[0] + "_dequantized")
        nodes.append(onnx.helper.make_node("QuantizeLinear", [node.output[0], *scale_zp], [q_out],
                                           name=index.fresh(node.name + "_QuantizeLinear")))
        nodes.append(onnx.helper.make_node("DequantizeLinear", [q_out, *scale_zp], [dq_out],
                                           name=index.fresh(node.name + "_DequantizeLinear")))
        for user in users:
            for i, inp in enumerate(user.input):
                if inp == node.output[0]:
                    user.input[i] = dq_out
        # A chain (MaxPool -> Flatten) sees the new DQ as the next op's producer.
        index.producer[dq_out] = nodes[-1]
        index.consumers[dq_out] = users
    del graph.node[:]
    graph.node.extend(nodes)
