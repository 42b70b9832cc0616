"""Quantization state is global under ``torchrun``: every rank holds the statistics of
every rank's data, so the qparams are bit-identical everywhere and equal to what one
process would compute on the union of the data.

Observers combine each batch's statistics over ranks BEFORE folding them into their state
(``Observer.combiner``, installed by ``global_observers``):

* min / max by an all-reduce MIN (one call: ``cat(lo, -hi)``);
* moving averages: the EMA step takes the global batch's min / max, as one process would;
* histograms (entropy): the bin edges follow the global max, the counts are summed;
* samples (percentile, mse): the union of every rank's smallest-key values, keys drawn
  from an independent stream on each rank, so the kept sample stays uniform.

Weight observers combine too: the weights are equal on every rank (``global_observers``
broadcasts rank 0's first, DDP keeps them so), but a simulated conv+BN fold quantizes
``w * gamma / sqrt(running_var)``, and combining costs two numbers per channel.

The quantizer layout is decided once: ``across_ranks`` gives every rank rank 0's config,
and ``global_observers`` checks that every rank prepared the same quantizers before any
collective runs. Freezing (observers, BatchNorm) follows ``TrainState.epoch``, which is
the same on every rank (and broadcast on resume), so it happens on the same step
everywhere. ``torchslim.quant.calibrate`` imports this module, which registers
``global_observers`` as ``fit``'s model hook: any prepared model trains with it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from torchslim.quant.fake_quant import FakeQuantize, LearnableFakeQuantize
from torchslim.quant.observers import Observer
from torchslim.train.collectives import broadcast_object, broadcast_state_, same_everywhere
from torchslim.train.distributed import (DistributedConfig, World, current,
                                         register_model_hook, setup)
from torchslim.train.sharding import shard

__all__ = ["RankCombiner", "global_observers", "layout", "lockstep", "sum_over_ranks",
           "across_ranks"]

logger = logging.getLogger(__name__)

_OPS = {"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX, "sum": dist.ReduceOp.SUM}


class RankCombiner:
    """What an observer calls to combine one batch's statistics over the ranks of ``world``
    (collectives run on ``world.device``; results come back on the input's device)."""

    def __init__(self, world: World) -> None:
        self.world = world

    def reduce(self, t: Tensor, op: str) -> Tensor:
        out = t.detach().to(self.world.device, copy=True)
        dist.all_reduce(out, op=_OPS[op])
        return out.to(t.device)

    def minmax(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        both = self.reduce(torch.cat([lo, -hi]), "min")  # (2R,): negation is exact
        return both[:lo.numel()], -both[lo.numel():]

    def gather(self, t: Tensor, dim: int = -1) -> Tensor:
        """Every rank's ``t`` concatenated along ``dim`` in rank order (sizes may differ)."""
        dim = dim % t.dim()
        local = t.detach().to(self.world.device)
        sizes = [torch.zeros((), dtype=torch.long, device=local.device)
                 for _ in range(self.world.size)]
        dist.all_gather(sizes, torch.tensor(local.shape[dim], device=local.device))
        longest = max(int(s) for s in sizes)
        pad = list(local.shape)
        pad[dim] = longest - local.shape[dim]
        padded = torch.cat([local, local.new_zeros(pad)], dim)
        parts = [torch.empty_like(padded) for _ in range(self.world.size)]
        dist.all_gather(parts, padded)
        whole = torch.cat([p.narrow(dim, 0, int(n)) for p, n in zip(parts, sizes)], dim)
        return whole.to(t.device)

    def union_smallest(self, keys: Tensor, rows: Tensor, cap: int) -> tuple[Tensor, Tensor]:
        """The ``cap`` smallest keys of every rank's batch, with their values: the smallest
        ``cap`` of the union are among them. ``keys`` (N,), ``rows`` (R, N)."""
        if keys.numel() > cap:
            keep = torch.topk(keys, cap, largest=False).indices
            keys, rows = keys[keep], rows[:, keep]
        return self.gather(keys), self.gather(rows)

    def __deepcopy__(self, memo: dict[int, Any]) -> RankCombiner:
        return self  # nothing to copy: the process group is the process's


def _observers(model: nn.Module) -> list[Observer]:
    return [m for m in model.modules() if isinstance(m, Observer)]


def layout(model: nn.Module) -> list[tuple[str, ...]]:
    """Every quantizer and observer, by name, type and spec, and the switches that are on:
    what must be the same on every rank before their statistics are combined."""
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, FakeQuantize):
            rows.append((name, "FakeQuantize", repr(m.spec), type(m.observer).__name__,
                         f"observer={m.observer_enabled}", f"fake_quant={m.fake_quant_enabled}"))
        elif isinstance(m, LearnableFakeQuantize):
            rows.append((name, "LearnableFakeQuantize", repr(m.spec)))
        elif isinstance(m, Observer) and not name.endswith(".observer"):
            rows.append((name, type(m).__name__, repr(m.spec)))
    return rows


@contextlib.contextmanager
def global_observers(model: nn.Module, world: World | None = None) -> Iterator[None]:
    """While active (and a group of several processes runs), ``model``'s observers combine
    every batch's statistics over all ranks. Checks first that every rank prepared the same
    quantizers, and gives every rank rank 0's weights and statistics. Nests."""
    world = world or current()
    observers = _observers(model) if world is not None else []
    if world is None or not observers:
        yield
        return
    same_everywhere(layout(model), "the quantizer layout (name, type, spec, switches)", world)
    broadcast_state_(model, world)
    previous = [obs.combiner for obs in observers]
    combiner = RankCombiner(world)
    for obs in observers:
        _independent_keys_(obs, world)
        obs.combiner = combiner
    try:
        yield
    finally:
        for obs, before in zip(observers, previous):
            obs.combiner = before


def _independent_keys_(obs: Observer, world: World) -> None:
    """Sampling observers draw their keys from a stream of their own on each rank (drawn
    from the shared one, so a rerun draws the same), or the union would not be uniform."""
    gen = getattr(obs, "_gen", None)
    if isinstance(gen, torch.Generator) and obs.combiner is None:
        base = int(torch.randint(0, 2 ** 31, (), generator=gen))
        obs._gen = torch.Generator().manual_seed(base * world.size + world.rank)


def lockstep(items: Iterable[Any]) -> Iterator[Any]:
    """``items`` while every rank still has one (observers run collectives in forward, so
    every rank must run the same number of batches); ``items`` itself in one process."""
    world = current()
    if world is None:
        yield from items
        return
    end = object()
    it = iter(items)
    while True:
        item = next(it, end)
        have = torch.tensor(int(item is not end), device=world.device)
        dist.all_reduce(have, op=dist.ReduceOp.MIN)
        if not int(have):
            if item is not end:
                logger.warning("rank %d has more calibration batches than another rank; "
                               "the extra ones are not used", world.rank)
            return
        yield item


def sum_over_ranks(total: Tensor | None, count: int) -> tuple[Tensor | None, int]:
    """``(total, count)`` summed over ranks (bias correction's mean error); as is in one
    process. Every rank ran the same batches (``lockstep``), so all or none have a total."""
    world = current()
    if world is None or total is None:
        return total, count
    combiner = RankCombiner(world)
    return combiner.reduce(total, "sum"), int(combiner.reduce(torch.tensor(count), "sum"))


def across_ranks(config: Any, data: Iterable[Any],
                 distributed: DistributedConfig | None = None) -> tuple[Any, Iterable[Any]]:
    """Under torchrun: rank 0's quantization config (the layout is decided once) and this
    rank's share of every calibration batch, so the ranks together calibrate on exactly
    the batches one process would. In one process: both unchanged."""
    world = setup(distributed)
    if world is None:
        return config, data
    return broadcast_object(config, world), shard(data, world, equal=False)


# fit under torchrun: observers of a prepared model combine their statistics
register_model_hook(global_observers)
