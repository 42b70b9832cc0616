"""``prune_(model, config)``: one entry point, dispatched on the config's type."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from torchslim.errors import ConfigError
from torchslim.prune.heads import HeadPruneConfig, HeadPruneResult, prune_heads_
from torchslim.prune.sparsity import SparsityConfig, sparsify_
from torchslim.prune.structured import ChannelPruneConfig, PruneResult, prune_channels_

Pruner = Callable[..., Any]
_BY_CONFIG: dict[type, Pruner] = {
    ChannelPruneConfig: lambda model, config, example_inputs, data: prune_channels_(
        model, config, example_inputs=_need(example_inputs), data=data),
    SparsityConfig: lambda model, config, example_inputs, data: sparsify_(model, config, data=data),
    HeadPruneConfig: lambda model, config, example_inputs, data: prune_heads_(
        model, config, data=data, example_inputs=example_inputs),
}


def prune_(model: nn.Module, config: ChannelPruneConfig | SparsityConfig | HeadPruneConfig, *,
           example_inputs: Any = None, data: Iterable[Any] | None = None
           ) -> PruneResult | HeadPruneResult | dict[str, float]:
    """Prune ``model`` in place.

    ``ChannelPruneConfig`` removes channels (needs ``example_inputs``, one batch: a
    tensor, a tuple or a dict of tensors, as the model takes them) and
    returns a ``PruneResult``; ``SparsityConfig`` zeroes weights (unstructured or N:M) and
    returns each layer's sparsity; ``HeadPruneConfig`` removes whole attention heads and
    MLP channels of a ``transformers`` model (its config updated) and returns a
    ``HeadPruneResult``. ``data`` yields ``(x, y)`` batches for Taylor scores (text
    batches for head importance).
    """
    pruner = _BY_CONFIG.get(type(config))
    if pruner is None:
        raise ConfigError(f"config must be a ChannelPruneConfig, SparsityConfig or "
                          f"HeadPruneConfig, got {type(config).__name__}")
    return pruner(model, config, example_inputs, data)


def _need(example_inputs: Any) -> Any:
    if example_inputs is None:
        raise ConfigError("structured pruning traces the model: pass example_inputs=<one batch>")
    return example_inputs
