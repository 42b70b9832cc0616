"""ONNX export of weight-only quantized models (:func:`torchslim.quant.quantize_weight_only`).

Int8 weight initializers (4-bit values stored in int8) behind a ``DequantizeLinear``
feeding the float MatMul / Gemm; activations stay float.
Per channel uses opset 17 (``axis``); per group needs the blocked ``DequantizeLinear``
(``block_size``) of opset 21, so the float export is converted to opset 21 first. ONNX
Runtime fuses blocked ``DQ -> MatMul`` into ``MatMulNBits``, which by default quantizes
the activation to int8 inside the kernel (session option
``session.qdq_matmulnbits_accuracy_level``), so its output is close to, not equal to, the
float-activation torch simulation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from torch import nn

from torchslim.capture.inputs import DynamicDims
from torchslim.errors import ArtifactError, UnsupportedModelError
from torchslim.exporters._onnx_graph import GraphIndex, digest, remove_dead, rewrite_weights_
from torchslim.exporters.onnx import OPSET, export_proto, write_checked
from torchslim.exporters.weights import (bake_weights_, check_quantized_as, copy_model,
                                         weight_qparams)
from torchslim.quant.affine import dequantize_tensor, quantize_tensor
from torchslim.quant.config import WeightOnlyConfig
from torchslim.quant.fake_quant import FakeQuantize

logger = logging.getLogger(__name__)

__all__ = ["export_weight_only"]

BLOCKED_DQ_OPSET = 21  # first opset whose DequantizeLinear has block_size


@dataclass(frozen=True)
class GroupedWeight:
    """A per-group integer Linear weight, found again in the ONNX graph by value."""

    module: str
    q: np.ndarray  # (out, in) int8 / uint8
    scale: np.ndarray  # (out, in // group_size) float32
    zero_point: np.ndarray  # same shape as scale, q's dtype
    group_size: int

    def dequantized(self) -> np.ndarray:
        """``(q - z) * s`` as the torch model computes it, (out, in) float32."""
        g = self.group_size
        z = np.repeat(self.zero_point.astype(np.int32), g, axis=1)  # (out, in)
        return (self.q.astype(np.int32) - z).astype(np.float32) * np.repeat(self.scale, g, axis=1)


def export_weight_only(model: nn.Module, path: str | os.PathLike[str], *,
                       example_inputs: Any = None, input_shape: tuple[int, ...] | None = None,
                       dynamic_dims: DynamicDims | None = None,
                       output_names: Sequence[str] | None = None, opset: int = OPSET,
                       exporter: str = "torchscript") -> Path:
    """Write a :func:`torchslim.quant.quantize_weight_only` model as ONNX: int8 weight
    initializers + DequantizeLinear (per channel, or blocked per group at opset 21)
    feeding float MatMul / Gemm. Inputs as in ``export_onnx``; ``model`` is left
    untouched. The TorchScript exporter is the default (its opset-18 graph converts to the
    opset 21 that blocked DequantizeLinear needs)."""
    check_quantized_as(model, WeightOnlyConfig, "export_weight_only")
    m = copy_model(model).eval().cpu()
    grouped = _bake_grouped_(m)
    baked = bake_weights_(m)
    if not baked and not grouped:
        raise UnsupportedModelError(f"{type(model).__name__} has no quantized Linear; "
                                    "run torchslim.quant.quantize_weight_only first")
    proto, _ = export_proto(m, example_inputs, input_shape=input_shape, dynamic_dims=dynamic_dims,
                            output_names=output_names, opset=opset, exporter=exporter)
    found, _ = rewrite_weights_(proto, baked)
    if grouped:
        proto = _to_opset(proto, BLOCKED_DQ_OPSET)
        found |= _add_blocked_dq_(proto, grouped)
    missing = sorted({b.module for b in [*baked, *grouped]} - found)
    if missing:
        logger.warning("%s: weight not found in the exported graph; kept float "
                       "(fake-quantized values)", ", ".join(missing))
    out = write_checked(proto, path)
    logger.info("exported %s: %d int8 weights (%d per group), %d bytes",
                out, len(found), len(grouped), out.stat().st_size)
    return out


def _bake_grouped_(model: nn.Module) -> list[GroupedWeight]:
    """Turn each per-group fake-quant Linear into a plain Linear holding the dequantized
    weight; return its integer weight with ``(out, in // g)`` scales."""
    baked = []
    for name, module in list(model.named_modules()):
        fq = getattr(module, "weight_fake_quant", None)
        if not isinstance(fq, FakeQuantize) or fq.spec.granularity != "per_group":
            continue
        if not isinstance(module, nn.Linear):
            raise UnsupportedModelError(f"{name}: per-group weights export for Linear only, "
                                        f"not {type(module).__name__}")
        weight = module.weight.detach().float()  # (out, in)
        scale, zp, spec = weight_qparams(name, fq, weight)
        if spec is None:
            continue
        q = quantize_tensor(weight, scale, zp, spec)  # (out, in) int8 / uint8
        plain = nn.Linear(module.in_features, module.out_features, module.bias is not None)
        plain.weight = nn.Parameter(dequantize_tensor(q, scale, zp, spec), requires_grad=False)
        plain.bias = module.bias
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, plain)
        groups = (q.shape[0], q.shape[1] // spec.group_size)  # (out, in // g)
        baked.append(GroupedWeight(module=name, q=q.numpy(),
                                   scale=scale.float().reshape(groups).numpy(),
                                   zero_point=zp.reshape(groups).numpy().astype(q.numpy().dtype),
                                   group_size=spec.group_size))
    return baked


def _to_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, opset)
    except Exception as e:  # the converter raises bare RuntimeErrors
        raise ArtifactError(f"cannot convert the exported graph to opset {opset} for "
                            f"blocked DequantizeLinear ({str(e).splitlines()[0]}); use "
                            "group_size=None (per channel) to export at opset 17") from e


def _add_blocked_dq_(model: onnx.ModelProto, grouped: list[GroupedWeight]) -> set[str]:
    """Point each matching MatMul / Gemm at a blocked DequantizeLinear of int8 weights."""
    graph = model.graph
    index = GraphIndex(graph)
    lookup: dict[tuple, tuple[GroupedWeight, bool]] = {}
    for b in grouped:
        w = b.dequantized()  # (out, in)
        lookup.setdefault(digest(w), (b, False))
        lookup.setdefault(digest(np.ascontiguousarray(w.T)), (b, True))
    new_nodes, found, done = [], set(), {}
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        name = node.input[1]
        if name not in done:
            value = index.constant(name)
            hit = lookup.get(digest(value)) if value is not None and value.ndim == 2 else None
            if hit is None:
                continue
            done[name] = _blocked_dq(index, new_nodes, name, *hit)
            found.update(x.module for x in grouped if np.array_equal(x.q, hit[0].q)
                         and np.array_equal(x.scale, hit[0].scale))
        node.input[1] = done[name]
    nodes = new_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    remove_dead(graph)
    return found


def _blocked_dq(index: GraphIndex, new_nodes: list[onnx.NodeProto], name: str,
                b: GroupedWeight, transposed: bool) -> str:
    q, s, z = (b.q.T, b.scale.T, b.zero_point.T) if transposed else (b.q, b.scale, b.zero_point)
    axis = 0 if transposed else 1  # the input (in) axis, which the groups split
    q_name = index.add_initializer(f"{name}_quantized", np.ascontiguousarray(q))
    s_name = index.add_initializer(f"{name}_scale", np.ascontiguousarray(s, dtype=np.float32))
    z_name = index.add_initializer(f"{name}_zero_point", np.ascontiguousarray(z))
    out = index.fresh(f"{name}_dequantized")
    new_nodes.append(onnx.helper.make_node(
        "DequantizeLinear", [q_name, s_name, z_name], [out],
        name=index.fresh(f"{name}_DequantizeLinear"), axis=axis, block_size=b.group_size))
    return out
