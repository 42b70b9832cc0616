"""Integer embedding tables: the word embedding of a transformer is often its largest
tensor (BERT-base: 23 M of 110 M parameters), and a float table keeps an INT8 artifact at
twice the size it should be.

``quantize_embeddings_(model)`` replaces each large token table (an ``nn.Embedding``
looked up by the input ids; ``choose_tables`` says which, and why the others stay float:
position and token-type tables, tied tables) by an :class:`IntEmbedding`: symmetric int8
(or int4) codes with one scale per block of ``block_size`` columns (a power of two
dividing the width when there is one, so ONNX Runtime's ``GatherBlockQuantized`` takes
the same layout), looked up first and scaled after, so only the rows a batch reads are turned back into floats. 8-bit tables export as
they compute in every writer (a ``Gather`` of the int8 table and of the scales, ``Cast``,
``Mul``); ``export_int4`` writes ``GatherBlockQuantized`` for 8- and 4-bit tables. The
table costs one byte (half a byte) per value in the file and in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchslim.errors import ConfigError

__all__ = ["IntEmbedding", "quantize_embeddings_", "choose_tables", "TableChoice", "default_block"]

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


@dataclass(frozen=True)
class TableChoice:
    """One ``nn.Embedding`` of a model: whether ``quantize_embeddings_`` replaces it, and why."""

    name: str
    rows: int
    quantize: bool
    reason: str


def choose_tables(model: nn.Module, *, min_rows: int = 1024,
                  example_inputs: Any = None) -> list[TableChoice]:
    """Each ``nn.Embedding`` of ``model`` and whether it is a token table to quantize.

    A token table is one whose rows are looked up by the model's integer input ids, not
    by positions (``arange`` / ``position_ids``) or anything else the model computes.
    With ``example_inputs`` this is observed: the table's lookup indices, on one forward,
    equal one of the integer inputs. Without them, a module that declares its input
    embedding (``get_input_embeddings()``, as every ``transformers`` model does) says which
    of the tables under it is the token table; a table under no such module is left float
    with a reason saying to pass ``example_inputs``."""
    tables = {n: m for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    heads = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    roles = (_observed(model, example_inputs, tables) if example_inputs is not None
             else _declared(model, tables))
    choices = []
    for name, module in tables.items():
        rows = module.num_embeddings
        if type(module) is not nn.Embedding:
            why = f"a {type(module).__name__}, not a plain nn.Embedding"
        elif rows < min_rows:
            why = f"{rows} rows < min_rows={min_rows}"
        elif id(module.weight) in heads:
            why = "tied to an output projection (the head reads the same tensor)"
        else:
            token, why = roles[name]
            choices.append(TableChoice(name, rows, token, why))
            continue
        choices.append(TableChoice(name, rows, False, why))
    return choices


def _declared(model: nn.Module, tables: dict[str, nn.Embedding]) -> dict[str, tuple[bool, str]]:
    """name -> (token table, why), from the outermost module declaring its input embedding."""
    owners: dict[int, tuple[str, nn.Module]] = {}
    for owner_name, owner in model.named_modules():
        get = getattr(owner, "get_input_embeddings", None)
        try:
            token = get() if callable(get) else None
        except (NotImplementedError, AttributeError):  # transformers' base class without one
            token = None
        if isinstance(token, nn.Module):
            for m in owner.modules():
                owners.setdefault(id(m), (owner_name or type(owner).__name__, token))
    roles = {}
    for name, module in tables.items():
        if id(module) not in owners:
            roles[name] = (False, "cannot tell whether the input ids index it (no module "
                                  "declares get_input_embeddings()); pass example_inputs= to "
                                  "observe its lookups")
            continue
        owner, token = owners[id(module)]
        roles[name] = (True, f"{owner}.get_input_embeddings()") if module is token else (
            False, f"not {owner}.get_input_embeddings(): a position / token-type table")
    return roles


@torch.no_grad()
def _observed(model: nn.Module, example_inputs: Any, tables: dict[str, nn.Embedding]
              ) -> dict[str, tuple[bool, str]]:
    """name -> (token table, why), from the indices each table reads on one forward."""
    from torchslim.capture.inputs import as_example_inputs

    inputs = as_example_inputs(example_inputs, model=model)
    ids = [(n, t) for n, t in inputs.tensors()
           if not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool]
    seen: dict[str, list[Tensor]] = {name: [] for name in tables}
    handles = [m.register_forward_pre_hook(
        lambda _m, args, name=name: seen[name].append(args[0].detach().clone()))
        for name, m in tables.items()]
    was_training = model.training
    model.eval()
    try:
        inputs.call(model)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    def source(idx: Tensor) -> str | None:  # the integer input these indices are
        return next((n for n, t in ids if t.numel() == idx.numel() and torch.equal(
            t.reshape(-1).to(idx.dtype), idx.reshape(-1))), None)

    roles = {}
    for name, calls in seen.items():
        found = next((n for n in map(source, calls) if n is not None), None)
        if found is not None:
            roles[name] = (True, f"looks up the input {found!r}")
        else:
            roles[name] = (False, "its indices are no model input (positions or other "
                                  "computed ids)" if calls else "not called on example_inputs")
    return roles


def quantize_embeddings_(model: nn.Module, *, bits: int = 8, min_rows: int = 1024,
                         block_size: int | None = None, example_inputs: Any = None) -> list[str]:
    """Replace each token table of ``model`` (an ``nn.Embedding`` of at least ``min_rows``
    rows looked up by the input ids, ``choose_tables``) by a ``bits``-bit ``IntEmbedding``,
    in place; returns their names. Position and token-type tables, and a table tied to an
    output projection (a decoder's LM head reads the same tensor), stay float; each table
    left float is logged with its reason (``choose_tables`` returns them)."""
    done = []
    for choice in choose_tables(model, min_rows=min_rows, example_inputs=example_inputs):
        if not choice.quantize:
            logger.info("%s (%d rows): kept float: %s", choice.name, choice.rows, choice.reason)
            continue
        module = model.get_submodule(choice.name)
        parent, _, attr = choice.name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr,
                IntEmbedding.from_float(module, bits=bits, block_size=block_size))
        done.append(choice.name)
        logger.info("%s (%d rows): int%d, %s", choice.name, choice.rows, bits, choice.reason)
    if not done:
        logger.warning("quantize_embeddings_: no token table in %s was quantized (see the "
                       "reasons logged above, or choose_tables(model))", type(model).__name__)
    return done
