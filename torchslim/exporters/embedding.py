"""Quantized embedding lookups in ONNX: ONNX Runtime's ``com.microsoft``
``GatherBlockQuantized`` reads an 8- or 4-bit table (one scale per block of columns) and
dequantizes only the rows it gathers.

``bake_embeddings_`` turns each ``torchslim.llm.IntEmbedding`` of a model copy into a float
``nn.Embedding`` (its dequantized table, found again in the exported graph by value);
``gather_block_quantized_`` then replaces each ``Gather`` of such a table::

    GatherBlockQuantized(data uint8, indices, scales [V, D / block])
        gather_axis=0, quantize_axis=1, block_size, bits

8-bit data is ``q + 128``, 4-bit data two ``q + 8`` codes per byte (even column in the
low nibble): the runtime's default zero points (128, 8), so none are stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.exporters._onnx_graph import (MS_DOMAIN, GraphIndex, constants_to_initializers_,
                                             digest, remove_dead, use_ms_domain_)

__all__ = ["QuantTable", "bake_embeddings_", "gather_block_quantized_"]



@dataclass(frozen=True)
class QuantTable:
    """An integer embedding table of the torch model."""

    module: str
    data: np.ndarray    # uint8: (V, D) for 8 bits, (V, D / 2) packed for 4
    scales: np.ndarray  # (V, D / block) float32
    table: np.ndarray   # (V, D) float32, the dequantized values the torch model uses
    bits: int
    block: int


def bake_embeddings_(model: nn.Module) -> list[QuantTable]:
    """Replace each ``IntEmbedding`` of ``model`` by a float ``nn.Embedding`` of its
    dequantized table; return the integer tables to write into the graph."""
    from torchslim.llm.embedding import IntEmbedding

    tables = []
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, IntEmbedding):
            continue
        if layer.block_size < 16 or layer.block_size & (layer.block_size - 1):
            raise ConfigError(f"{name}: block_size={layer.block_size} has no "
                              "GatherBlockQuantized form (a power of two >= 16); quantize the "
                              "embeddings with block_size=32, 64 or 128")
        table = layer.weight_float()
        data = layer.qweight.to(torch.int16) + 128 if layer.bits == 8 else layer.qweight
        tables.append(QuantTable(module=name, data=data.to(torch.uint8).numpy(),
                                 scales=layer.scales.float().numpy(), table=table.numpy(),
                                 bits=layer.bits, block=layer.block_size))
        emb = nn.Embedding(layer.num_embeddings, layer.embedding_dim, layer.padding_idx)
        emb.weight = nn.Parameter(table, requires_grad=False)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, emb)
    return tables


def gather_block_quantized_(proto: onnx.ModelProto, tables: list[QuantTable]) -> set[str]:
    """Replace each axis-0 ``Gather`` of a dequantized ``tables`` entry by
    ``GatherBlockQuantized``; returns the modules written."""
    graph = proto.graph
    constants_to_initializers_(graph)
    index = GraphIndex(graph)
    lookup = {digest(t.table): t for t in tables}
    made: dict[str, tuple[str, str]] = {}
    nodes, found = [], set()
    for node in graph.node:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        value = index.constant(node.input[0]) if node.op_type == "Gather" and axis == 0 else None
        t = lookup.get(digest(value)) if value is not None and value.dtype == np.float32 \
            else None
        if t is None:
            nodes.append(node)
            continue
        if t.module not in made:
            made[t.module] = (index.add_initializer(f"{t.module}_quantized", t.data),
                              index.add_initializer(f"{t.module}_scales", t.scales))
        data, scales = made[t.module]
        nodes.append(onnx.helper.make_node(
            "GatherBlockQuantized", [data, node.input[1], scales], list(node.output),
            domain=MS_DOMAIN, name=index.fresh(f"{t.module}_GatherBlockQuantized"),
            gather_axis=0, quantize_axis=1, block_size=t.block, bits=t.bits))
        found.add(t.module)
    del graph.node[:]
    graph.node.extend(nodes)
    remove_dead(graph)
    if found:
        use_ms_domain_(proto)
    return found
