"""Integer embedding tables: the word embedding of a transformer is often its largest
tensor (BERT-base: 23 M of 110 M parameters), and a float table keeps an INT8 artifact at
twice the size it should be.

``quantize_embeddings_(model)`` replaces each large ``nn.Embedding`` by an
:class:`IntEmbedding`: symmetric int8 (or int4) codes with one scale per block of
``block_size`` columns (a power of two dividing the width when there is one, so ONNX
Runtime's ``GatherBlockQuantized`` takes the same layout), looked up first and scaled
after, so only the rows a batch reads are turned back into floats. 8-bit tables export as
they compute in every writer (a ``Gather`` of the int8 table and of the scales, ``Cast``,
``Mul``); ``export_int4`` writes ``GatherBlockQuantized`` for 8- and 4-bit tables. The
table costs one byte (half a byte) per value in the file and in memory.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchslim.errors import ConfigError

__all__ = ["IntEmbedding", "quantize_embeddings_", "default_block"]

logger = logging.getLogger(__name__)


def default_block(width: int) -> int:
    """The largest power of two in [16, 128] dividing ``width`` (what GatherBlockQuantized
    takes), else ``width`` itself (one scale per row)."""
    for block in (128, 64, 32, 16):
        if width % block == 0:
            return block
    return width


class IntEmbedding(nn.Module):
    """``nn.Embedding`` with a ``bits``-bit table: ``row = codes[id] * scale[id]`` per block
    of ``block_size`` columns. 4-bit codes are stored two per byte (even column in the low
    nibble) as unsigned ``q + 8``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, bits: int = 8,
                 block_size: int | None = None, padding_idx: int | None = None) -> None:
        super().__init__()
        block = block_size or default_block(embedding_dim)
        if bits not in (4, 8):
            raise ConfigError(f"bits={bits!r} must be 4 or 8")
        if embedding_dim % block or (bits == 4 and block % 2):
            raise ConfigError(f"block_size={block} must divide embedding_dim={embedding_dim}"
                              " (and be even for 4 bits)")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.bits, self.block_size, self.padding_idx = bits, block, padding_idx
        width = embedding_dim if bits == 8 else embedding_dim // 2
        self.register_buffer("qweight", torch.zeros(num_embeddings, width,
                                                    dtype=torch.int8 if bits == 8 else torch.uint8))
        self.register_buffer("scales", torch.ones(num_embeddings, embedding_dim // block))

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @classmethod
    def from_float(cls, embedding: nn.Embedding, *, bits: int = 8,
                   block_size: int | None = None) -> IntEmbedding:
        w = embedding.weight.detach().float()  # (V, D)
        new = cls(w.shape[0], w.shape[1], bits=bits, block_size=block_size,
                  padding_idx=embedding.padding_idx)
        blocks = w.reshape(w.shape[0], -1, new.block_size)  # (V, G, block)
        scale = (blocks.abs().amax(dim=-1) / new.qmax).clamp(min=1e-12)  # (V, G)
        q = torch.round(blocks / scale.unsqueeze(-1)).clamp(-new.qmax - 1, new.qmax)
        q = q.reshape(w.shape)
        if bits == 8:
            new.qweight = q.to(torch.int8)
        else:
            u = (q + 8).to(torch.uint8)
            new.qweight = u[:, 0::2] | (u[:, 1::2] << 4)
        new.scales = scale
        return new

    def codes(self, rows: Tensor) -> Tensor:
        """Signed integer codes (float) of some stored rows ``(..., width)``."""
        if self.bits == 8:
            return rows.float()
        lo, hi = (rows & 0x0F).float(), (rows >> 4).float()
        return torch.stack((lo, hi), dim=-1).reshape(*rows.shape[:-1], -1) - 8.0

    def weight_float(self) -> Tensor:
        """The dequantized ``(V, D)`` float32 table."""
        blocks = self.codes(self.qweight).reshape(self.num_embeddings, -1, self.block_size)
        return (blocks * self.scales.unsqueeze(-1)).reshape(self.num_embeddings, -1)

    def forward(self, ids: Tensor) -> Tensor:
        codes = self.codes(F.embedding(ids, self.qweight))  # (..., D): the rows looked up
        scales = F.embedding(ids, self.scales)  # (..., G)
        if self.block_size == self.embedding_dim:
            return codes * scales
        shape = codes.shape
        grouped = codes.reshape(*shape[:-1], -1, self.block_size)  # (..., G, block)
        return (grouped * scales.unsqueeze(-1)).reshape(shape)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, int{self.bits}, "
                f"block_size={self.block_size}")


def quantize_embeddings_(model: nn.Module, *, bits: int = 8, min_rows: int = 1024,
                         block_size: int | None = None) -> list[str]:
    """Replace every ``nn.Embedding`` of at least ``min_rows`` rows (the word table, not
    position or token-type tables) by a ``bits``-bit ``IntEmbedding``, in place; returns their
    names. A table tied to an output projection (a decoder's LM head) is left float: the
    head reads the same tensor."""
    heads = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    done = []
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Embedding or module.num_embeddings < min_rows:
            continue
        if id(module.weight) in heads:
            logger.info("%s: tied to an output projection; kept float", name)
            continue
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr,
                IntEmbedding.from_float(module, bits=bits, block_size=block_size))
        done.append(name)
    logger.info("int%d embeddings: %s", bits, ", ".join(done) or "none large enough")
    return done
