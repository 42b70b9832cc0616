"""Which channels to remove: per-group ratios, a global importance threshold, or a MAC /
parameter target met by bisection and then one group at a time; and the cost model that
counts a plan's MACs and parameters from channel counts, without rewriting anything.

The planner works on *offsets*: a group whose channels fall into ``blocks`` equal blocks
(a grouped conv, attention heads; see ``ChannelGroup``) offers ``size / blocks`` offsets,
each standing for one channel in every block and scored by the mean over the blocks.
Removing an offset removes that channel from every block, so the blocks stay equal. For
an ordinary group an offset is a channel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from torchslim.errors import ConfigError
from torchslim.evaluation.model_stats import count_params
from torchslim.prune.graph import ChannelGroup, Member, forward_once
from torchslim.prune.importance import normalized

if TYPE_CHECKING:
    from torchslim.prune.config import ChannelPruneConfig

__all__ = ["CostModel", "choose", "plan_ratios"]

Plan = dict[str, list[int]]  # group name -> channel (or offset) indices to remove


@dataclass(frozen=True)
class _Unit:
    """A group as the planner sees it: ``size`` offsets, kept counts multiples of ``step``."""

    name: str
    size: int
    step: int


def _units(config: ChannelPruneConfig, groups: list[ChannelGroup]) -> list[_Unit]:
    units = []
    for g in groups:
        step = 1
        if config.round_to and config.round_to > 1:
            # kept channels = blocks * kept offsets: a multiple of round_to when the offsets
            # are multiples of round_to / gcd(round_to, blocks)
            step = config.round_to // math.gcd(config.round_to, g.blocks)
        units.append(_Unit(g.name, g.size // g.blocks, step))
    return units


def _offset_scores(groups: list[ChannelGroup], scores: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each offset's score: the mean of its channel's score over the blocks."""
    return {g.name: scores[g.name].reshape(g.blocks, -1).mean(dim=0) for g in groups}


def _expand(groups: list[ChannelGroup], plan: Plan) -> Plan:
    by_name = {g.name: g for g in groups}
    return {name: by_name[name].spread(offsets) for name, offsets in plan.items()}


def plan_ratios(config: ChannelPruneConfig, groups: list[ChannelGroup],
                scores: dict[str, Tensor], ratios: dict[str, float]) -> Plan:
    """The weakest channels of each group, ``ratios[group]`` of them (0 for groups not named)."""
    unknown = sorted(set(ratios) - set(scores))
    if unknown:
        raise ConfigError(f"ratios name unknown groups {unknown[:3]}; groups are "
                          f"{', '.join(sorted(scores)[:6])}...")
    offsets = _offset_scores(groups, scores)
    return _expand(groups, _at_ratios(config, _units(config, groups), offsets, ratios))


def _at_ratios(config: ChannelPruneConfig, units: list[_Unit], scores: dict[str, Tensor],
               ratios: dict[str, float]) -> Plan:
    plan = {}
    for u in units:
        keep = _keep_count(config, u, math.floor(u.size * ratios.get(u.name, 0.0)))
        plan[u.name] = _weakest(scores[u.name], u.size - keep)
    return plan


def choose(config: ChannelPruneConfig, groups: list[ChannelGroup], scores: dict[str, Tensor],
           cost: CostModel) -> Plan:
    """The channels to remove per group, for the requested ratio or target."""
    if config.ratios is not None:
        return plan_ratios(config, groups, scores, config.ratios)
    if config.ratio is not None:
        return plan_ratios(config, groups, scores, dict.fromkeys(scores, config.ratio))
    units, offsets = _units(config, groups), _offset_scores(groups, scores)
    target = config.target_macs if config.target_macs is not None else config.target_params
    count = cost.macs if config.target_macs is not None else cost.params
    full = count({})
    kept = lambda p: count(_expand(groups, p)) / full  # noqa: E731
    if config.scope == "uniform":
        plan_at = lambda r: _at_ratios(config, units, offsets, dict.fromkeys(offsets, r))  # noqa: E731
        hi = config.max_ratio
    else:
        plan_at = lambda t: _at_threshold(config, units, offsets, t)  # noqa: E731
        hi = max(float(normalized(s).max()) for s in offsets.values())
    lo = 0.0
    # The kept fraction falls as the knob rises; bisect for the largest plan above target.
    for _ in range(40):
        mid = (lo + hi) / 2
        if kept(plan_at(mid)) > target:
            lo = mid
        else:
            hi = mid
    plan_lo = plan_at(lo)
    plan_hi = _refine(config, units, offsets, plan_lo, kept, target)
    # Of the two plans that bracket the target, take the closer one.
    err = lambda p: abs(kept(p) - target)  # noqa: E731
    return _expand(groups, plan_lo if err(plan_lo) < err(plan_hi) else plan_hi)


def _next_move(config: ChannelPruneConfig, u: _Unit, ranked: list[int], removed: list[int]
               ) -> list[int] | None:
    """The offsets one step of group ``u`` removes next (its weakest kept ones), or None
    when that would go below the group's floor."""
    keep_now = u.size - len(removed)
    new_keep = (keep_now - 1) // u.step * u.step if u.step > 1 else keep_now - 1
    floor = max(u.step, u.size - math.floor(u.size * config.max_ratio))
    if new_keep < floor:
        return None
    gone = set(removed)
    return [i for i in ranked if i not in gone][: keep_now - new_keep]


def _refine(config: ChannelPruneConfig, units: list[_Unit], scores: dict[str, Tensor],
            plan: Plan, kept: Callable[[Plan], float], target: float) -> Plan:
    """Shrink one group at a time, the group whose next weakest offset scores lowest
    (normalized), until ``kept(plan) <= target``. Small groups make ratio steps coarse;
    this lands next to the target. A step removes ``step`` offsets when rounding."""
    plan = {k: list(v) for k, v in plan.items()}
    order = {name: torch.argsort(s, stable=True).tolist() for name, s in scores.items()}
    norm = {name: normalized(s) for name, s in scores.items()}
    while kept(plan) > target:
        best: tuple[float, str, list[int]] | None = None
        for u in units:
            extra = _next_move(config, u, order[u.name], plan[u.name])
            if not extra:
                continue
            value = float(norm[u.name][extra].mean())
            if best is None or value < best[0]:
                best = (value, u.name, extra)
        if best is None:
            break
        trial = {**plan, best[1]: sorted(plan[best[1]] + best[2])}
        if kept(trial) <= target:  # the last move: of all single moves, land closest
            return _closest_move(config, units, order, plan, kept, target) or trial
        plan = trial
    return plan


def _closest_move(config: ChannelPruneConfig, units: list[_Unit], order: dict[str, list[int]],
                  plan: Plan, kept: Callable[[Plan], float], target: float) -> Plan | None:
    """The single-group move (or none) whose result is closest to ``target``."""
    best: tuple[float, Plan] | None = None
    for u in units:
        extra = _next_move(config, u, order[u.name], plan[u.name])
        if not extra:
            continue
        trial = {**plan, u.name: sorted(plan[u.name] + extra)}
        err = abs(kept(trial) - target)
        if best is None or err < best[0]:
            best = (err, trial)
    return None if best is None else best[1]


def _keep_count(config: ChannelPruneConfig, u: _Unit, remove: int) -> int:
    remove = min(remove, math.floor(u.size * config.max_ratio), u.size - 1)
    keep = u.size - max(remove, 0)
    if u.step > 1:
        keep = min(u.size, max(u.step, round(keep / u.step) * u.step))
    return keep


def _at_threshold(config: ChannelPruneConfig, units: list[_Unit], scores: dict[str, Tensor],
                  threshold: float) -> Plan:
    plan = {}
    for u in units:
        below = int((normalized(scores[u.name]) < threshold).sum())
        keep = _keep_count(config, u, below)
        plan[u.name] = _weakest(scores[u.name], u.size - keep)
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

    def __init__(self, model: nn.Module, groups: list[ChannelGroup], example_inputs: Any) -> None:
        self._root_cache: dict[int, Tensor] = {}
        self.positions = _positions(model, example_inputs)
        self.layers = {n: m for n, m in model.named_modules() if n in self.positions}
        self.groups = groups
        self.other_params = count_params(model) - sum(
            self._layer_params(m, 0, 0) for m in self.layers.values()) - sum(
            self._norm_params(m, 0) for m in self._norms().values())

    def _norms(self) -> dict[str, nn.Module]:
        return {mb.name: mb.module for g in self.groups for mb in g.members if mb.dim == "norm"}

    def _removed(self, plan: Plan) -> dict[tuple[str, str], int]:
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

    def macs(self, plan: Plan) -> int:
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

    def params(self, plan: Plan) -> int:
        removed = self._removed(plan)
        total = self.other_params
        for name, m in self.layers.items():
            total += self._layer_params(m, removed.get((name, "in"), 0), removed.get((name, "out"), 0))
        for name, m in self._norms().items():
            total += self._norm_params(m, removed.get((name, "norm"), 0))
        return total


def _positions(model: nn.Module, example_inputs: Any) -> dict[str, int]:
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
