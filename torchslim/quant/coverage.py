"""Coverage: how much of a model static quantization really runs in INT8, and why the
rest stays float. Nothing is left in float silently.

Every MAC op of the captured graphs is counted on the example inputs: a conv / linear is
quantized when it became a Quant* layer, a matmul when both its inputs are quantized.
Everything else with MACs is a ``FloatOp`` with its reason (a skipped layer, a transposed
conv, a weight computed in forward, fused attention, an LSTM, a submodule no capture route
could see into), and so is every add / mul / concat / pool / gate whose result stays float.
``enforce`` raises a one-line error when the quantized share of the quantizable MACs
(conv / linear / matmul) that the config did not keep float on purpose is below
``QuantConfig.min_coverage``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from torch import fx, nn

from torchslim._record import Coverage, FloatOp
from torchslim.capture.ops import QUANTIZABLE_KINDS, node_macs, op_kind
from torchslim.capture.values import is_float_node
from torchslim.errors import UnsupportedModelError
from torchslim.quant.config import LayerPlan
from torchslim.quant.patterns import Placement, integer_nodes

__all__ = ["Tally", "tally_unit", "summarise", "enforce", "REASONS"]

logger = logging.getLogger(__name__)

# op kind -> why it stays float when the graph holds it as a call (not a Quant* layer)
REASONS = {
    "conv": "not a stored-weight conv (its weight or padding is computed in forward)",
    "linear": "not a stored-weight linear (its weight is computed in forward)",
    "conv_transpose": "transposed convolution: torchslim has no quantized form for it",
    "matmul": "its inputs are not both float activations that could be quantized",
    "attention": "fused attention (scaled_dot_product_attention): no integer kernel in "
                 "ONNX Runtime",
    "rnn": "recurrent layer: static INT8 has no LSTM / GRU kernel; use "
           "DynamicQuantConfig(layers=('linear', 'lstm'))",
}
_MHA_LEAF = ("nn.MultiheadAttention kept whole by fx (its projections are read by "
             "F.multi_head_attention_forward); capture='auto' quantizes them")


@dataclass
class Tally:
    """What one or more captured graphs contribute to the coverage."""

    quantized: dict[str, int] = field(default_factory=dict)   # layer -> MACs
    matmul_macs: int = 0                                      # quantized matmuls
    float_ops: list[FloatOp] = field(default_factory=list)
    opaque: dict[str, str] = field(default_factory=dict)      # submodule -> reason

    def float_op(self, name: str, kind: str, macs: int, reason: str, *,
                 requested: bool = False) -> None:
        self.float_ops.append(FloatOp(name=name, kind=kind, macs=macs, reason=reason,
                                      requested=requested))


def _scope(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else ""


def _full(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def tally_unit(tally: Tally, gm: fx.GraphModule, prefix: str, plans: dict[str, LayerPlan],
               placement: Placement, units: set[str]) -> None:
    """Count one captured graph (``prefix``: its name in the model) into ``tally``."""
    integer = integer_nodes(placement, gm.graph.nodes)
    for node in gm.graph.nodes:
        kind = op_kind(gm, node)
        target = str(node.target)
        if node.op == "call_module" and target in plans:
            macs = node_macs(gm, node, kind)
            name = _full(prefix, target)
            if plans[target].weight is not None:
                tally.quantized[name] = tally.quantized.get(name, 0) + macs
            else:
                tally.float_op(name, kind, macs, plans[target].reason, requested=True)
            continue
        if node.op == "call_module" and _full(prefix, target) not in units and \
                kind in ("module", "attention", "rnn", "conv", "linear", "conv_transpose"):
            if placement.role(node) != "quantizer":
                reason = _MHA_LEAF if kind == "attention" else REASONS.get(kind, "")
                tally.opaque.setdefault(_full(prefix, target), reason or "float submodule")
            continue
        _tally_call(tally, gm, node, kind, prefix, integer)


def _tally_call(tally: Tally, gm: fx.GraphModule, node: fx.Node, kind: str, prefix: str,
                integer: dict[fx.Node, bool]) -> None:
    name = f"{_full(prefix, _scope(node)) or node.name} ({node.name})"
    if node in integer:
        if integer[node]:
            if kind == "matmul":
                tally.matmul_macs += node_macs(gm, node, kind)
            return
        if kind == "matmul":
            tally.float_op(name, kind, node_macs(gm, node, kind), REASONS["matmul"])
        else:
            tally.float_op(name, kind, 0, "its result feeds only float ops or the output")
        return
    if kind in REASONS and node.op == "call_function" and is_float_node(node):
        tally.float_op(name, kind, node_macs(gm, node, kind), REASONS[kind])


def summarise(tally: Tally, *, capture: str, notes: list[str], opaque_macs: dict[str, int],
              params_total: int, params_quantized: int) -> Coverage:
    """The coverage record from a tally and the MACs of its opaque submodules."""
    ops = list(tally.float_ops)
    for name, reason in tally.opaque.items():
        requested = reason.startswith("in skip list")
        ops.append(FloatOp(name=name, kind="module", macs=opaque_macs.get(name, 0),
                           reason=reason, requested=requested))
    ops.sort(key=lambda op: -op.macs)
    quantized = sum(tally.quantized.values()) + tally.matmul_macs
    float_mac_ops = [op for op in ops if op.macs and (op.kind in QUANTIZABLE_KINDS
                                                      or op.kind == "module")]
    other = sum(op.macs for op in ops if op.macs and op not in float_mac_ops)
    quantizable = quantized + sum(op.macs for op in float_mac_ops)
    return Coverage(capture=capture, macs_total=quantizable + other,
                    macs_quantizable=quantizable, macs_quantized=quantized,
                    macs_requested_float=sum(op.macs for op in float_mac_ops if op.requested),
                    params_total=params_total, params_quantized=params_quantized,
                    float_ops=tuple(ops), notes=tuple(notes))


def params_of(model: nn.Module, layers: list[str]) -> tuple[int, int]:
    """``(all parameters, weights of the quantized layers)``, each tensor counted once."""
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    weights = {id(w): w for w in (getattr(model.get_submodule(n), "weight", None) for n in layers)
               if w is not None}
    return total, sum(w.numel() for w in weights.values())


def enforce(coverage: Coverage, min_coverage: float, model_name: str) -> None:
    """One-line UnsupportedModelError when too little of the model would run in INT8."""
    if coverage.macs_quantizable == 0:
        raise UnsupportedModelError(
            f"{model_name} has no conv, linear or matmul that static INT8 can run "
            f"({_biggest(coverage) or 'no MAC ops found'}); nothing to quantize")
    fraction = coverage.enforced_fraction
    if fraction + 1e-12 >= min_coverage:
        return
    lower = max(0.0, int(fraction * 100) / 100)
    raise UnsupportedModelError(
        f"{model_name}: only {fraction:.1%} of the MACs in conv / linear / matmul ops would run "
        f"in INT8 (min_coverage={min_coverage}); biggest float ops: {_biggest(coverage)}; "
        f"fix those or pass QuantConfig(min_coverage={lower}) to accept it")


def _biggest(coverage: Coverage, count: int = 3) -> str:
    base = max(coverage.macs_total, 1)
    ops = [op for op in coverage.float_ops if op.macs and not op.requested][:count]
    return "; ".join(f"{op.name} ({op.kind}, {op.macs / base:.0%} of the MACs: {op.reason})"
                     for op in ops)
