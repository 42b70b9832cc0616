"""Packed weight-only ONNX: ONNX Runtime's ``com.microsoft`` ``MatMulNBits``.

Each 4-bit Linear (``torchslim.quant.quantize_weight_only`` with ``bits=4``, or
``torchslim.llm.quantize_llm``'s RTN / GPTQ / AWQ layers) becomes one node::

    MatMulNBits(A, B uint8 [N, blocks, block_size * bits / 8], scales [N * blocks],
                zero_points uint8 [N * ceil(blocks * bits / 8)], bias)   K, N, bits, block_size

4-bit codes two per byte (the even column in the low nibble), ``w = (u - zero) * scale``;
the zero points are left out when they are all ``2^(bits-1)`` (a symmetric grid: ONNX
Runtime's default). Integer embedding tables (``torchslim.llm.quantize_embeddings_``, 8 or
4 bits) become ``GatherBlockQuantized`` (``torchslim.exporters.embedding``).
``block_size`` is the quantization group (a power of two, at least 16). Scales that are
all float16 values (``quantize_weight_only`` rounds them so) are stored as float16 behind
a ``Cast`` that ONNX Runtime folds at load: with groups of 32 the file holds 4.5 bits per
weight instead of 5, a little over half the int8 file.

8-bit per-row layers of the same model (``quantize_llm``'s LM head) are ``MatMulNBits``
with ``bits=8``, their row scale repeated over power-of-two blocks. They are not written
as int8 behind ``DequantizeLinear``: ONNX Runtime fuses ``DQ -> MatMul`` into a
``MatMulNBits`` with ``accuracy_level=4`` (session option
``session.qdq_matmulnbits_accuracy_level``), which quantizes the activations to int8 per
block and moved a tiny Llama's logits by 3e-3 from the torch model. With
``accuracy_level=0`` (the default) every kernel multiplies float32 activations, as the
torch model does, so the two agree to float rounding.
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
import torch
from torch import nn

from torchslim.capture.inputs import DynamicDims
from torchslim.errors import ConfigError, UnsupportedModelError
from torchslim.exporters._onnx_graph import (MS_DOMAIN, GraphIndex, constants_to_initializers_,
                                             digest, remove_dead, use_ms_domain_)
from torchslim.exporters.embedding import bake_embeddings_, gather_block_quantized_
from torchslim.exporters.onnx import OPSET, export_proto, write_checked
from torchslim.exporters.weights import copy_model, weight_qparams
from torchslim.quant.affine import quantize_tensor
from torchslim.quant.fake_quant import FakeQuantize

logger = logging.getLogger(__name__)

__all__ = ["export_int4", "PackedWeight", "pack_matmul_nbits_"]



@dataclass(frozen=True)
class PackedWeight:
    """A 4- or 8-bit Linear weight: unsigned codes, per-block scales and zero points."""

    module: str
    codes: np.ndarray   # (N, K_pad) uint8 in [0, 2^bits - 1], K_pad = blocks * group
    scales: np.ndarray  # (N, blocks) float32
    zeros: np.ndarray   # (N, blocks) uint8
    group: int
    in_features: int    # K (the padding columns beyond it hold zero weights)
    bits: int = 4

    def dequantized(self) -> np.ndarray:
        """``(N, K)`` float32, as the torch model computes with it."""
        g = self.group
        w = (self.codes.astype(np.float32) - np.repeat(self.zeros, g, axis=1)) \
            * np.repeat(self.scales, g, axis=1)
        return np.ascontiguousarray(w[:, : self.in_features])


def _check_block(name: str, group: int) -> None:
    if group < 16 or group & (group - 1):
        raise ConfigError(f"{name}: group size {group} has no MatMulNBits form (block_size "
                          "must be a power of two >= 16); quantize with group_size=32, 64 "
                          "or 128")


def _from_llm(name: str, layer: nn.Module) -> PackedWeight:
    """A ``torchslim.llm`` WeightOnlyLinear (4 or 8 bits)."""
    codes, scales, zeros = layer.codes().numpy(), layer.scales.numpy(), layer.zeros.numpy()
    group = layer.group
    if layer.bits == 8 and layer.group_size is None:  # per row (the LM head): re-block it
        group, k_pad = _row_blocks(layer.padded)
        blocks = k_pad // group
        codes = np.concatenate([codes, np.repeat(zeros, k_pad - codes.shape[1], axis=1)], 1)
        scales, zeros = np.repeat(scales, blocks, axis=1), np.repeat(zeros, blocks, axis=1)
    _check_block(name, group)
    return PackedWeight(module=name, codes=codes, scales=scales, zeros=zeros, group=group,
                        in_features=layer.in_features, bits=layer.bits)


def _row_blocks(k: int) -> tuple[int, int]:
    """``(block_size, K_pad)`` for a per-row grid: the largest power of two in [16, 128]
    dividing ``k`` (the row's scale repeated per block), else blocks of 16 over ``k``
    padded with zero weights."""
    for block in (128, 64, 32, 16):
        if k % block == 0:
            return block, k
    return 16, -(-k // 16) * 16


def _from_fake_quant(name: str, layer: nn.Module) -> PackedWeight | None:
    """A ``quantize_weight_only`` layer with a 4-bit per-group (or per-channel) grid."""
    weight = layer.weight.detach().float()  # (N, K)
    scale, zp, spec = weight_qparams(name, layer.weight_fake_quant, weight)
    if spec is None or spec.bits != 4:
        return None
    n, k = weight.shape
    group = spec.group_size if spec.granularity == "per_group" else k
    _check_block(name, group)
    q = quantize_tensor(weight, scale, zp, spec).to(torch.int32)  # (N, K), signed or not
    offset = 8 if spec.signed else 0  # a signed grid stored as unsigned codes
    return PackedWeight(module=name, codes=(q + offset).to(torch.uint8).numpy(),
                        scales=scale.float().reshape(n, -1).numpy(),
                        zeros=(zp.to(torch.int32).reshape(n, -1) + offset).to(torch.uint8).numpy(),
                        group=group, in_features=k)


def _plain_linear(layer: nn.Module, weight: np.ndarray) -> nn.Linear:
    n, k = weight.shape
    bias = getattr(layer, "bias", None)
    plain = nn.Linear(k, n, bias=bias is not None)
    plain.weight = nn.Parameter(torch.from_numpy(weight.copy()), requires_grad=False)
    if bias is not None:
        plain.bias = nn.Parameter(bias.detach().float().clone(), requires_grad=False)
    return plain


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def _bake_(model: nn.Module) -> list[PackedWeight]:
    """Replace every integer layer of ``model`` by a float one holding its dequantized
    weight (found again in the graph by value); return the integer weights."""
    from torchslim.llm.qlinear import QuantEmbedding, W8A8Linear, WeightOnlyLinear

    packed = []
    for name, layer in list(model.named_modules()):
        if isinstance(layer, W8A8Linear):
            raise UnsupportedModelError(f"{name}: W8A8 (SmoothQuant, per-token activations) "
                                        "has no packed 4-bit form; for ONNX smooth the float "
                                        "model with torchslim.llm.smooth_ and quantize it "
                                        "with QuantConfig or DynamicQuantConfig")
        if isinstance(layer, QuantEmbedding):  # a table tied to the quantized head
            emb = nn.Embedding(layer.num_embeddings, layer.embedding_dim, layer.padding_idx)
            emb.weight = nn.Parameter(layer.source.weight_float(), requires_grad=False)
            _set(model, name, emb)
        elif isinstance(layer, WeightOnlyLinear) and layer.bits in (4, 8):
            packed.append(_from_llm(name, layer))
            _set(model, name, _plain_linear(layer, packed[-1].dequantized()))
        elif isinstance(getattr(layer, "weight_fake_quant", None), FakeQuantize) and \
                isinstance(layer, nn.Linear):
            found = _from_fake_quant(name, layer)
            if found is not None:
                packed.append(found)
                _set(model, name, _plain_linear(layer, found.dequantized()))
    return packed


def export_int4(model: nn.Module, path: str | os.PathLike[str], *, example_inputs: Any = None,
                input_shape: tuple[int, ...] | None = None,
                dynamic_dims: DynamicDims | None = None,
                output_names: Sequence[str] | None = None, opset: int = OPSET,
                exporter: str = "torchscript", accuracy_level: int = 0) -> Path:
    """Write a model with 4-bit weight-only Linears as ONNX with packed ``MatMulNBits``.
    Inputs as in ``export_onnx`` (``example_inputs`` of any structure and dtypes, named
    ``dynamic_dims``); ``model`` is left untouched. ``accuracy_level`` is ONNX Runtime's
    (0: float32 activations; 4: int8 activations inside the kernel, faster, not what the
    torch model computes)."""
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise ConfigError(f"accuracy_level={accuracy_level!r} must be 0, 1, 2, 3 or 4")
    m = copy_model(model).eval().cpu()
    tables = bake_embeddings_(m)
    packed = _bake_(m)
    if not any(p.bits == 4 for p in packed):
        raise UnsupportedModelError(f"{type(model).__name__} has no 4-bit weight-only Linear; "
                                    "quantize it with WeightOnlyConfig(bits=4) or "
                                    "torchslim.llm.quantize_llm first")
    proto, _ = export_proto(m, example_inputs, input_shape=input_shape,
                            dynamic_dims=dynamic_dims, output_names=output_names,
                            opset=opset, exporter=exporter)
    found = pack_matmul_nbits_(proto, packed, accuracy_level=accuracy_level)
    gathers = gather_block_quantized_(proto, tables) if tables else set()
    missing = sorted({p.module for p in packed} - found) + sorted(
        {t.module for t in tables} - gathers)
    if missing:  # e.g. BERT's pooler under an embedding output: not in the graph at all
        logger.warning("%s: no MatMul / Gemm with this weight in the exported graph (a layer "
                       "the outputs do not use?); not written", ", ".join(missing))
    out = write_checked(proto, path)
    eight = {p.module for p in packed if p.bits == 8} & found
    logger.info("exported %s: %d MatMulNBits (%d of them 8-bit), %d quantized embeddings, "
                "%d bytes", out, len(found), len(eight), len(gathers), out.stat().st_size)
    return out


def _lookup(packed: list[PackedWeight]) -> dict[tuple, tuple[PackedWeight, bool]]:
    """digest of a float initializer -> (record, stored transposed as ``[K, N]``)."""
    table: dict[tuple, tuple[PackedWeight, bool]] = {}
    for p in packed:
        w = p.dequantized()
        table.setdefault(digest(w), (p, False))
        table.setdefault(digest(np.ascontiguousarray(w.T)), (p, True))
    return table


def _match(index: GraphIndex, node: onnx.NodeProto,
           table: dict[tuple, tuple[PackedWeight, bool]]) -> PackedWeight | None:
    """The record ``node`` multiplies by as ``x @ W.T`` (MatMul with ``[K, N]``, or a
    plain Gemm with ``transB=1``)."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
        return None
    value = index.constant(node.input[1])
    if value is None or value.dtype != np.float32 or value.ndim != 2:
        return None
    hit = table.get(digest(value))
    if hit is None:
        return None
    p, transposed = hit
    if node.op_type == "MatMul":
        return p if transposed else None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    plain = attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 and \
        attrs.get("beta", 1.0) == 1.0
    return p if plain and attrs.get("transB", 0) == 1 and not transposed else None


def _pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """``(N, 2m)`` values in [0, 15] -> ``(N, m)`` uint8, the even column in the low nibble."""
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def _fp16_exact(scales: np.ndarray) -> bool:
    """Whether every scale is a normal float16 value (the quantizer rounded it to one), so
    half the bytes store it exactly."""
    half = scales.astype(np.float16)
    return bool(np.all(np.abs(half) >= np.finfo(np.float16).tiny) and
                np.array_equal(half.astype(np.float32), scales))


def _scales(index: GraphIndex, nodes: list[onnx.NodeProto], p: PackedWeight) -> str:
    """The float32 scales input of ``p``: an initializer, or (when they are all float16
    values) a float16 one behind a ``Cast``, which ONNX Runtime folds when it loads."""
    base = p.module or "linear"
    scales = np.ascontiguousarray(p.scales.reshape(-1), np.float32)  # (N * blocks,)
    if not _fp16_exact(scales):
        return index.add_initializer(f"{base}_scales", scales)
    half = index.add_initializer(f"{base}_scales_fp16", scales.astype(np.float16))
    out = index.fresh(f"{base}_scales")
    nodes.append(onnx.helper.make_node("Cast", [half], [out], to=onnx.TensorProto.FLOAT,
                                       name=index.fresh(f"{base}_scales_Cast")))
    return out


def _initializers(index: GraphIndex, nodes: list[onnx.NodeProto], p: PackedWeight
                  ) -> list[str]:
    """B, scales and (unless all ``2^(bits-1)``) zero points of ``p`` as initializers (a
    ``Cast`` of float16 scales appended to ``nodes``)."""
    n, blocks = p.scales.shape
    data = _pack_nibbles(p.codes) if p.bits == 4 else p.codes  # (N, K_pad * bits / 8)
    base = p.module or "linear"
    names = [index.add_initializer(
                 f"{base}_B_packed",
                 np.ascontiguousarray(data.reshape(n, blocks, p.group * p.bits // 8))),
             _scales(index, nodes, p)]
    default = 2 ** (p.bits - 1)
    if np.any(p.zeros != default):
        zeros = p.zeros
        if p.bits == 4:  # two per byte, the row padded to whole bytes
            if blocks % 2:
                zeros = np.pad(zeros, ((0, 0), (0, 1)), constant_values=default)
            zeros = _pack_nibbles(zeros)
        names.append(index.add_initializer(f"{base}_zero_points",
                                           np.ascontiguousarray(zeros.reshape(-1))))
    else:
        names.append("")
    return names


def pack_matmul_nbits_(proto: onnx.ModelProto, packed: list[PackedWeight], *,
                       accuracy_level: int = 0) -> set[str]:
    """Replace each MatMul / Gemm multiplying by a ``packed`` weight with ``MatMulNBits``
    (its bias, a Gemm's third input, as the node's bias input); returns the modules
    written."""
    graph = proto.graph
    constants_to_initializers_(graph)
    index = GraphIndex(graph)
    table = _lookup(packed)
    nodes, found, made = [], set(), {}
    for node in graph.node:
        p = _match(index, node, table)
        if p is None:
            nodes.append(node)
            continue
        if p.module not in made:
            made[p.module] = _initializers(index, nodes, p)
        ins = [node.input[0], *made[p.module]]
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            ins += ["", node.input[2]]  # g_idx (none), bias
        n, k = p.codes.shape[0], p.in_features
        nodes.append(onnx.helper.make_node(
            "MatMulNBits", ins, list(node.output), domain=MS_DOMAIN,
            name=index.fresh(f"{p.module or 'linear'}_MatMulNBits"), K=k, N=n, bits=p.bits,
            block_size=p.group, accuracy_level=accuracy_level))
        found.update(q.module for q in packed if np.array_equal(q.codes, p.codes)
                     and np.array_equal(q.scales, p.scales))
    del graph.node[:]
    graph.node.extend(nodes)
    remove_dead(graph)
    if found:
        use_ms_domain_(proto)
    return found
