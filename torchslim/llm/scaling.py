"""Per-input-channel scaling that leaves a model's function unchanged.

Dividing the input of some Linears by ``s`` (folded into the op that produces it: a
LayerNorm / RMSNorm weight and bias, or the output rows of the previous Linear) and
multiplying their weight columns by ``s`` gives the same outputs. AWQ picks ``s`` to
protect salient input channels from weight rounding; SmoothQuant picks it to move
activation outliers into the weights. Which producers and readers form a group is found
on the captured graph (``torchslim.llm.groups``), never from module names.

Linears are ``nn.Linear`` (weight ``(out, in)``) or transformers' ``Conv1D`` (GPT-2,
weight ``(in, out)``). Tensors are replaced, never written in place: a quantized copy
shares its untouched tensors with the original model, which must stay as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["ScaleGroup", "fold_scales_", "in_features", "out_features", "is_linear",
           "linear_weight", "relative"]


@dataclass(frozen=True)
class ScaleGroup:
    """``prev`` produces the input that every Linear in ``linears`` reads (and nothing
    else reads); ``kind`` is "norm" (a LayerNorm / RMSNorm) or "linear"."""

    prev: str
    linears: tuple[str, ...]
    kind: str = "norm"

    def describe(self) -> str:
        return f"{self.prev} -> {', '.join(self.linears)}"


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _transposed(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"  # weight (in, out)


def in_features(module: nn.Module) -> int:
    return int(module.weight.shape[0 if _transposed(module) else 1])


def out_features(module: nn.Module) -> int:
    return int(module.weight.shape[1 if _transposed(module) else 0])


def linear_weight(module: nn.Module) -> Tensor:
    """The weight as ``(out, in)``, whatever the layer stores."""
    w = module.weight.detach()
    return w.t() if _transposed(module) else w


def relative(groups: list[ScaleGroup], prefix: str) -> list[ScaleGroup]:
    """The groups wholly inside the submodule ``prefix``, with names relative to it."""
    p = f"{prefix}." if prefix else ""
    return [ScaleGroup(g.prev[len(p):], tuple(n[len(p):] for n in g.linears), g.kind)
            for g in groups if g.prev.startswith(p) and all(n.startswith(p) for n in g.linears)]


def _replace(module: nn.Module, attr: str, value: Tensor) -> None:
    old = getattr(module, attr)
    setattr(module, attr, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))


@torch.no_grad()
def fold_scales_(model: nn.Module, group: ScaleGroup, s: Tensor) -> None:
    """Input channel ``j`` of ``group.linears``: weights times ``s[j]``; the producer of
    that input divided by ``s[j]``."""
    prev = model.get_submodule(group.prev)
    s = s.to(torch.float32)  # (K,)
    if is_linear(prev):
        w = prev.weight
        shape = (1, -1) if _transposed(prev) else (-1, 1)  # output channels
        _replace(prev, "weight", w / s.reshape(shape).to(w.dtype))
    else:  # a norm with a per-channel weight (RMSNorm / LayerNorm)
        _replace(prev, "weight", prev.weight / s.to(prev.weight.dtype))
    if getattr(prev, "bias", None) is not None:
        _replace(prev, "bias", prev.bias / s.to(prev.bias.dtype))
    for name in group.linears:
        lin = model.get_submodule(name)
        shape = (-1, 1) if _transposed(lin) else (1, -1)  # input channels
        _replace(lin, "weight", lin.weight * s.reshape(shape).to(lin.weight.dtype))
