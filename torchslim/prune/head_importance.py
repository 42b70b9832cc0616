"""How much each attention head and MLP channel of a transformer matters.

A scorer gives, per layer, three tensors: one score per query head (its q rows and its
o columns), one per KV head (its k and v rows) and one per MLP channel (its up and gate
rows and its down column). ``prune_heads_`` adds a KV head's score to those of the
query heads that read it when whole groups go. Within a layer the scores only rank, so
sums of squares stand for L2 norms.

- ``l1`` / ``l2``: magnitude of the weights the unit would take with it.
- ``taylor``: ``|w * dL/dw|`` summed over the same weights (Molchanov et al. 2019), the
  gradients of the model's own loss on ``data``: an LM head's next-token loss, or
  ``labels=target`` when the batches carry targets.
- ``activation``: what the unit adds to the residual stream on ``data``,
  ``sum_t ||W_o[:, h] x_t,h||^2`` per head (from the o projection's input covariance)
  and ``sum_t x_t,c^2 ||W_down[:, c]||^2`` per channel; padded tokens left out.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from torchslim._registry import Registry
from torchslim.errors import ConfigError, DataFormatError
from torchslim.prune.attention import TransformerLayer, out_major

__all__ = ["HEAD_IMPORTANCE", "DATA_IMPORTANCE", "Scores", "batches_of"]

Batch = tuple[dict[str, Tensor], Any]  # (model inputs, target or None)
Scores = tuple[Tensor, Tensor, Tensor]  # (heads,), (kv_heads,), (width,); empty: no block
Scorer = Callable[[nn.Module, list[TransformerLayer], list[Batch]], list[Scores]]
HEAD_IMPORTANCE: Registry[Scorer] = Registry("head importance")
DATA_IMPORTANCE = ("taylor", "activation")  # the scorers that need data


def batches_of(data: Iterable[Any], limit: int, device: torch.device) -> list[Batch]:
    """Up to ``limit`` batches of ``data`` as ``(inputs, target)``: each item a dict of
    the model's inputs or an ``(inputs, target)`` pair (``text_batches``)."""
    out: list[Batch] = []
    for item in data:
        if len(out) >= limit:
            break
        if isinstance(item, Mapping):
            inputs, target = item, None
        elif isinstance(item, (tuple, list)) and item and isinstance(item[0], Mapping):
            inputs, target = item[0], (item[1] if len(item) > 1 else None)
        else:
            raise DataFormatError(f"prune_heads_ data yields dicts of model inputs or (inputs, "
                                  f"target) pairs (torchslim.transformers.text_batches); got "
                                  f"{type(item).__name__}")
        moved = {k: v.to(device) for k, v in inputs.items()}
        out.append((moved, target.to(device) if isinstance(target, Tensor) else target))
    if not out:
        raise DataFormatError("prune_heads_ got data with no batch in it")
    return out


def _weight_scores(hf: nn.Module, layers: list[TransformerLayer],
                   element: Callable[[nn.Parameter], Tensor]) -> list[Scores]:
    def rows(name: str) -> Tensor:  # (out, in) of what the unit takes from this weight
        module = hf.get_submodule(name)
        return out_major(module, element(module.weight)).detach().double()

    out = []
    for layer in layers:
        q = kv = ch = torch.zeros(0, dtype=torch.float64)
        if (a := layer.attention) is not None:
            q_width, kv_width = a.heads * a.head_dim, a.kv_heads * a.head_dim
            if len(a.qkv) == 1:  # fused: q, k, v blocks of one weight
                fused = rows(a.qkv[0])
                q_rows, k_rows, v_rows = fused.split([q_width, kv_width, kv_width])
            else:
                q_rows, k_rows, v_rows = (rows(n) for n in a.qkv)
            o_cols = rows(a.o).t()  # (heads*head_dim, hidden)
            q = (q_rows.reshape(a.heads, -1).sum(1) + o_cols.reshape(a.heads, -1).sum(1))
            kv = k_rows.reshape(a.kv_heads, -1).sum(1) + v_rows.reshape(a.kv_heads, -1).sum(1)
        if (m := layer.mlp) is not None:
            ch = sum(rows(n).sum(1) for n in m.up) + rows(m.down).sum(0)
        out.append((q, kv, ch))
    return out


@HEAD_IMPORTANCE.register("l1")
def l1(hf: nn.Module, layers: list[TransformerLayer], batches: list[Batch]) -> list[Scores]:
    """Sum of |w| over every weight a head or channel holds."""
    return _weight_scores(hf, layers, lambda w: w.abs())


@HEAD_IMPORTANCE.register("l2")
def l2(hf: nn.Module, layers: list[TransformerLayer], batches: list[Batch]) -> list[Scores]:
    """Squared L2 norm of every weight a head or channel holds (its group norm)."""
    return _weight_scores(hf, layers, lambda w: w.pow(2))


def _loss(hf: nn.Module, inputs: dict[str, Tensor], target: Any) -> Tensor:
    """The model's own loss: ``labels=target``, else an LM head's loss on its input ids."""
    takes_labels = "labels" in inspect.signature(hf.forward).parameters
    labels = target if isinstance(target, Tensor) else None
    if labels is None and takes_labels and hf.get_output_embeddings() is not None:
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        labels = ids if mask is None else ids.masked_fill(mask == 0, -100)
    if labels is None or not takes_labels:
        why = "has no head" if not takes_labels else "got batches without targets"
        raise ConfigError(f"importance='taylor' needs a loss: {type(hf).__name__} {why}; pass "
                          "(inputs, target) batches to a model with a head, or use "
                          "importance='activation'")
    return hf(**inputs, labels=labels).loss


@HEAD_IMPORTANCE.register("taylor")
def taylor(hf: nn.Module, layers: list[TransformerLayer], batches: list[Batch]) -> list[Scores]:
    """|w * dL/dw| over every weight a head or channel holds, the loss summed over
    ``batches``; the gradients are dropped afterwards."""
    hf.zero_grad(set_to_none=True)
    try:
        with torch.enable_grad():
            for inputs, target in batches:
                _loss(hf, inputs, target).backward()
        return _weight_scores(hf, layers, lambda w: (w * w.grad).abs() if w.grad is not None
                              else torch.zeros_like(w))
    finally:
        hf.zero_grad(set_to_none=True)


def _tokens(x: Tensor, mask: Tensor | None) -> Tensor:
    """``(batch, seq, features)`` -> ``(real tokens, features)``."""
    if mask is not None and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask.bool()]
    return x.reshape(-1, x.shape[-1])


@HEAD_IMPORTANCE.register("activation")
def activation(hf: nn.Module, layers: list[TransformerLayer],
               batches: list[Batch]) -> list[Scores]:
    """What each head and channel adds to the residual stream over ``batches``."""
    covs: dict[int, Tensor] = {}     # layer -> (heads, head_dim, head_dim), o's input
    energy: dict[int, Tensor] = {}   # layer -> (width,), sum of down's input squared
    mask: list[Tensor | None] = [None]

    def o_hook(i: int, heads: int, head_dim: int):
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = _tokens(args[0], mask[0]).double().reshape(-1, heads, head_dim)
            covs[i] = covs.get(i, 0) + torch.einsum("tnd,tne->nde", x, x)
        return hook

    def down_hook(i: int):
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            energy[i] = energy.get(i, 0) + _tokens(args[0], mask[0]).double().pow(2).sum(0)
        return hook

    handles = []
    for i, layer in enumerate(layers):
        if (a := layer.attention) is not None:
            handles.append(hf.get_submodule(a.o).register_forward_pre_hook(
                o_hook(i, a.heads, a.head_dim)))
        if (m := layer.mlp) is not None:
            handles.append(hf.get_submodule(m.down).register_forward_pre_hook(down_hook(i)))
    try:
        with torch.no_grad():
            for inputs, _ in batches:
                mask[0] = inputs.get("attention_mask")
                hf(**inputs)
    finally:
        for h in handles:
            h.remove()
    return [_activation_scores(hf, layer, covs.get(i), energy.get(i))
            for i, layer in enumerate(layers)]


def _activation_scores(hf: nn.Module, layer: TransformerLayer, cov: Tensor | None,
                       energy: Tensor | None) -> Scores:
    q = kv = ch = torch.zeros(0, dtype=torch.float64)
    if (a := layer.attention) is not None and cov is not None:
        o = hf.get_submodule(a.o)
        w = out_major(o, o.weight).detach().double().reshape(-1, a.heads, a.head_dim)
        gram = torch.einsum("knd,kne->nde", w, w)  # (heads, head_dim, head_dim)
        q, kv = (cov * gram).sum((1, 2)), torch.zeros(a.kv_heads, dtype=torch.float64)
    if (m := layer.mlp) is not None and energy is not None:
        down = hf.get_submodule(m.down)
        ch = energy * out_major(down, down.weight).detach().double().pow(2).sum(0)
    return q, kv, ch
