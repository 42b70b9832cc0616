"""Where the attention heads and MLP channels of a transformer are, found from its module
structure and its config, never from a list of model names.

The layer stack is the ``nn.ModuleList`` with ``config.num_hidden_layers`` entries. One
forward records the order in which each layer calls its projections (``nn.Linear`` or
transformers' ``Conv1D``); a self-attention layer then reads, whatever its names:

    q, k, v (or one fused qkv)   hidden -> heads*head_dim (k, v: kv_heads*head_dim)
    o                            heads*head_dim -> hidden
    up (and gate)                hidden -> width
    down                         width -> hidden       (the layer's last call)

Head ``h`` owns rows ``[h*head_dim, (h+1)*head_dim)`` of q (k and v: per KV head) and
the same columns of o: every Hugging Face attention views its projections as
``(..., heads, head_dim)``. A fused qkv holds the q, k and v blocks in that order.
Which of two same-shaped projections is q, k or v does not matter: all three lose the
same head's rows. ``prune_heads_`` checks the result numerically, so a layout this
reading gets wrong fails loudly instead of pruning the wrong rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from torchslim.errors import UnsupportedModelError
from torchslim.transformers.persist import resizable_layers

__all__ = ["AttentionBlock", "MlpBlock", "TransformerLayer", "common_parent", "find_layers",
           "head_shape", "in_out", "out_major"]


@dataclass(frozen=True)
class AttentionBlock:
    qkv: tuple[str, ...]  # (q, k, v) projections, or one fused qkv
    o: str                # the output projection, reading heads*head_dim
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:
        """Query heads per KV head (1 without grouped-query attention)."""
        return self.heads // self.kv_heads


@dataclass(frozen=True)
class MlpBlock:
    up: tuple[str, ...]  # up (and gate), hidden -> width
    down: str            # width -> hidden
    width: int


@dataclass(frozen=True)
class TransformerLayer:
    name: str
    attention: AttentionBlock | None  # None: not a self-attention this reading knows
    mlp: MlpBlock | None
    calls: tuple[str, ...] = ()       # its projections in call order
    why: str = ""                     # what was not recognised, in words

    def describe(self) -> str:
        a, m = self.attention, self.mlp
        att = (f"{a.heads} heads x {a.head_dim} ({a.kv_heads} KV) in "
               f"{', '.join(a.qkv)} -> {a.o}" if a else "attention not recognised")
        mlp = f"MLP {m.width} in {', '.join(m.up)} -> {m.down}" if m else "MLP not recognised"
        return f"{self.name}: {att}; {mlp}"


def in_out(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a Linear or a Conv1D (weight ``(in, out)``)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return int(module.weight.shape[0]), int(module.weight.shape[1])


def out_major(module: nn.Module, tensor: Tensor) -> Tensor:
    """``tensor`` (shaped like the module's weight) as ``(out, in)``."""
    return tensor if isinstance(module, nn.Linear) else tensor.t()


def head_shape(config: Any) -> tuple[int, int, int, int]:
    """``(hidden, heads, kv_heads, head_dim)`` from a transformers config."""
    hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    return hidden, heads, kv, head_dim


def layer_stack(hf: nn.Module) -> tuple[str, nn.ModuleList]:
    """The one ``nn.ModuleList`` of ``config.num_hidden_layers`` layers with projections."""
    count = getattr(hf.config, "num_hidden_layers", None)
    stacks = [(n, m) for n, m in hf.named_modules() if isinstance(m, nn.ModuleList)
              and count and len(m) == count and resizable_layers(m[0])]
    if len(stacks) != 1:
        found = ", ".join(n for n, _ in stacks) or "none"
        raise UnsupportedModelError(
            f"{type(hf).__name__}: expected one stack of config.num_hidden_layers={count} "
            f"layers with projections, found {found}; prune_heads_ handles encoder-only and "
            "decoder-only transformers (prune others with prune_channels_)")
    return stacks[0]


def _call_order(hf: nn.Module, stack: str, inputs: dict[str, Tensor]) -> list[list[str]]:
    """Per layer, its projections in the order the forward first calls them."""
    layers = resizable_layers(hf)
    prefix = f"{stack}." if stack else ""
    order: dict[int, list[str]] = {}

    def hook(name: str):
        index = int(name[len(prefix):].split(".", 1)[0])

        def record(module: nn.Module, args: Any, out: Any) -> None:
            calls = order.setdefault(index, [])
            if name not in calls:
                calls.append(name)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()
               if n.startswith(prefix) and n[len(prefix):].split(".", 1)[0].isdigit()]
    was_training = hf.training
    hf.eval()
    try:
        with torch.no_grad():
            hf(**inputs)
    finally:
        for h in handles:
            h.remove()
        hf.train(was_training)
    count = len(hf.get_submodule(stack))
    return [order.get(i, []) for i in range(count)]


def _mlp(calls: list[str], shapes: dict[str, tuple[int, int]], hidden: int
         ) -> tuple[MlpBlock | None, int]:
    """The MLP at the end of ``calls`` and where it starts (``len(calls)`` when none)."""
    if not calls or shapes[calls[-1]][1] != hidden:
        return None, len(calls)
    down = calls[-1]
    width = shapes[down][0]
    ups: list[str] = []
    for name in reversed(calls[:-1]):
        if len(ups) == 2 or shapes[name] != (hidden, width):
            break
        ups.insert(0, name)
    if not ups or width == hidden:
        return None, len(calls)
    return MlpBlock(tuple(ups), down, width), len(calls) - 1 - len(ups)


def _attention(calls: list[str], shapes: dict[str, tuple[int, int]], hidden: int, heads: int,
               kv: int, head_dim: int) -> AttentionBlock | None:
    if len(calls) not in (2, 4):
        return None
    *qkv, o = calls
    q_width, kv_width = heads * head_dim, kv * head_dim
    if shapes[o] != (q_width, hidden):
        return None
    if len(qkv) == 1:
        return AttentionBlock(tuple(qkv), o, heads, kv, head_dim) \
            if shapes[qkv[0]] == (hidden, q_width + 2 * kv_width) else None
    if any(shapes[n][0] != hidden for n in qkv):
        return None
    q = next((n for n in qkv if shapes[n][1] == q_width), None)
    rest = [n for n in qkv if n != q] if q else []
    if len(rest) != 2 or any(shapes[n][1] != kv_width for n in rest):
        return None
    return AttentionBlock((q, *rest), o, heads, kv, head_dim)


def _shapes_said(calls: list[str], shapes: dict[str, tuple[int, int]]) -> str:
    return ", ".join(f"{n.rsplit('.', 1)[-1]} {shapes[n][0]}->{shapes[n][1]}" for n in calls)


def find_layers(hf: nn.Module, inputs: dict[str, Tensor]) -> list[TransformerLayer]:
    """Every layer of ``hf`` (a transformers model) with its attention and MLP blocks,
    read from one forward on ``inputs``; a part that does not read as above is None, and
    ``why`` says what the layer called instead."""
    hidden, heads, kv, head_dim = head_shape(hf.config)
    stack, _ = layer_stack(hf)
    shapes = {n: in_out(m) for n, m in resizable_layers(hf).items()}
    out = []
    for index, calls in enumerate(_call_order(hf, stack, inputs)):
        mlp, start = _mlp(calls, shapes, hidden)
        attention = _attention(calls[:start], shapes, hidden, heads, kv, head_dim)
        why = "" if attention and mlp else (
            f"it calls {_shapes_said(calls, shapes) or 'no projection'}; expected q, k, v "
            f"(or one fused qkv) reading {hidden}, an output projection "
            f"{heads * head_dim}->{hidden}, then up (and gate) {hidden}->width and down "
            f"width->{hidden}")
        out.append(TransformerLayer(f"{stack}.{index}", attention, mlp, tuple(calls), why))
    return out


def common_parent(layer: str, names: tuple[str, ...] | list[str]) -> str:
    """The innermost module inside ``layer`` that holds every one of ``names`` (``layer``
    itself when none does): BERT's q, k, v and o -> ``attention``."""
    paths = [ancestors(layer, n) for n in names]
    common = [p for p, *others in zip(*paths) if all(o == p for o in others)] if paths else []
    return common[-1] if common else layer


def ancestors(layer: str, name: str) -> list[str]:
    """Module names strictly between ``layer`` and ``name`` (its parents inside the layer)."""
    rest = name[len(layer) + 1:].split(".")[:-1]
    return [".".join([layer, *rest[:i + 1]]) for i in range(len(rest))]
