"""Sensitivity-guided pruning ratios (PaddleSlim-style): prune each group alone at a few
ratios, measure the accuracy drop on a validation subset, then choose per-group ratios
that meet the MAC target with the smallest predicted loss.

The allocation is greedy on "accuracy lost per MAC saved": starting from nothing pruned,
it repeatedly moves the group whose next ratio costs the least accuracy per MAC, until
the plan (counted exactly from channel counts) reaches the target.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor, nn

from torchslim import _progress
from torchslim.errors import ConfigError
from torchslim.prune.graph import CouplingGraph
from torchslim.prune.importance import IMPORTANCE
from torchslim.prune.structured import ChannelPruneConfig, CostModel, plan_ratios, prune_channels_
from torchslim.train import accuracy

logger = logging.getLogger(__name__)

LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def group_sensitivity(model: nn.Module, example_inputs: Tensor, data: Iterable[Any], *,
                      levels: Sequence[float] = LEVELS, importance: str = "l2",
                      protected: Sequence[str] = ()) -> dict[str, dict[float, float]]:
    """``{group: {ratio: top-1 on data}}`` with that group alone pruned at that ratio;
    ratio 0.0 is the unpruned model."""
    base = accuracy(model, data)
    groups = CouplingGraph(model, example_inputs, protected=tuple(protected)).groups
    table: dict[str, dict[float, float]] = {}
    jobs = [(g.name, r) for g in groups for r in levels]
    for name, ratio in _progress.track(jobs, description="pruning sensitivity", total=len(jobs)):
        trial = copy.deepcopy(model)
        prune_channels_(trial, ChannelPruneConfig(ratios={name: ratio}, importance=importance,
                                         protected=tuple(protected)), example_inputs=example_inputs)
        table.setdefault(name, {0.0: base})[ratio] = accuracy(trial, data)
    return table


def sensitivity_ratios(model: nn.Module, table: dict[str, dict[float, float]], *,
                       example_inputs: Tensor, target_macs: float, importance: str = "l2",
                       protected: Sequence[str] = (), round_to: int | None = None) -> dict[str, float]:
    """Per-group ratios that keep ``target_macs`` of the MACs, losing the least accuracy
    according to ``table`` (from ``group_sensitivity``)."""
    if not 0 < target_macs <= 1:
        raise ConfigError(f"target_macs={target_macs} must be in (0, 1]")
    graph = CouplingGraph(model, example_inputs, protected=tuple(protected))
    unknown = set(table) - {g.name for g in graph.groups}
    if unknown:
        raise ConfigError(f"the sensitivity table names groups this model lacks: {sorted(unknown)[:3]}")
    scores = {g.name: IMPORTANCE.get(importance)(g) for g in graph.groups}
    cost = CostModel(model, graph.groups, example_inputs)
    probe = ChannelPruneConfig(ratio=0.0, round_to=round_to, protected=tuple(protected))
    full = cost.macs({})

    def kept(ratios: dict[str, float]) -> float:
        return cost.macs(plan_ratios(probe, graph.groups, scores, ratios)) / full

    ratios = dict.fromkeys(table, 0.0)
    while kept(ratios) > target_macs:
        best: tuple[float, str, float] | None = None
        now = kept(ratios)
        for name, row in table.items():
            # the next level that removes MACs: with round_to, neighbouring levels can
            # round to the same channel count, and a group must not stall there
            for nxt in sorted(r for r in row if r > ratios[name]):
                saved = now - kept({**ratios, name: nxt})
                if saved > 0:
                    break
            else:
                continue
            lost = row[ratios[name]] - row[nxt]
            per_mac = max(lost, 0.0) / saved
            if best is None or per_mac < best[0]:
                best = (per_mac, name, nxt)
        if best is None:
            raise ConfigError(f"the sensitivity levels cannot reach target_macs={target_macs}; "
                              f"add higher levels (max {max(max(r) for r in table.values())})")
        _, name, nxt = best
        previous = ratios[name]
        ratios[name] = nxt
        if kept(ratios) <= target_macs:  # overshot on the last move: bisect that group's ratio
            lo, hi = previous, nxt
            for _ in range(20):
                mid = (lo + hi) / 2
                if kept({**ratios, name: mid}) > target_macs:
                    lo = mid
                else:
                    hi = mid
            # channel counts are integers: of the two neighbours, keep the closer one
            closer = min((lo, hi), key=lambda r: abs(kept({**ratios, name: r}) - target_macs))
            ratios[name] = closer
            break
    ratios = _nudge(ratios, {g.name: g.size for g in graph.groups}, kept, target_macs)
    logger.info("sensitivity ratios: %s", {k: round(v, 3) for k, v in ratios.items() if v})
    return ratios


def _nudge(ratios: dict[str, float], sizes: dict[str, int], kept: Any, target: float,
           rounds: int = 8) -> dict[str, float]:
    """Channel counts are integers, so the plan can miss the target by a few percent on
    small groups; move single channels of the pruned groups while that brings it closer."""
    for _ in range(rounds):
        err = abs(kept(ratios) - target)
        best: tuple[float, dict[str, float]] | None = None
        for name, ratio in ratios.items():
            if ratio == 0:
                continue  # a group the allocation spared stays whole
            removed = math.floor(ratio * sizes[name])
            for step in (-1, 1):
                n = removed + step
                if not 0 <= n < sizes[name]:
                    continue
                trial = {**ratios, name: (n + 0.5) / sizes[name]}  # floor() lands on n
                e = abs(kept(trial) - target)
                if e < err and (best is None or e < best[0]):
                    best = (e, trial)
        if best is None:
            break
        ratios = best[1]
    return ratios
