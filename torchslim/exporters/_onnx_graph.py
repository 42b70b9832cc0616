"""Small helpers for editing an ONNX graph in place: who produces and who consumes a
tensor, constant lookups, fresh names, dead-code removal. Private to the exporters."""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

logger = logging.getLogger(__name__)


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


MS_DOMAIN = "com.microsoft"   # ONNX Runtime's contrib ops (MatMulNBits, DynamicQuantizeLinear...)


def use_ms_domain_(model: onnx.ModelProto) -> None:
    """Declare the ``com.microsoft`` opset once, for a graph that now uses its ops."""
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))


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
_INT32_MIN, _INT32_MAX = -2 ** 31, 2 ** 31 - 1


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
    done: dict[str, tuple[str, object, int]] = {}  # float initializer -> (dq out, baked, axis)
    found: set[str] = set()
    biases, moved = 0, []
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
            done[name] = (_add_weight_dq(index, new_nodes, name, q, b, axis), b, axis)
            found.update(same[digest(b.dequantized())])
        dq_out, b, axis = done[name]
        node.input[1] = dq_out
        shift = _quantize_bias(index, new_nodes, node, b.scale) if _out_axis(node, axis) else None
        if shift is not None:
            biases += 1
            if shift > 1e-3 and not b.bias_on_grid:
                moved.append(b.module)
    if moved:
        logger.warning("the fake-quant model adds the float biases of %s, which an int8 runtime "
                       "rounds to the int32 grid input_scale * weight_scale: its outputs will "
                       "differ from the artifact's; link those layers to their input quantizers "
                       "(torchslim.quant.bias_grid.link_input_quantizers_, which prepare calls)",
                       ", ".join(moved))
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
                   w_scale: np.ndarray) -> float | None:
    """INT32 bias with scale ``x_scale * w_scale`` when the layer's input is dequantized,
    whether ONNX Runtime then fuses the layer into an integer kernel or not: its
    WeightBiasQuantization pass rounds such a bias to this grid in any case, and the
    fake-quant layers add theirs on it (``torchslim.quant.bias_grid``). Values beyond int32
    saturate, as there. Returns how far the rounding moved the bias, in steps of the grid
    (0 for a bias the torch model already put on it), or None when it stays float."""
    if len(node.input) < 3 or not node.input[2]:
        return None
    bias = index.constant(node.input[2])
    x_scale = _dq_scale(index, node.input[0])
    if bias is None or bias.ndim != 1 or x_scale is None:
        return None
    scale = (np.float32(x_scale) * np.broadcast_to(w_scale, bias.shape)).astype(np.float32)
    exact = bias.astype(np.float64) / scale.astype(np.float64)
    q = np.clip(np.round(exact), _INT32_MIN, _INT32_MAX)
    name = node.input[2]
    q_name = index.add_initializer(f"{name}_quantized", q.astype(np.int32))
    s_name = index.add_initializer(f"{name}_scale", scale)
    z_name = index.add_initializer(f"{name}_zero_point", np.zeros(bias.shape, np.int32))
    out = index.fresh(f"{name}_dequantized")
    new_nodes.append(onnx.helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [out],
                                           name=index.fresh(f"{name}_DequantizeLinear"), axis=0))
    node.input[2] = out
    return float(np.abs(q - exact).max(initial=0.0))


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


# --- clean-up shared by every writer --------------------------------------------------


def clean_up_(model: onnx.ModelProto) -> None:
    """Constants as initializers, zero Pads folded into the Conv after them, a ReduceMean
    over every spatial axis as GlobalAveragePool (which ONNX Runtime runs on integers), and
    no per-node exporter metadata (stack traces: half of a small model's file)."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    constants_to_initializers_(model.graph)
    fold_pads_(model.graph)
    reduce_mean_to_global_pool_(model)


def _set_ints(node: onnx.NodeProto, name: str, values: list[int]) -> None:
    keep = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(keep)
    node.attribute.append(onnx.helper.make_attribute(name, values))


def _ints(node: onnx.NodeProto, name: str) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == name:
            return [int(v) for v in onnx.helper.get_attribute_value(attr)]
    return None


def _zero_pad_amounts(index: GraphIndex, node: onnx.NodeProto) -> list[int] | None:
    """The pads of a constant-zero Pad that touches only the spatial axes, else None."""
    mode = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"),
                b"constant")
    if mode not in (b"constant", "constant") or len(node.input) < 2:
        return None
    pads = index.constant(node.input[1])
    value = index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    has_axes = len(node.input) > 3 and bool(node.input[3])
    if pads is None or has_axes or (value is not None and np.any(value != 0)):
        return None
    pads = [int(p) for p in pads.reshape(-1)]
    rank = len(pads) // 2
    if rank < 3 or min(pads) < 0 or any(pads[i] or pads[rank + i] for i in (0, 1)):
        return None
    return pads


def fold_pads_(graph: onnx.GraphProto) -> int:
    """``Pad(x, zeros on H / W) -> Conv`` becomes one Conv with the extra pads (what the
    TorchScript exporter leaves of a "same"-padding conv); returns how many."""
    index = GraphIndex(graph)
    outputs = {v.name for v in graph.output}
    dropped = []
    for node in graph.node:
        if node.op_type != "Pad" or node.output[0] in outputs:
            continue
        pads = _zero_pad_amounts(index, node)
        users = index.consumers.get(node.output[0], [])
        if pads is None or not users or any(
                u.op_type != "Conv" or u.input[0] != node.output[0] or
                attribute_str(u, "auto_pad", "NOTSET") != "NOTSET" for u in users):
            continue
        rank = len(pads) // 2
        extra = pads[2:rank] + pads[rank + 2:]  # [h_begin, w_begin, h_end, w_end]
        for conv in users:
            current = _ints(conv, "pads") or [0] * len(extra)
            _set_ints(conv, "pads", [a + b for a, b in zip(current, extra)])
            conv.input[0] = node.input[0]
        dropped.append(node)
    for node in dropped:
        graph.node.remove(node)
    return len(dropped)


def attribute_str(node: onnx.NodeProto, name: str, default: str) -> str:
    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else str(value)
    return default


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every tensor whose shape ONNX shape inference knows."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # shape inference gives up on some graphs: then nothing is known
        return {}
    ranks = {}
    for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        if v.type.tensor_type.HasField("shape"):
            ranks[v.name] = len(v.type.tensor_type.shape.dim)
    return ranks


def reduce_mean_to_global_pool_(model: onnx.ModelProto) -> int:
    """``ReduceMean(x, axes = every axis after the channels, keepdims=1)`` becomes
    ``GlobalAveragePool(x)`` (the dynamo exporter writes adaptive_avg_pool2d(x, 1) as a
    ReduceMean); returns how many."""
    graph = model.graph
    if not any(n.op_type == "ReduceMean" for n in graph.node):
        return 0
    index, ranks = GraphIndex(graph), _ranks(model)
    count = 0
    for i, node in enumerate(graph.node):
        if node.op_type != "ReduceMean" or attribute(node, "keepdims", 1) != 1:
            continue
        rank = ranks.get(node.input[0])
        axes = _ints(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            found = index.constant(node.input[1])
            axes = [int(a) for a in found.reshape(-1)] if found is not None else None
        if rank is None or rank < 3 or axes is None or \
                sorted(a % rank for a in axes) != list(range(2, rank)):
            continue
        graph.node[i].CopyFrom(onnx.helper.make_node(
            "GlobalAveragePool", [node.input[0]], list(node.output), name=node.name))
        count += 1
    if count:
        remove_dead(graph)
    return count


def drop_requantize_pairs_(graph: onnx.GraphProto) -> int:
    """A DequantizeLinear read by a QuantizeLinear with the same scale and zero point is a
    round trip through float that changes nothing: the Q's readers take the DQ's integer
    input instead. Returns how many Q nodes went."""
    index = GraphIndex(graph)
    outputs = {v.name for v in graph.output}
    rename: dict[str, str] = {}
    dropped = []
    for dq in graph.node:
        if dq.op_type != "DequantizeLinear":
            continue
        for q in index.consumers.get(dq.output[0], []):
            if q.op_type == "QuantizeLinear" and q.output[0] not in outputs and \
                    _same_qparams(index, dq, q):
                rename[q.output[0]] = dq.input[0]
                dropped.append(q)
    for q in dropped:
        graph.node.remove(q)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    remove_dead(graph)
    return len(dropped)


def _same_qparams(index: GraphIndex, dq: onnx.NodeProto, q: onnx.NodeProto) -> bool:
    if attribute(dq, "axis", 1) != attribute(q, "axis", 1) or len(q.input) < 3 or len(dq.input) < 3:
        return False
    values = [index.constant(n) for n in (dq.input[1], q.input[1], dq.input[2], q.input[2])]
    if any(v is None for v in values):
        return False
    s1, s2, z1, z2 = values
    return s1.shape == s2.shape and np.array_equal(s1, s2) and z1.dtype == z2.dtype and \
        np.array_equal(z1, z2)
