"""Hard gates on integers: HardSigmoid and HardSwish as ops ONNX Runtime runs in INT8.

ONNX Runtime has integer kernels for Add and Mul (QLinearAdd, QLinearMul) but none for
HardSigmoid or HardSwish: between their DequantizeLinear and QuantizeLinear they run in
float, with a DQ and a Q pass around each (a third of MobileNetV3-Large's INT8 time).

``hardsigmoid(x) = clip(alpha * x + beta, 0, 1) = alpha * clip(x + beta / alpha, 0, 1 / alpha)``:

* ``DQ(x) -> HardSigmoid -> Q(s, 0)`` becomes ``DQ(x), DQ(beta / alpha) -> Add ->
  Q(s / alpha, 0)``: the stored integers are ``round((alpha * x + beta) / s)`` as before,
  and the u8 range is the clip, exactly when the output grid ends at 1 (``255 * s <= 1``,
  which min-max calibration of an output in [0, 1] gives);
* ``DQ(x) -> HardSwish -> Q`` becomes ``x * hardsigmoid(x)``: the Add above into a u8
  grid of step ``1 / (255 * alpha)`` over ``[0, 1 / alpha]``, read back by a DQ of step
  ``1 / 255`` (the multiplication by ``alpha`` is free: it is the scale), then ``Mul`` by
  ``DQ(x)`` into the original output quantizer. The gate is held to 1/255 steps, the error
  of any u8 activation.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from torchslim.exporters._onnx_graph import GraphIndex, remove_dead

__all__ = ["hard_gates_to_integer_"]

_UNIT_GRID = 1.0 / 255.0


def _float_attr(node: onnx.NodeProto, name: str, default: float) -> float:
    for a in node.attribute:
        if a.name == name:
            return float(a.f)
    return default


def _dq_q(index: GraphIndex, node: onnx.NodeProto
          ) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """(DQ of the input, the only reader Q of the output) of a gate between QDQ pairs."""
    dq = index.producer.get(node.input[0])
    readers = index.consumers.get(node.output[0], [])
    if dq is None or dq.op_type != "DequantizeLinear" or len(readers) != 1 \
            or readers[0].op_type != "QuantizeLinear":
        return None
    return dq, readers[0]


def _u8_per_tensor(index: GraphIndex, q: onnx.NodeProto) -> tuple[float, int] | None:
    if len(q.input) < 3:
        return None
    scale, zero = index.constant(q.input[1]), index.constant(q.input[2])
    if scale is None or zero is None or scale.size != 1 or zero.dtype != np.uint8:
        return None
    return float(scale.reshape(())), int(zero.reshape(()))


def _qparams(index: GraphIndex, base: str, scale: float, zero: int) -> tuple[str, str]:
    return (index.add_initializer(f"{base}_scale", np.array(scale, np.float32)),
            index.add_initializer(f"{base}_zero_point", np.array(zero, np.uint8)))


def _offset(index: GraphIndex, nodes: list[onnx.NodeProto], base: str, value: float) -> str:
    """A dequantized constant ``value`` (> 0, exact: 255 steps of value / 255)."""
    q = index.add_initializer(f"{base}_quantized", np.array(255, np.uint8))
    scale, zero = _qparams(index, base, value / 255.0, 0)
    out = index.fresh(f"{base}_dequantized")
    nodes.append(helper.make_node("DequantizeLinear", [q, scale, zero], [out],
                                  name=index.fresh(f"{base}_dq")))
    return out


def hard_gates_to_integer_(graph: onnx.GraphProto) -> int:
    """Rewrite the HardSigmoid and HardSwish nodes that sit between QDQ pairs (see the
    module docstring); returns how many were rewritten. A gate whose output quantizer is
    not a u8 per-tensor grid ending at 1 with zero point 0 (HardSigmoid) stays as it is."""
    index = GraphIndex(graph)
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type not in ("HardSigmoid", "HardSwish"):
            continue
        parts = _dq_q(index, node)
        if parts is None:
            continue
        dq, q = parts
        alpha = _float_attr(node, "alpha", 0.2) if node.op_type == "HardSigmoid" else 1 / 6
        beta = _float_attr(node, "beta", 0.5)
        grid = _u8_per_tensor(index, q)
        if alpha <= 0 or beta <= 0 or grid is None:
            continue
        if node.op_type == "HardSigmoid" and (grid[1] != 0 or grid[0] * 255.0 > 1.0 + 1e-6):
            continue  # the u8 range would not be the clip at 0 and 1
        base = node.name or index.fresh("hard_gate")
        added: list[onnx.NodeProto] = []
        shifted = index.fresh(f"{base}_shifted")
        offset = _offset(index, added, base, beta / alpha)
        added.append(helper.make_node("Add", [dq.output[0], offset], [shifted],
                                      name=index.fresh(f"{base}_add")))
        if node.op_type == "HardSigmoid":
            q.input[1] = index.add_initializer(f"{base}_gate_scale",
                                               np.array(grid[0] / alpha, np.float32))
            q.input[0] = shifted
        else:
            gate_q, gate = index.fresh(f"{base}_gate_quantized"), index.fresh(f"{base}_gate")
            s_q, z_q = _qparams(index, f"{base}_gate_q", _UNIT_GRID / alpha, 0)
            s_dq, z_dq = _qparams(index, f"{base}_gate_dq", _UNIT_GRID, 0)
            added.append(helper.make_node("QuantizeLinear", [shifted, s_q, z_q], [gate_q],
                                          name=index.fresh(f"{base}_gate_q")))
            added.append(helper.make_node("DequantizeLinear", [gate_q, s_dq, z_dq], [gate],
                                          name=index.fresh(f"{base}_gate_dq")))
            added.append(helper.make_node("Mul", [dq.output[0], gate], [node.output[0]],
                                          name=index.fresh(f"{base}_mul")))
        replaced[id(node)] = added
    if replaced:  # one rebuild: extend() copies the messages that ``index`` points at
        nodes = [new for old in graph.node for new in replaced.get(id(old), [old])]
        del graph.node[:]
        graph.node.extend(nodes)
        remove_dead(graph)
    return len(replaced)
