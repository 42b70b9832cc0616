"""Unstructured and N:M weight masks that survive fine-tuning, QAT and export.

``sparsify_`` zeroes weights of conv/linear layers and marks those layers
(``record_of(layer).masked``); ``fit`` then keeps the zeros exactly zero (see
``torchslim.train.masks``), QAT inherits them, and exporters write them as zeros, so the
artifact compresses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from torchslim.errors import ConfigError
from torchslim.prune.importance import accumulate_gradients_
from torchslim._record import record_of, update_

logger = logging.getLogger(__name__)

PATTERNS = ("unstructured", "n:m")
SCORES = ("magnitude", "taylor")
LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True, kw_only=True)
class SparsityConfig:
    """Which weights to zero: ``sparsity`` of them (unstructured), or N of every M
    consecutive input weights (``pattern="n:m"`` with n=2, m=4, or ``pattern="2:4"``)."""

    sparsity: float = 0.5
    pattern: str = "unstructured"       # "unstructured", "n:m", or N:M itself ("2:4")
    n: int = 2
    m: int = 4
    scope: str = "global"               # one threshold for all layers, or per layer
    score: str = "magnitude"            # |w|, or first-order Taylor |w * dL/dw|
    protected: tuple[str, ...] = ()     # layers left dense
    min_size: int = 64                  # layers with fewer weights stay dense (stems, biases)
    taylor_batches: int = 8

    def __post_init__(self) -> None:
        n, colon, m = str(self.pattern).partition(":")
        if colon and n.isdigit() and m.isdigit():  # "2:4" is pattern "n:m" with n=2, m=4
            object.__setattr__(self, "pattern", "n:m")
            object.__setattr__(self, "n", int(n))
            object.__setattr__(self, "m", int(m))
        if self.pattern not in PATTERNS:
            raise ConfigError(f"pattern={self.pattern!r}; use 'unstructured' or N:M such as "
                              "'2:4'")
        if self.score not in SCORES:
            raise ConfigError(f"score={self.score!r}; choose one of {SCORES}")
        if self.scope not in ("global", "layer"):
            raise ConfigError(f"scope={self.scope!r}; choose 'global' or 'layer'")
        if self.pattern == "unstructured" and not 0 <= self.sparsity < 1:
            raise ConfigError(f"sparsity={self.sparsity} must be in [0, 1)")
        if self.pattern == "n:m" and not 0 < self.n < self.m:
            raise ConfigError(f"n={self.n}, m={self.m}: need 0 < n < m (2:4 keeps 2 of every 4)")

    @property
    def pattern_name(self) -> str:
        """``"unstructured"`` or N:M, e.g. ``"2:4"``."""
        return f"{self.n}:{self.m}" if self.pattern == "n:m" else self.pattern

    @property
    def target(self) -> float:
        return 1 - self.n / self.m if self.pattern == "n:m" else self.sparsity


def sparsify_(model: nn.Module, config: SparsityConfig, *,
              data: Iterable[Any] | None = None) -> dict[str, float]:
    """Zero weights in place and mark the layers; returns each layer's sparsity."""
    layers = _layers(model, config)
    if not layers:
        raise ConfigError(f"no conv/linear layer of {type(model).__name__} qualifies "
                          f"(min_size={config.min_size}, protected={config.protected})")
    if config.score == "taylor":
        if data is None:
            raise ConfigError("score='taylor' needs data=(x, y) batches for its gradients")
        accumulate_gradients_(model, data, num_batches=config.taylor_batches)
    scores = {name: _score(m, config.score) for name, m in layers.items()}
    model.zero_grad(set_to_none=True)
    if config.pattern == "n:m":
        masks = {name: nm_mask(s, config.n, config.m) for name, s in scores.items()}
    elif config.scope == "global":
        masks = _global_masks(scores, config.sparsity)
    else:
        masks = {name: _layer_mask(s, config.sparsity) for name, s in scores.items()}
    return apply_masks_(model, masks)


def apply_masks_(model: nn.Module, masks: dict[str, Tensor]) -> dict[str, float]:
    """Zero where ``masks[name]`` is False, keep earlier zeros, mark the layers."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, keep in masks.items():
            layer = modules[name]
            layer.weight.mul_(keep.to(layer.weight.dtype))
            update_(layer, masked=True)
    return layer_sparsity(model)


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Share of exactly-zero weights per masked layer."""
    return {name: round(float((m.weight == 0).float().mean()), 6)
            for name, m in model.named_modules() if record_of(m).masked}


def nm_mask(score: Tensor, n: int, m: int) -> Tensor:
    """Keep the ``n`` largest of every ``m`` consecutive weights along the input axis.

    Conv weights (C_out, C_in, kh, kw) are grouped along C_in at each kernel position;
    C_in must be a multiple of ``m``."""
    if score.dim() < 2:
        raise ConfigError("N:M sparsity needs a weight with an input axis")
    moved = score.movedim(1, -1)                       # (C_out, *k, C_in)
    c_in = moved.shape[-1]
    if c_in % m:
        raise ConfigError(f"N:M needs input channels divisible by m={m}, got {c_in}; "
                          "protect the layer or choose another m")
    blocks = moved.reshape(-1, m)                       # (C_out * k * C_in/m, m)
    top = blocks.topk(n, dim=1).indices
    keep = torch.zeros_like(blocks, dtype=torch.bool).scatter_(1, top, True)
    return keep.reshape(moved.shape).movedim(-1, 1)


def _layers(model: nn.Module, config: SparsityConfig) -> dict[str, nn.Module]:
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, LAYERS) or name in config.protected:
            continue
        if m.weight.numel() < config.min_size:
            continue
        if config.pattern == "n:m" and m.weight.shape[1] % config.m:
            logger.info("%s stays dense: %d input channels not divisible by %d",
                        name, m.weight.shape[1], config.m)
            continue
        out[name] = m
    return out


def _score(layer: nn.Module, kind: str) -> Tensor:
    w = layer.weight.detach()
    if kind == "taylor":
        g = layer.weight.grad
        return (w * g).abs() if g is not None else w.abs()
    return w.abs()


def _layer_mask(score: Tensor, sparsity: float) -> Tensor:
    k = int(round(sparsity * score.numel()))
    keep = torch.ones_like(score, dtype=torch.bool)
    if k > 0:
        idx = score.flatten().argsort(stable=True)[:k]
        keep.view(-1)[idx] = False
    return keep


def _global_masks(scores: dict[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    flat = torch.cat([s.flatten() for s in scores.values()])
    k = int(round(sparsity * flat.numel()))
    if k == 0:
        return {name: torch.ones_like(s, dtype=torch.bool) for name, s in scores.items()}
    threshold = flat.kthvalue(k).values
    return {name: s > threshold for name, s in scores.items()}
