"""Per-input-channel scaling that leaves a decoder layer's function unchanged.

Dividing the input of some Linears by ``s`` (folded into the op that produces it: an
RMSNorm weight, or the output rows of the previous Linear) and multiplying their weight
columns by ``s`` gives the same outputs. AWQ picks ``s`` to protect salient input channels
from weight rounding; SmoothQuant picks it to move activation outliers into the weights.

Tensors are replaced, never written in place: a quantized copy shares its untouched
tensors with the original model, which must stay as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["ScaleGroup", "LLAMA_GROUPS", "scale_groups", "fold_scales_"]


@dataclass(frozen=True)
class ScaleGroup:
    """``prev`` produces the input that every Linear in ``linears`` reads."""

    prev: str
    linears: tuple[str, ...]


# Llama / Mistral / Qwen2-style decoder layers. v_proj -> o_proj is left out: with grouped
# query attention v_proj's outputs feed several heads and the shapes differ.
LLAMA_GROUPS = (
    ScaleGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    ScaleGroup("mlp.up_proj", ("mlp.down_proj",)),
)


def scale_groups(layer: nn.Module, *, include_linear_prev: bool = True) -> list[ScaleGroup]:
    """The groups of ``LLAMA_GROUPS`` that ``layer`` has, with foldable shapes."""
    names = dict(layer.named_modules())
    found = []
    for group in LLAMA_GROUPS:
        prev = names.get(group.prev)
        if prev is None or not all(n in names for n in group.linears):
            continue
        if isinstance(prev, nn.Linear) and not include_linear_prev:
            continue
        k = names[group.linears[0]].in_features
        if isinstance(prev, nn.Linear):
            width = prev.out_features
        else:  # a norm: its per-channel weight
            width = getattr(prev, "weight", torch.empty(0)).numel()
        if width == k:
            found.append(group)
    return found


def _replace(module: nn.Module, attr: str, value: Tensor) -> None:
    setattr(module, attr, nn.Parameter(value.contiguous(), requires_grad=False))


@torch.no_grad()
def fold_scales_(layer: nn.Module, group: ScaleGroup, s: Tensor) -> None:
    """Input channel ``j`` of ``group.linears``: weights times ``s[j]``, the producer of
    that input divided by ``s[j]``."""
    prev = layer.get_submodule(group.prev)
    s = s.to(torch.float32)  # (K,)
    if isinstance(prev, nn.Linear):
        _replace(prev, "weight", prev.weight / s[:, None].to(prev.weight.dtype))  # (K, in)
        if prev.bias is not None:
            _replace(prev, "bias", prev.bias / s.to(prev.bias.dtype))
    else:  # a norm with a per-channel weight (RMSNorm / LayerNorm)
        _replace(prev, "weight", prev.weight / s.to(prev.weight.dtype))
        if getattr(prev, "bias", None) is not None:
            _replace(prev, "bias", prev.bias / s.to(prev.bias.dtype))
    for name in group.linears:
        lin = layer.get_submodule(name)
        _replace(lin, "weight", lin.weight * s[None, :].to(lin.weight.dtype))  # (N, K)
