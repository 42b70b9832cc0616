"""ONNX export of dynamically quantized models (:func:`torchslim.quant.quantize_dynamic`).

Each quantized Linear becomes what ``onnxruntime.quantization.quantize_dynamic`` emits,
and ONNX Runtime fuses into ``DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat``::

    x -> DynamicQuantizeLinear -> (x_q u8, x_scale, x_zp)
    MatMulInteger(x_q, W_q s8 [in, out], x_zp, 0) -> Cast(float) -> Mul(x_scale * w_scale) -> Add(bias)

Each :class:`~torchslim.quant.dynamic.DynamicQuantLSTM` is exported as a float
``nn.LSTM`` (one ONNX ``LSTM`` node per layer) whose nodes are then replaced by
``com.microsoft`` ``DynamicQuantizeLSTM``: int8 W ``[D, in, 4H]`` / R ``[D, H, 4H]``
(transposed vs ``LSTM``, gate order iofc), per-row scales ``[D, 4H]``, int8 zero points 0,
and the LSTM node's B, sequence_lens, initial_h / initial_c unchanged.

``DynamicQuantizeLinear`` is per tensor, so only models quantized with
``per_token=False`` (the default) export; their torch simulation computes the same grid.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from torchslim.capture.inputs import DynamicDims
from torchslim.errors import ArtifactError, ConfigError, UnsupportedModelError
from torchslim.exporters._onnx_graph import (MS_DOMAIN, GraphIndex, attribute,
                                             constants_to_initializers_, digest, remove_dead,
                                             use_ms_domain_)
from torchslim.exporters.onnx import OPSET, export_proto, write_checked
from torchslim.exporters.weights import (BakedWeight, bake_weights_, check_quantized_as,
                                         copy_model, weight_qparams)
from torchslim.quant.affine import dequantize_tensor, quantize_tensor
from torchslim.quant.config import DynamicQuantConfig
from torchslim.quant.dynamic import DynamicActivationQuant, DynamicQuantLSTM

logger = logging.getLogger(__name__)

__all__ = ["export_dynamic"]

def export_dynamic(model: nn.Module, path: str | os.PathLike[str], *,
                   example_inputs: Any = None, input_shape: tuple[int, ...] | None = None,
                   dynamic_dims: DynamicDims | None = None,
                   output_names: Sequence[str] | None = None, opset: int = OPSET,
                   exporter: str = "torchscript") -> Path:
    """Write a :func:`torchslim.quant.quantize_dynamic` model as an ONNX file that ONNX
    Runtime runs with integer MatMul kernels. Inputs as in ``export_onnx``
    (``example_inputs``, or the ``input_shape`` shorthand; named dynamic dims);
    ``model`` is left untouched. The TorchScript exporter is the default here: the LSTM
    rewrite needs the ONNX ``LSTM`` nodes it writes."""
    check_quantized_as(model, DynamicQuantConfig, "export_dynamic")
    m = copy_model(model).eval().cpu()
    lstms = _bake_lstms_(m)
    _drop_dynamic_quantizers_(m)
    baked = bake_weights_(m)
    if not baked and not lstms:
        raise UnsupportedModelError(f"{type(model).__name__} has no quantized Linear; "
                                    "run torchslim.quant.quantize_dynamic first")
    proto, _ = export_proto(m, example_inputs, input_shape=input_shape, dynamic_dims=dynamic_dims,
                            output_names=output_names, opset=opset, exporter=exporter)
    found = _rewrite_integer_matmuls_(proto, baked) if baked else set()
    lstm_found = _rewrite_lstms_(proto, lstms) if lstms else set()
    lstm_missing = sorted({x.module for x in lstms} - lstm_found)
    if lstm_missing:
        raise ArtifactError(f"{', '.join(lstm_missing)}: no ONNX LSTM node with these "
                            "weights in the exported graph; cannot write DynamicQuantizeLSTM")
    missing = [b.module for b in baked if b.module not in found]
    if missing:
        logger.warning("%s: no MatMul/Gemm with this weight in the exported graph; kept "
                       "float (fake-quantized weight values)", ", ".join(missing))
    out = write_checked(proto, path)
    logger.info("exported %s: %d integer MatMuls, %d DynamicQuantizeLSTM layers, %d bytes",
                out, len(found), len(lstms), out.stat().st_size)
    return out


# --- dynamic LSTM --------------------------------------------------------------------

_IOFC = (0, 3, 1, 2)  # ONNX gate block k is torch's (i, f, g, o) block _IOFC[k]


@dataclass(frozen=True)
class BakedLSTMLayer:
    """One layer (all directions) of a DynamicQuantLSTM, in ONNX LSTM layout (iofc)."""

    module: str
    layer: int
    w_q: np.ndarray  # (D, 4H, in) int8
    w_scale: np.ndarray  # (D, 4H) float32
    r_q: np.ndarray  # (D, 4H, H) int8
    r_scale: np.ndarray  # (D, 4H) float32

    def w_float(self) -> np.ndarray:
        """What the float export writes as the LSTM node's W: ``q * s``, (D, 4H, in)."""
        return self.w_q.astype(np.float32) * self.w_scale[:, :, None]


def _to_iofc(a: np.ndarray, hidden: int) -> np.ndarray:
    """Reorder the gate blocks of axis 0 from torch's (i, f, g, o) to ONNX's (i, o, f, c)."""
    return np.concatenate([a[k * hidden:(k + 1) * hidden] for k in _IOFC], axis=0)


def _bake_lstms_(model: nn.Module) -> list[BakedLSTMLayer]:
    """Replace each DynamicQuantLSTM by a float nn.LSTM holding its fake-quantized weights
    (the exporter writes an ONNX LSTM node per layer); return its int8 weights per layer."""
    records = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, DynamicQuantLSTM):
            continue
        lstm, hidden = module.lstm, module.lstm.hidden_size
        plain = copy.deepcopy(lstm)
        for layer in range(lstm.num_layers):
            parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"ih": [], "hh": []}
            for d in range(module.num_directions):
                for kind in ("ih", "hh"):
                    pname = f"weight_{kind}_l{layer}{'_reverse' if d else ''}"
                    weight = getattr(lstm, pname).detach().float()
                    scale, zp, spec = weight_qparams(f"{name}.{pname}",
                                                      module.weight_quant[pname], weight)
                    if spec is None or spec.granularity != "per_channel" or not spec.signed \
                            or torch.any(zp != 0):
                        raise UnsupportedModelError(f"{name}.{pname}: DynamicQuantizeLSTM needs "
                                                    "s8 per-row symmetric weights")
                    q = quantize_tensor(weight, scale, zp, spec)  # (4H, in) int8
                    getattr(plain, pname).data.copy_(dequantize_tensor(q, scale, zp, spec))
                    parts[kind].append((_to_iofc(q.numpy(), hidden),
                                        _to_iofc(scale.float().reshape(-1).numpy(), hidden)))
            records.append(BakedLSTMLayer(
                module=name, layer=layer,
                w_q=np.stack([q for q, _ in parts["ih"]]),
                w_scale=np.stack([s for _, s in parts["ih"]]).astype(np.float32),
                r_q=np.stack([q for q, _ in parts["hh"]]),
                r_scale=np.stack([s for _, s in parts["hh"]]).astype(np.float32)))
        parent, _, attr = name.rpartition(".")
        if not name:
            raise UnsupportedModelError("the model itself is a DynamicQuantLSTM; wrap it in a "
                                        "module that returns a tensor to export it")
        setattr(model.get_submodule(parent), attr, plain)
    return records


def _rewrite_lstms_(model: onnx.ModelProto, records: list[BakedLSTMLayer]) -> set[str]:
    """Replace each ONNX LSTM whose W is a recorded layer's by com.microsoft's
    DynamicQuantizeLSTM with int8 W / R; returns the module names fully rewritten."""
    graph = model.graph
    constants_to_initializers_(graph)
    index = GraphIndex(graph)
    lookup: dict[tuple, BakedLSTMLayer] = {}
    for r in records:  # layers with equal weights: the exporter may share one initializer
        lookup.setdefault(digest(r.w_float()), r)
    nodes, done = [], []
    for node in graph.node:
        w = index.constant(node.input[1]) if node.op_type == "LSTM" else None
        rec = lookup.get(digest(w)) if w is not None and w.dtype == np.float32 else None
        if rec is None:
            nodes.append(node)
            continue
        if attribute(node, "layout", 0) != 0:
            raise UnsupportedModelError(f"{node.name}: LSTM layout=1 has no DynamicQuantizeLSTM form")
        base = f"{rec.module or 'lstm'}_l{rec.layer}"
        w_q = index.add_initializer(f"{base}_W_quantized",
                                    np.ascontiguousarray(rec.w_q.transpose(0, 2, 1)))  # (D, in, 4H)
        r_q = index.add_initializer(f"{base}_R_quantized",
                                    np.ascontiguousarray(rec.r_q.transpose(0, 2, 1)))  # (D, H, 4H)
        w_s = index.add_initializer(f"{base}_W_scale", rec.w_scale)  # (D, 4H)
        w_z = index.add_initializer(f"{base}_W_zero_point", np.zeros(rec.w_scale.shape, np.int8))
        r_s = index.add_initializer(f"{base}_R_scale", rec.r_scale)
        r_z = index.add_initializer(f"{base}_R_zero_point", np.zeros(rec.r_scale.shape, np.int8))
        ins = list(node.input) + [""] * (8 - len(node.input))
        ins[1], ins[2] = w_q, r_q
        attrs = [a for a in node.attribute if a.name != "layout"]
        new = onnx.helper.make_node("DynamicQuantizeLSTM", ins + [w_s, w_z, r_s, r_z],
                                    list(node.output), name=index.fresh(f"{base}_DynamicQuantizeLSTM"),
                                    domain=MS_DOMAIN)
        new.attribute.extend(attrs)
        nodes.append(new)
        done.append(rec)
    del graph.node[:]
    graph.node.extend(nodes)
    remove_dead(graph)
    if done:
        use_ms_domain_(model)
    def rewritten(x: BakedLSTMLayer) -> bool:
        return any(np.array_equal(x.w_q, y.w_q) and np.array_equal(x.w_scale, y.w_scale)
                   and np.array_equal(x.r_q, y.r_q) and np.array_equal(x.r_scale, y.r_scale)
                   for y in done)

    return {r.module for r in records
            if all(rewritten(x) for x in records if x.module == r.module)}


def _drop_dynamic_quantizers_(model: nn.Module) -> None:
    """Replace each run-time activation quantizer by Identity (the graph rewrite adds
    DynamicQuantizeLinear instead); per-token grids have no ONNX form."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, DynamicActivationQuant):
            continue
        if module.per_token:
            raise ConfigError(f"{name}: per_token=True dynamic activations have no ONNX "
                              "form (DynamicQuantizeLinear is per tensor); quantize with "
                              "per_token=False to export")
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, nn.Identity())


def _weight_lookup(baked: list[BakedWeight]) -> dict[tuple, tuple[BakedWeight, bool]]:
    """digest of a float initializer -> (record, stored transposed as [in, out]); layers
    with equal weights share one record (the exporter writes one initializer)."""
    lookup: dict[tuple, tuple[BakedWeight, bool]] = {}
    for b in baked:
        w = b.dequantized()  # (out, in): what the exporter wrote, maybe transposed
        lookup.setdefault(digest(w), (b, False))
        lookup.setdefault(digest(np.ascontiguousarray(w.T)), (b, True))
    return lookup


def _linear_match(index: GraphIndex, node: onnx.NodeProto,
                  lookup: dict[tuple, tuple[BakedWeight, bool]]) -> BakedWeight | None:
    """The record whose weight ``node`` multiplies by as a Linear (``x @ W.T``), if any."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
        return None
    value = index.constant(node.input[1])
    if value is None or value.dtype != np.float32 or value.ndim != 2:
        return None
    hit = lookup.get(digest(value))
    if hit is None:
        return None
    b, transposed = hit
    if node.op_type == "MatMul":
        return b if transposed else None
    plain_gemm = attribute(node, "transA", 0) == 0
    unit = all(_float_attr(node, a) == 1.0 for a in ("alpha", "beta"))
    wants_t = attribute(node, "transB", 0) == 0  # [in, out] stored when transB = 0
    return b if plain_gemm and unit and wants_t == transposed else None


def _float_attr(node: onnx.NodeProto, name: str) -> float:
    for a in node.attribute:
        if a.name == name:
            return float(a.f)
    return 1.0


def _rewrite_integer_matmuls_(model: onnx.ModelProto, baked: list[BakedWeight]) -> set[str]:
    """Replace each Linear MatMul / Gemm by the dynamic integer chain; returns the module
    names rewritten."""
    graph = model.graph
    constants_to_initializers_(graph)
    index = GraphIndex(graph)
    lookup = _weight_lookup(baked)
    nodes: list[onnx.NodeProto] = []
    found: set[str] = set()
    for node in graph.node:
        b = _linear_match(index, node, lookup)
        if b is None:
            nodes.append(node)
            continue
        nodes.extend(_integer_chain(index, node, b))
        found.update(x.module for x in baked if np.array_equal(x.q, b.q)
                     and np.array_equal(x.scale, b.scale))
    del graph.node[:]
    graph.node.extend(nodes)
    remove_dead(graph)
    return found


def _integer_chain(index: GraphIndex, node: onnx.NodeProto, b: BakedWeight
                   ) -> list[onnx.NodeProto]:
    """DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul (-> Add bias) for ``node``."""
    if np.any(b.zero_point != 0) or b.q.dtype != np.int8:
        raise UnsupportedModelError(f"{b.module}: dynamic export needs symmetric s8 weights "
                                    f"(zero point 0); got {b.q.dtype} with non-zero points")
    base = b.module or "linear"
    helper = onnx.helper
    x_q, x_s, x_z = (index.fresh(f"{base}_input_{s}") for s in ("quantized", "scale", "zp"))
    w_q = index.add_initializer(f"{base}_weight_quantized", np.ascontiguousarray(b.q.T))  # [in, out]
    w_z = index.add_initializer(f"{base}_weight_zero_point", np.zeros((), np.int8))
    w_s = index.add_initializer(f"{base}_weight_scale", b.scale.astype(np.float32))  # (out,)
    acc, acc_f, scale = (index.fresh(f"{base}_{s}") for s in ("acc", "acc_float", "scale"))
    has_bias = node.op_type == "Gemm" and len(node.input) > 2 and bool(node.input[2])
    out = index.fresh(f"{base}_no_bias") if has_bias else node.output[0]
    chain = [
        helper.make_node("DynamicQuantizeLinear", [node.input[0]], [x_q, x_s, x_z],
                         name=index.fresh(f"{base}_DynamicQuantizeLinear")),
        helper.make_node("MatMulInteger", [x_q, w_q, x_z, w_z], [acc],
                         name=index.fresh(f"{base}_MatMulInteger")),
        helper.make_node("Cast", [acc], [acc_f], to=onnx.TensorProto.FLOAT,
                         name=index.fresh(f"{base}_Cast")),
        helper.make_node("Mul", [x_s, w_s], [scale], name=index.fresh(f"{base}_scale_Mul")),
        helper.make_node("Mul", [acc_f, scale], [out], name=index.fresh(f"{base}_Mul")),
    ]
    if has_bias:
        chain.append(helper.make_node("Add", [out, node.input[2]], [node.output[0]],
                                      name=index.fresh(f"{base}_bias_Add")))
    return chain
