"""Each rank's share of every global batch: the sharding half of the distributed strategy.

Every rank iterates the SAME global batches (``fit`` re-seeds the loader's generator with
(seed, epoch), so the shuffle is identical everywhere) and keeps a strided share of each.
A map-style DataLoader is rebuilt on a sharded batch sampler, as DistributedSampler would
shard it, so a rank loads and augments only its own samples; any other iterable of
(x, y, ...) batches is sliced by rows. The global batch stays what the loader says.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, Sampler

if TYPE_CHECKING:
    from torchslim.train.world import World

__all__ = ["ShardedBatchSampler", "shard_loader", "shard", "rows_of", "to_device"]


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's strided share of each batch that ``batches`` (a batch sampler) yields.

    ``equal=True`` (training) first drops ``len(batch) % world_size`` trailing indices, so
    every rank gets the same number of rows; ``equal=False`` (calibration) keeps them all.
    A batch of fewer than ``world_size`` indices is skipped on every rank.
    """

    def __init__(self, batches: Iterable[list[int]], rank: int, world_size: int, *,
                 equal: bool = True) -> None:
        self.batches, self.rank, self.world_size, self.equal = batches, rank, world_size, equal

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            if len(batch) >= self.world_size:
                keep = len(batch) - len(batch) % self.world_size if self.equal else len(batch)
                yield list(batch)[self.rank:keep:self.world_size]

    def __len__(self) -> int:
        n = len(self.batches)  # type: ignore[arg-type]
        size, total = getattr(self.batches, "batch_size", None), _len(self.batches, "sampler")
        if size and total is not None and not getattr(self.batches, "drop_last", False):
            n -= 0 < total % size < self.world_size  # the short last batch is skipped
        return n


def _len(obj: Any, attr: str) -> int | None:
    try:
        return len(getattr(obj, attr))
    except (AttributeError, TypeError):
        return None


def shard_loader(loader: DataLoader, rank: int, world_size: int, *,
                 equal: bool = True) -> DataLoader:
    """``loader`` with the same dataset, collate, workers and generator (so the same
    shuffle), yielding only this rank's share of each batch (``ShardedBatchSampler``)."""
    return DataLoader(loader.dataset, num_workers=loader.num_workers,
                      batch_sampler=ShardedBatchSampler(loader.batch_sampler, rank, world_size,
                                                        equal=equal),
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                      generator=loader.generator, prefetch_factor=loader.prefetch_factor,
                      persistent_workers=loader.persistent_workers)


class _Shards:
    """An iterable of this rank's shares of ``data``'s batches, on the training device:
    by the batch sampler for a map-style DataLoader (``rows=False``), else by slicing rows
    of each collated (x, y, ...) batch. Exposes ``generator`` so ``fit`` re-seeds it."""

    def __init__(self, data: Iterable[Any], world: World, *, rows: bool, equal: bool) -> None:
        self.data, self.world, self.rows, self.equal = data, world, rows, equal
        self.generator = getattr(data, "generator", None)

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        for batch in self.data:
            part = rows_of(batch, self.world, equal=self.equal) if self.rows else batch
            if part is not None:
                yield to_device(part, self.world.device)


def rows_of(batch: Any, world: World, *, equal: bool = True) -> Any:
    """This rank's strided rows of a tensor or (x, y, ...) batch; None if it is too short."""
    items = batch if isinstance(batch, (tuple, list)) else (batch,)
    n = len(items[0])
    if n < world.size:
        return None
    keep = n - n % world.size if equal else n
    part = tuple(t[world.rank:keep:world.size] for t in items)
    return part if isinstance(batch, (tuple, list)) else part[0]


def to_device(batch: Any, device: torch.device) -> Any:
    if device.type == "cpu":
        return batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(t, device) for t in batch)
    return batch.to(device, non_blocking=True) if isinstance(batch, Tensor) else batch


def shard(data: Any, world: World | None, *, equal: bool = True) -> Any:
    """This rank's share of every global batch of ``data`` (``data`` itself in one process).

    A loader with a ``shard_(rank, world_size)`` method shards itself (the distiller's
    cached-teacher loader); a map-style DataLoader is rebuilt on a sharded batch sampler;
    any other iterable of batches is sliced by rows.
    """
    if world is None:
        return data
    if hasattr(data, "shard_"):
        return _Shards(data.shard_(world.rank, world.size), world, rows=False, equal=equal)
    if (isinstance(data, DataLoader) and data.batch_sampler is not None
            and not isinstance(data.dataset, IterableDataset)):
        loader = shard_loader(data, world.rank, world.size, equal=equal)
        return _Shards(loader, world, rows=False, equal=equal)
    return _Shards(data, world, rows=True, equal=equal)
