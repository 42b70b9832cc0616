"""Structured channel pruning: score coupled channel groups, remove the weakest, rewrite
every affected layer so the result is an ordinary, smaller ``nn.Module``.

>>> result = prune_channels_(model, ChannelPruneConfig(target_macs=0.5, importance="l2"),
...                 example_inputs=torch.zeros(1, 1, 28, 28))
>>> result.macs_after / result.macs_before   # measured on the rewritten model
0.49...
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from torch import Tensor, nn

from torchslim._record import update_
from torchslim.errors import ConfigError, UnsupportedModelError
from torchslim.evaluation.model_stats import count_macs, count_params
from torchslim.prune.config import SCOPES, ChannelPruneConfig
from torchslim.prune.depth import remove_blocks_
from torchslim.prune.graph import CouplingGraph
from torchslim.prune.guard import ModelSnapshot, PlanTrial, breaking_groups
from torchslim.prune.importance import IMPORTANCE, accumulate_gradients_, needs_gradients
from torchslim.prune.planner import CostModel, choose, plan_ratios

__all__ = ["SCOPES", "ChannelPruneConfig", "PruneResult", "CostModel", "prune_channels_",
           "remove_blocks_first_", "plan_ratios", "layer_shapes", "shape_changes"]

logger = logging.getLogger(__name__)

@dataclass
class PruneResult:
    """What was removed, measured on the rewritten model."""

    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> before/after shapes
    groups: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> size before/after
    removed_blocks: list[str] = field(default_factory=list)  # residual blocks removed whole
    protected: dict[str, str] = field(default_factory=dict)  # layer -> why its group stayed

    @property
    def mac_ratio(self) -> float:
        return self.macs_after / max(self.macs_before, 1)

    @property
    def param_ratio(self) -> float:
        return self.params_after / max(self.params_before, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"macs_before": self.macs_before, "macs_after": self.macs_after,
                "params_before": self.params_before, "params_after": self.params_after,
                "mac_ratio": round(self.mac_ratio, 4), "param_ratio": round(self.param_ratio, 4),
                "layers": self.layers, "groups": self.groups,
                "removed_blocks": self.removed_blocks, "protected": self.protected}


def prune_channels_(model: nn.Module, config: ChannelPruneConfig, *, example_inputs: Any,
                    data: Iterable[Any] | None = None) -> PruneResult:
    """Remove channels from ``model`` in place; returns the measured before/after figures.

    ``example_inputs`` is one batch: a tensor, a tuple or a dict of tensors (shapes and
    dtypes matter, values not). ``data`` yields ``(x, y)`` batches; the Taylor importance
    and the block-removal loss need it. With ``config.blocks``, whole residual blocks go
    first (``remove_blocks_``) and the channels then make up the rest of the target, which
    stays relative to the model as given.

    The pruned model is checked by a forward pass (outputs of the same shapes as before).
    Groups whose removal breaks it (a size stored in the model, a layer Torch-Pruning cannot
    rewrite) are protected and the plan made again without them (``auto_protect``), or the
    call fails naming them; ``PruneResult.protected`` says which layers were kept and why.
    On any error the model is left exactly as it was.
    """
    snapshot = ModelSnapshot(model)
    try:
        return _prune(model, config, example_inputs, data)
    except BaseException:
        snapshot.restore()
        raise


def _prune(model: nn.Module, config: ChannelPruneConfig, example_inputs: Any,
           data: Iterable[Any] | None) -> PruneResult:
    original = config
    before = layer_shapes(model)
    macs0, params0 = count_macs(model, example_inputs=example_inputs), count_params(model)
    removed, config = remove_blocks_first_(model, config, example_inputs=example_inputs, data=data)
    graph, plan, auto = _prune_what_runs(model, config, example_inputs, data)
    update_(model, reshaped=True)
    result = PruneResult(macs0, count_macs(model, example_inputs=example_inputs), params0,
                         count_params(model),
                         layers=shape_changes(before, layer_shapes(model)),
                         groups={g.name: {"before": g.size,
                                          "after": g.size - len(plan.get(g.name, []))}
                                 for g in graph.groups},
                         removed_blocks=removed,
                         protected=_protected_reasons(config, graph, auto))
    _check_target(original, result)
    logger.info("pruned %s: MACs %.1f%%, params %.1f%% of the original",
                type(model).__name__, 100 * result.mac_ratio, 100 * result.param_ratio)
    return result


def _prune_what_runs(model: nn.Module, config: ChannelPruneConfig, example_inputs: Any,
                     data: Iterable[Any] | None
                     ) -> tuple[CouplingGraph, dict[str, list[int]], dict[str, str]]:
    """Plan, prune and check the forward; when it breaks, find the groups at fault,
    protect them and plan again. Returns the graph and plan applied and ``{layer: why}``
    for the groups protected on the way."""
    trial = PlanTrial(model, example_inputs)
    auto: dict[str, str] = {}
    scores: dict[str, Tensor] | None = None
    for _ in range(_ATTEMPTS):
        protected = (*config.protected, *auto)
        graph = CouplingGraph(model, example_inputs, protected=protected)
        if not graph.groups:
            raise ConfigError(f"{type(model).__name__} has no prunable channel group "
                              f"(protected: {', '.join(graph.protected)})")
        if not _scored(graph, scores):
            # protecting a layer can split or merge the groups around it (SqueezeNet's fire
            # modules): score again rather than look up a group that was not scored
            scores = _scores(model, config, graph, data)
        plan = _plan(model, config, graph, scores, example_inputs)
        why = trial.apply(graph, plan)
        if why is None:
            return graph, plan, auto
        broken = breaking_groups(plan, lambda part: trial(part, protected), why)
        if not config.auto_protect:
            raise UnsupportedModelError(_breaking_message(model, graph, broken))
        by_name = {g.name: g for g in graph.groups}
        auto.update({name: f"pruning {by_name[name].describe()} breaks the model: {reason}"
                     for name, reason in broken.items()})
        logger.warning("protected %d channel group(s) of %s whose pruning breaks it: %s",
                       len(broken), type(model).__name__, ", ".join(broken))
    raise UnsupportedModelError(f"pruning {type(model).__name__} still breaks it after "
                                f"protecting {', '.join(auto)}; protect more layers with "
                                "protected=(...)")


_ATTEMPTS = 3  # plan, protect what broke, plan again (and once more for a hidden second)


def _scored(graph: CouplingGraph, scores: dict[str, Tensor] | None) -> bool:
    """Every group of ``graph`` has a score of its size (the groups left after protecting
    more usually keep theirs)."""
    return scores is not None and all(
        g.name in scores and scores[g.name].numel() == g.size for g in graph.groups)


def _scores(model: nn.Module, config: ChannelPruneConfig, graph: CouplingGraph,
            data: Iterable[Any] | None) -> dict[str, Tensor]:
    if needs_gradients(config.importance):
        if data is None:
            raise ConfigError(f"importance={config.importance!r} needs data=(x, y) batches "
                              "for its gradients")
        accumulate_gradients_(model, data, num_batches=config.taylor_batches)
    scores = {g.name: IMPORTANCE.get(config.importance)(g) for g in graph.groups}
    model.zero_grad(set_to_none=True)
    return scores


def _plan(model: nn.Module, config: ChannelPruneConfig, graph: CouplingGraph,
          scores: dict[str, Tensor], example_inputs: Any) -> dict[str, list[int]]:
    if _reached(config):
        return {}
    groups = graph.groups
    cost = CostModel(model, groups, example_inputs)
    return choose(config, groups, {g.name: scores[g.name] for g in groups}, cost)


def _breaking_message(model: nn.Module, graph: CouplingGraph, broken: dict[str, str]) -> str:
    by_name = {g.name: g for g in graph.groups}
    first, why = next(iter(broken.items()))
    more = f" (and {len(broken) - 1} more groups)" if len(broken) > 1 else ""
    return (f"pruning {type(model).__name__} breaks it: {by_name[first].describe()}{more}: "
            f"{why}; keep those channels with protected={tuple(broken)!r} or set "
            "auto_protect=True")


def _protected_reasons(config: ChannelPruneConfig, graph: CouplingGraph,
                       auto: dict[str, str]) -> dict[str, str]:
    """Every layer whose channel group was kept whole, and why."""
    reasons = {name: "protected= in the config" for name in config.protected}
    for name in graph.output_layers:
        reasons.setdefault(name, "the model's output layer: its channels are the outputs")
    reasons.update(auto)
    return reasons


def remove_blocks_first_(model: nn.Module, config: ChannelPruneConfig, *, example_inputs: Any,
                         data: Iterable[Any] | None = None) -> tuple[list[str], ChannelPruneConfig]:
    """Remove ``config.blocks`` from ``model`` in place; returns the names removed and the
    channel config (``blocks=0``) whose target, on the shallower model, lands on the
    original target. Without blocks, ``([], config)``."""
    if not config.blocks:
        return [], config
    macs0, params0 = count_macs(model, example_inputs=example_inputs), count_params(model)
    removed = remove_blocks_(model, config.blocks, example_inputs=example_inputs, data=data,
                             criterion=config.block_importance)
    mac_ratio = count_macs(model, example_inputs=example_inputs) / macs0
    param_ratio = count_params(model) / params0
    if config.target_macs is not None:
        return removed, replace(config, blocks=0, target_macs=min(1.0, config.target_macs / mac_ratio))
    if config.target_params is not None:
        return removed, replace(config, blocks=0,
                                target_params=min(1.0, config.target_params / param_ratio))
    return removed, replace(config, blocks=0)


def _reached(config: ChannelPruneConfig) -> bool:
    """True when removing blocks alone already met the MAC or parameter target."""
    return any(t is not None and t >= 1.0 for t in (config.target_macs, config.target_params))


def layer_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """``{name: (in, out)}`` channels / features of every conv and linear layer."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = (m.in_channels, m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = (m.in_features, m.out_features)
    return out


def shape_changes(before: dict[str, tuple[int, ...]],
                  after: dict[str, tuple[int, ...]]) -> dict[str, dict[str, Any]]:
    """``{name: {"in": [before, after], "out": [before, after]}}`` from two ``layer_shapes``."""
    return {name: {"in": [b[0], after[name][0]], "out": [b[1], after[name][1]]}
            for name, b in before.items() if name in after}


def _check_target(config: ChannelPruneConfig, result: PruneResult) -> None:
    for target, got, what in ((config.target_macs, result.mac_ratio, "MACs"),
                              (config.target_params, result.param_ratio, "parameters")):
        if target is not None and abs(got - target) > 0.03 * target:
            logger.warning("asked to keep %.1f%% of the %s, the pruned model keeps %.1f%% "
                           "(round_to=%s, max_ratio=%s limit how close it can get)",
                           100 * target, what, 100 * got, config.round_to, config.max_ratio)
