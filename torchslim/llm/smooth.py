"""SmoothQuant as a float-to-float transform, before static W8A8 quantization of any model.

``smooth_(model, calibration)`` finds the model's scale groups on its captured graph
(``torchslim.llm.groups``: LayerNorm / RMSNorm -> Linear and Linear -> Linear), measures
each group's per-channel activation maximum on the calibration batches, and folds
``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (Xiao et al., ICML 2023): the model computes
the same function, with activation outliers moved into the weights, so the static
quantizer (``torchslim.quantize(model, QuantConfig(), ...)``) loses less to them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from torchslim.capture.inputs import batch_inputs, call
from torchslim.errors import ConfigError
from torchslim.llm.algorithms import smooth_scales
from torchslim.llm.groups import find_scale_groups
from torchslim.llm.scaling import ScaleGroup, fold_scales_, linear_weight

__all__ = ["SmoothConfig", "SmoothResult", "smooth_"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SmoothConfig:
    """How ``smooth_`` migrates activation outliers into the weights."""

    alpha: float = 0.5       # migration strength: 0 keeps the activations, 1 the weights
    kinds: tuple[str, ...] = ("norm", "linear")  # producers to fold into
    num_batches: int = 16    # calibration batches for the activation maxima

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha={self.alpha!r} must be in [0, 1]")
        unknown = [k for k in self.kinds if k not in ("norm", "linear")]
        if unknown or not self.kinds:
            raise ConfigError(f"kinds={self.kinds!r}; choose from 'norm' and 'linear'")
        if not isinstance(self.num_batches, int) or self.num_batches < 1:
            raise ConfigError(f"num_batches={self.num_batches!r} must be a positive integer")


@dataclass
class SmoothResult:
    """What ``smooth_`` folded: one entry per group, "producer -> reader, ...", and notes
    (e.g. that the graph had no group to smooth)."""

    groups: list[str] = field(default_factory=list)
    alpha: float = 0.5
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"groups": list(self.groups), "alpha": self.alpha, "notes": list(self.notes)}


@torch.no_grad()
def _activation_max(model: nn.Module, groups: list[ScaleGroup], batches: list[Any]
                    ) -> dict[str, Tensor]:
    """``{first reader of each group: max |x| per input channel (K,)}`` over ``batches``."""
    seen: dict[str, Tensor] = {}
    handles = []
    for group in groups:
        name = group.linears[0]

        def hook(_m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(0).float()  # (K,)
            seen[name] = x if name not in seen else torch.maximum(seen[name], x)
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            call(model, batch)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


def smooth_(model: nn.Module, calibration: Iterable[Any], *,
            config: SmoothConfig = SmoothConfig(), example_inputs: Any = None) -> SmoothResult:
    """Fold SmoothQuant scales into ``model`` in place; returns the groups smoothed.

    ``calibration`` yields model inputs or ``(inputs, target)`` batches (tensors, tuples or
    dicts, e.g. ``torchslim.transformers.text_batches``); ``example_inputs`` (for the graph
    capture) defaults to the first batch. When the graph has no group, ``model`` is left
    as it was and the result (and a warning) says so."""
    if not isinstance(config, SmoothConfig):
        raise ConfigError(f"config must be a SmoothConfig, not {type(config).__name__}")
    batches = [batch_inputs(b) for _, b in zip(range(config.num_batches), calibration)]
    if not batches:
        raise ConfigError("smooth_ needs calibration batches; the calibration data is empty")
    sample = batches[0] if example_inputs is None else example_inputs
    groups = find_scale_groups(model, sample, kinds=config.kinds)
    result = SmoothResult(alpha=config.alpha)
    if not groups:
        note = (f"SmoothQuant found no {' or '.join(config.kinds)} -> Linear group in "
                f"{type(model).__name__}'s graph; nothing was smoothed")
        logger.warning("%s", note)
        result.notes.append(note)
        return result
    act_max = _activation_max(model, groups, batches)
    for group in groups:
        x_max = act_max.get(group.linears[0])
        if x_max is None:
            result.notes.append(f"{group.describe()}: never ran on the calibration data; "
                                "left as it was")
            continue
        weights = [linear_weight(model.get_submodule(n)) for n in group.linears]
        fold_scales_(model, group, smooth_scales(x_max, weights, config.alpha))
        result.groups.append(group.describe())
    logger.info("SmoothQuant (alpha=%.2f): %d groups smoothed", config.alpha, len(result.groups))
    return result
