"""Structured channel pruning: score coupled channel groups, remove the weakest, rewrite
every affected layer so the result is an ordinary, smaller ``nn.Module``.

>>> result = prune_channels_(model, ChannelPruneConfig(target_macs=0.5, importance="l2"),
...                 example_inputs=torch.zeros(1, 1, 28, 28))
>>> result.macs_after / result.macs_before   # measured on the rewritten model
0.49...
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from torchslim._record import update_
from torchslim.errors import ConfigError
from torchslim.evaluation.model_stats import count_macs, count_params
from torchslim.prune.depth import BLOCK_IMPORTANCE, remove_blocks_
from torchslim.prune.graph import ChannelGroup, CouplingGraph, Member, forward_once
from torchslim.prune.importance import (IMPORTANCE, accumulate_gradients_, needs_gradients,
                                        normalized)

__all__ = ["SCOPES", "ChannelPruneConfig", "PruneResult", "CostModel", "prune_channels_",
           "remove_blocks_first_", "plan_ratios", "layer_shapes", "shape_changes"]

logger = logging.getLogger(__name__)

SCOPES = ("global", "uniform")


@dataclass(frozen=True, kw_only=True)
class ChannelPruneConfig:
    """What to remove. Give exactly one of ``ratio``, ``target_macs``, ``target_params``
    (or per-group ``ratios``, e.g. from ``sensitivity_ratios``)."""

    ratio: float | None = None          # share of each group's channels to remove
    target_macs: float | None = None    # keep this fraction of the MACs (0.5 = 2x fewer)
    target_params: float | None = None  # keep this fraction of the parameters
    ratios: dict[str, float] | None = None  # group name -> share to remove
    importance: str = "l2"              # l1, l2, bn, taylor
    scope: str = "global"               # rank channels across groups, or the same share each
    round_to: int | None = None         # kept channel counts are multiples of this
    protected: tuple[str, ...] = ()     # layers whose output channels stay (stem, classifier)
    max_ratio: float = 0.9              # never remove more than this share of one group
    taylor_batches: int = 8             # batches for the Taylor gradients
    blocks: int | tuple[str, ...] = 0   # residual blocks to remove first: a count or names
    block_importance: str = "loss"      # loss (val loss when bypassed) or residual

    def __post_init__(self) -> None:
        given = [n for n in ("ratio", "target_macs", "target_params", "ratios")
                 if getattr(self, n) is not None]
        if len(given) != 1:
            raise ConfigError(f"give exactly one of ratio, target_macs, target_params, ratios "
                              f"(got {', '.join(given) or 'none'})")
        for name in ("target_macs", "target_params"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                what = "MACs" if name == "target_macs" else "parameters"
                raise ConfigError(f"{name}={value} must be in (0, 1]: the fraction to keep "
                                  f"(0.5 halves the {what})")
        for value in [self.ratio, *(self.ratios or {}).values()]:
            if value is not None and not 0 <= value < 1:
                raise ConfigError(f"ratio={value} must be in [0, 1): the share of channels to remove")
        if self.scope not in SCOPES:
            raise ConfigError(f"scope={self.scope!r}; choose one of {SCOPES}")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError(f"round_to={self.round_to} must be >= 1")
        if not 0 < self.max_ratio < 1:
            raise ConfigError(f"max_ratio={self.max_ratio} must be in (0, 1)")
        IMPORTANCE.get(self.importance)  # unknown name -> UnknownNameError listing the known
        if isinstance(self.blocks, int) and self.blocks < 0:
            raise ConfigError(f"blocks={self.blocks} must be >= 0: residual blocks to remove")
        if self.block_importance not in BLOCK_IMPORTANCE:
            raise ConfigError(f"block_importance={self.block_importance!r}; choose one of "
                              f"{BLOCK_IMPORTANCE}")


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
                "removed_blocks": self.removed_blocks}


def prune_channels_(model: nn.Module, config: ChannelPruneConfig, *, example_inputs: Tensor,
           data: Iterable[Any] | None = None) -> PruneResult:
    """Remove channels from ``model`` in place; returns the measured before/after figures.

    ``example_inputs`` is one batch (shape only matters). ``data`` yields ``(x, y)``
    batches; the Taylor importance and the block-removal loss need it. With
    ``config.blocks``, whole residual blocks go first (``remove_blocks_``) and the channels
    then make up the rest of the target, which stays relative to the model as given.
    """
    input_shape = tuple(example_inputs.shape[1:])
    original = config
    before = layer_shapes(model)
    macs0, params0 = count_macs(model, input_shape), count_params(model)
    removed, config = remove_blocks_first_(model, config, example_inputs=example_inputs, data=data)
    graph = CouplingGraph(model, example_inputs, protected=config.protected)
    if not graph.groups:
        raise ConfigError(f"{type(model).__name__} has no prunable channel group "
                          f"(protected: {', '.join(graph.protected)})")
    if needs_gradients(config.importance):
        if data is None:
            raise ConfigError(f"importance={config.importance!r} needs data=(x, y) batches "
                              "for its gradients")
        accumulate_gradients_(model, data, num_batches=config.taylor_batches)
    scores = {g.name: IMPORTANCE.get(config.importance)(g) for g in graph.groups}
    model.zero_grad(set_to_none=True)
    cost = CostModel(model, graph.groups, example_inputs)
    plan = _choose(config, graph.groups, scores, cost) if not _reached(config) else {}
    graph.prune_(plan)
    update_(model, reshaped=True)
    result = PruneResult(macs0, count_macs(model, input_shape), params0, count_params(model),
                         layers=shape_changes(before, layer_shapes(model)),
                         groups={g.name: {"before": g.size, "after": g.size - len(plan.get(g.name, []))}
                                 for g in graph.groups},
                         removed_blocks=removed)
    _check_target(original, result)
    logger.info("pruned %s: MACs %.1f%%, params %.1f%% of the original",
                type(model).__name__, 100 * result.mac_ratio, 100 * result.param_ratio)
    return result


def remove_blocks_first_(model: nn.Module, config: ChannelPruneConfig, *, example_inputs: Tensor,
                         data: Iterable[Any] | None = None) -> tuple[list[str], ChannelPruneConfig]:
    """Remove ``config.blocks`` from ``model`` in place; returns the names removed and the
    channel config (``blocks=0``) whose target, on the shallower model, lands on the
    original target. Without blocks, ``([], config)``."""
    if not config.blocks:
        return [], config
    shape = tuple(example_inputs.shape[1:])
    macs0, params0 = count_macs(model, shape), count_params(model)
    removed = remove_blocks_(model, config.blocks, example_inputs=example_inputs, data=data,
                             criterion=config.block_importance)
    mac_ratio, param_ratio = count_macs(model, shape) / macs0, count_params(model) / params0
    if config.target_macs is not None:
        return removed, replace(config, blocks=0, target_macs=min(1.0, config.target_macs / mac_ratio))
    if config.target_params is not None:
        return removed, replace(config, blocks=0,
                                target_params=min(1.0, config.target_params / param_ratio))
    return removed, replace(config, blocks=0)


def _reached(config: ChannelPruneConfig) -> bool:
    """True when removing blocks alone already met the MAC or parameter target."""
    return any(t is not None and t >= 1.0 for t in (config.target_macs, config.target_params))


def _choose(config: ChannelPruneConfig, groups: list[ChannelGroup], scores: dict[str, Tensor],
            cost: CostModel) -> dict[str, list[int]]:
    """The channels to remove per group, for the requested ratio or target."""
    if config.ratios is not None:
        return plan_ratios(config, groups, scores, config.ratios)
    if config.ratio is not None:
        return plan_ratios(config, groups, scores, dict.fromkeys(scores, config.ratio))
    target = config.target_macs if config.target_macs is not None else config.target_params
    measure = cost.macs if config.target_macs is not None else cost.params
    full = measure({})
    if config.scope == "uniform":
        plan_at = lambda r: plan_ratios(config, groups, scores, dict.fromkeys(scores, r))  # noqa: E731
        hi = config.max_ratio
    else:
        plan_at = lambda t: _plan_threshold(config, groups, scores, t)  # noqa: E731
        hi = max(float(normalized(s).max()) for s in scores.values())
    lo = 0.0
    # The kept fraction falls as the knob rises; bisect for the largest plan above target.
    for _ in range(40):
        mid = (lo + hi) / 2
        if measure(plan_at(mid)) / full > target:
            lo = mid
        else:
            hi = mid
    plan_lo = plan_at(lo)
    plan_hi = _refine(config, groups, scores, plan_lo, lambda p: measure(p) / full, target)
    # Of the two plans that bracket the target, take the closer one.
    err = lambda p: abs(measure(p) / full - target)  # noqa: E731
    return plan_lo if err(plan_lo) < err(plan_hi) else plan_hi


def _refine(config: ChannelPruneConfig, groups: list[ChannelGroup], scores: dict[str, Tensor],
            plan: dict[str, list[int]], kept: Any, target: float) -> dict[str, list[int]]:
    """Shrink one group at a time, the group whose next weakest channel scores lowest
    (normalized), until ``kept(plan) <= target``. Small groups make ratio steps coarse;
    this lands next to the target. A step removes ``round_to`` channels when set."""
    plan = {k: list(v) for k, v in plan.items()}
    sizes = {g.name: g.size for g in groups}
    order = {name: torch.argsort(s, stable=True).tolist() for name, s in scores.items()}
    norm = {name: normalized(s) for name, s in scores.items()}
    chunk = config.round_to or 1
    while kept(plan) > target:
        best: tuple[float, str, list[int]] | None = None
        for name, ranked in order.items():
            keep_now = sizes[name] - len(plan[name])
            new_keep = (keep_now - 1) // chunk * chunk if chunk > 1 else keep_now - 1
            limit = max(chunk if chunk > 1 else 1, sizes[name] - math.floor(sizes[name] * config.max_ratio))
            if new_keep < limit:
                continue
            gone = set(plan[name])
            extra = [i for i in ranked if i not in gone][: keep_now - new_keep]
            value = float(norm[name][extra].mean())
            if best is None or value < best[0]:
                best = (value, name, extra)
        if best is None:
            break
        trial = {**plan, best[1]: sorted(plan[best[1]] + best[2])}
        if kept(trial) <= target:  # the last move: of all single moves, land closest
            return _closest_move(plan, order, sizes, chunk, kept, target) or trial
        plan = trial
    return plan


def _closest_move(plan: dict[str, list[int]], order: dict[str, list[int]], sizes: dict[str, int],
                  chunk: int, kept: Any, target: float) -> dict[str, list[int]] | None:
    """The single-group move (or none) whose result is closest to ``target``."""
    best: tuple[float, dict[str, list[int]]] | None = None
    for name, ranked in order.items():
        keep_now = sizes[name] - len(plan[name])
        new_keep = (keep_now - 1) // chunk * chunk if chunk > 1 else keep_now - 1
        if new_keep < max(chunk, 1):
            continue
        gone = set(plan[name])
        extra = [i for i in ranked if i not in gone][: keep_now - new_keep]
        trial = {**plan, name: sorted(plan[name] + extra)}
        err = abs(kept(trial) - target)
        if best is None or err < best[0]:
            best = (err, trial)
    return None if best is None else best[1]


def _keep_count(config: ChannelPruneConfig, size: int, remove: int) -> int:
    remove = min(remove, math.floor(size * config.max_ratio), size - 1)
    keep = size - max(remove, 0)
    if config.round_to and config.round_to > 1:
        keep = min(size, max(config.round_to, round(keep / config.round_to) * config.round_to))
    return keep


def plan_ratios(config: ChannelPruneConfig, groups: list[ChannelGroup],
                scores: dict[str, Tensor], ratios: dict[str, float]) -> dict[str, list[int]]:
    """The weakest channels of each group, ``ratios[group]`` of them (0 for groups not named)."""
    unknown = sorted(set(ratios) - set(scores))
    if unknown:
        raise ConfigError(f"ratios name unknown groups {unknown[:3]}; groups are "
                          f"{', '.join(sorted(scores)[:6])}...")
    plan = {}
    for g in groups:
        keep = _keep_count(config, g.size, math.floor(g.size * ratios.get(g.name, 0.0)))
        plan[g.name] = _weakest(scores[g.name], g.size - keep)
    return plan


def _plan_threshold(config: ChannelPruneConfig, groups: list[ChannelGroup],
                    scores: dict[str, Tensor], threshold: float) -> dict[str, list[int]]:
    plan = {}
    for g in groups:
        below = int((normalized(scores[g.name]) < threshold).sum())
        keep = _keep_count(config, g.size, below)
        plan[g.name] = _weakest(scores[g.name], g.size - keep)
    return plan


def _weakest(score: Tensor, n: int) -> list[int]:
    if n <= 0:
        return []
    return sorted(torch.argsort(score, stable=True)[:n].tolist())


class CostModel:
    """MACs and parameters of a pruning plan, computed from channel counts (no rewrite).

    Each conv/linear layer's MACs are ``k * (C_in/groups) * C_out * positions``; a plan
    lowers ``C_in``/``C_out`` by the indices its groups remove from that layer.
    """

    def __init__(self, model: nn.Module, groups: list[ChannelGroup], example_inputs: Tensor) -> None:
        self._root_cache: dict[int, Tensor] = {}
        self.positions = _positions(model, example_inputs)
        self.layers = {n: m for n, m in model.named_modules() if n in self.positions}
        self.groups = groups
        self.other_params = count_params(model) - sum(
            self._layer_params(m, 0, 0) for m in self.layers.values()) - sum(
            self._norm_params(m, 0) for m in self._norms().values())

    def _norms(self) -> dict[str, nn.Module]:
        return {mb.name: mb.module for g in self.groups for mb in g.members if mb.dim == "norm"}

    def _removed(self, plan: dict[str, list[int]]) -> dict[tuple[str, str], int]:
        removed: dict[tuple[str, str], int] = {}
        for g in self.groups:
            idxs = plan.get(g.name)
            if not idxs:
                continue
            gone = torch.zeros(g.size, dtype=torch.int64)
            gone[idxs] = 1
            for mb in g.members:
                n = int(gone[self._roots(mb)].sum())
                removed[(mb.name, mb.dim)] = removed.get((mb.name, mb.dim), 0) + n
        return removed

    def _roots(self, member: Member) -> Tensor:
        key = id(member)
        if key not in self._root_cache:
            self._root_cache[key] = torch.tensor(member.root_idxs, dtype=torch.int64)
        return self._root_cache[key]

    @staticmethod
    def _dims(m: nn.Module, rin: int, rout: int) -> tuple[int, int, int, int]:
        """(c_in per group, c_out, kernel size, groups) after removing rin / rout."""
        if isinstance(m, nn.Linear):
            return m.in_features - rin, m.out_features - rout, 1, 1
        k = math.prod(m.kernel_size)
        if m.groups > 1 and m.groups == m.in_channels:  # depthwise: one input per filter
            c_out = m.out_channels - max(rout, rin * m.out_channels // m.in_channels)
            return 1, c_out, k, c_out
        return (m.in_channels - rin) // m.groups, m.out_channels - rout, k, m.groups

    def macs(self, plan: dict[str, list[int]]) -> int:
        removed = self._removed(plan)
        total = 0
        for name, m in self.layers.items():
            cin, cout, k, _ = self._dims(m, removed.get((name, "in"), 0), removed.get((name, "out"), 0))
            total += cin * cout * k * self.positions[name]
        return total

    def _layer_params(self, m: nn.Module, rin: int, rout: int) -> int:
        cin, cout, k, _ = self._dims(m, rin, rout)
        return cin * cout * k + (cout if getattr(m, "bias", None) is not None else 0)

    @staticmethod
    def _norm_params(m: nn.Module, removed: int) -> int:
        w = getattr(m, "weight", None)
        if not isinstance(w, Tensor):
            return 0
        per = 2 if getattr(m, "bias", None) is not None else 1
        return per * (w.numel() - removed)

    def params(self, plan: dict[str, list[int]]) -> int:
        removed = self._removed(plan)
        total = self.other_params
        for name, m in self.layers.items():
            total += self._layer_params(m, removed.get((name, "in"), 0), removed.get((name, "out"), 0))
        for name, m in self._norms().items():
            total += self._norm_params(m, removed.get((name, "norm"), 0))
        return total


def _positions(model: nn.Module, example_inputs: Tensor) -> dict[str, int]:
    """Output positions per sample of every conv/linear layer (H_out*W_out, tokens, 1)."""
    found: dict[str, int] = {}

    def hook(name: str):
        def record(m: nn.Module, _i: Any, out: Tensor) -> None:
            channels = m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features
            found[name] = found.get(name, 0) + out[:1].numel() // channels
        return record

    forward_once(model, example_inputs, {m: hook(n) for n, m in model.named_modules()
                                         if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))})
    return found


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
