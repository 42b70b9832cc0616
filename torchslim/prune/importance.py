"""How much each channel of a group matters: one score per channel, summed over members.

A group's score for channel ``c`` adds up what every member holds of it: the output
filter of each producing layer, the input slice of each consuming layer, the BatchNorm
scale (DepGraph's group importance, Fang et al. 2023). Scores are then divided by their
group mean so that a global ranking compares channels across groups fairly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchslim._registry import Registry
from torchslim.prune.graph import ChannelGroup, Member

# (member, tensor of that member, per-element transform) -> per-index score
ElementScore = Callable[[Tensor], Tensor]
Importance = Callable[[ChannelGroup], Tensor]
IMPORTANCE: Registry[Importance] = Registry("importance")


def _slices(member: Member, tensor: Tensor) -> Tensor:
    """Rows of ``tensor`` that belong to the member's indices: (len(idxs), -1)."""
    module, idxs = member.module, torch.tensor(member.idxs)
    if member.dim == "out" or tensor.dim() == 1:
        return tensor.index_select(0, idxs).reshape(len(idxs), -1)
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
        # Grouped/depthwise conv: input channel i lives in the weight's output rows of
        # its group; the pruner removes those rows, so score them.
        return tensor.index_select(0, idxs).reshape(len(idxs), -1)
    return tensor.transpose(0, 1).index_select(0, idxs).reshape(len(idxs), -1)


def _accumulate(group: ChannelGroup, per_tensor: Callable[[Member], Iterable[Tensor]]) -> Tensor:
    score = torch.zeros(group.size, dtype=torch.float64)
    for member in group.members:
        for t in per_tensor(member):
            local = _slices(member, t.detach()).double().sum(dim=1)  # (len(idxs),)
            score.index_add_(0, torch.tensor(member.root_idxs), local)
    return score


def _weights(member: Member, norm_too: bool = True) -> list[Tensor]:
    module = member.module
    if member.dim == "norm":
        w = getattr(module, "weight", None)
        return [w] if norm_too and isinstance(w, Tensor) else []
    return [module.weight]


@IMPORTANCE.register("l1")
def l1(group: ChannelGroup) -> Tensor:
    """Sum of |w| over every weight the group would remove."""
    return _accumulate(group, lambda m: [w.abs() for w in _weights(m)])


@IMPORTANCE.register("l2")
def l2(group: ChannelGroup) -> Tensor:
    """L2 norm of every weight the group would remove (group norm)."""
    return _accumulate(group, lambda m: [w.pow(2) for w in _weights(m)]).sqrt()


@IMPORTANCE.register("bn")
def bn_scale(group: ChannelGroup) -> Tensor:
    """|gamma| of the group's BatchNorm layers (network slimming); L2 where it has none."""
    norms = [m for m in group.members if m.dim == "norm"
             and isinstance(m.module, nn.modules.batchnorm._BatchNorm) and m.module.affine]
    if not norms:
        return l2(group)
    return _accumulate(ChannelGroup(group.name, group.size, norms),
                       lambda m: [m.module.weight.abs()])


@IMPORTANCE.register("taylor")
def taylor(group: ChannelGroup) -> Tensor:
    """First-order Taylor |w * dL/dw| summed over the channel (Molchanov et al. 2019);
    needs gradients from ``accumulate_gradients_``."""
    def terms(member: Member) -> list[Tensor]:
        module = member.module
        out = []
        for name in ("weight", "bias") if member.dim == "norm" else ("weight",):
            p = getattr(module, name, None)
            if isinstance(p, Tensor) and p.grad is not None:
                out.append((p * p.grad).abs())
        return out
    return _accumulate(group, terms)


def needs_gradients(name: str) -> bool:
    return name == "taylor"


def accumulate_gradients_(model: nn.Module, data: Iterable[Any], *, num_batches: int = 8) -> int:
    """Sum the cross-entropy gradients of ``num_batches`` batches into ``.grad``
    (eval mode: BatchNorm uses its running statistics). Returns the batches used."""
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    used = 0
    with torch.enable_grad():
        for batch in data:
            if used >= num_batches:
                break
            x, y = batch[0], batch[1]
            F.cross_entropy(model(x), y).backward()
            used += 1
    model.train(was_training)
    return used


def normalized(score: Tensor) -> Tensor:
    """Divide by the group mean so groups of different sizes and scales compare."""
    return score / score.mean().clamp_min(1e-12)
