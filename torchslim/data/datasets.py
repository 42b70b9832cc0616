"""Datasets held fully in memory, split deterministically, served by plain DataLoaders.

Both datasets torchslim embeds are small (Fashion-MNIST is 190 MB as float32), so we load
everything once as normalised tensors: no per-sample decoding, no worker processes, and
the same seed always gives the same splits, batches and augmentations.

A dataset plugs in by registering a function that returns its three splits as tensors
(see ``Splits``); ``load_data`` does the rest (limits, loaders, augmentation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset, default_collate

from torchslim._registry import Registry
from torchslim.errors import ConfigError

__all__ = ["DatasetInfo", "DataBundle", "Splits", "DATASETS", "load_data",
           "calibration_subset", "dataset_names"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model builder and a report need to know about a dataset."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]   # (C, H, W) of one normalised image
    class_names: tuple[str, ...]
    mean: float                          # the tensors are (x - mean) / std, x in [0, 1]
    std: float


@dataclass
class DataBundle:
    """The three loaders of one dataset. ``train`` shuffles and augments; the others never do."""

    train: DataLoader
    val: DataLoader
    test: DataLoader
    info: DatasetInfo
    seed: int


@dataclass
class Splits:
    """What a registered dataset function returns: normalised images (N, C, H, W) float32
    and int64 labels (N,) for each split."""

    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    info: DatasetInfo
    hflip: bool   # whether a horizontal flip keeps the label (true for clothes, not digits)


# name -> fn(*, root, val_size, seed) -> Splits
DATASETS: Registry[Callable[..., Splits]] = Registry("dataset")


def dataset_names() -> list[str]:
    """Names ``load_data`` accepts."""
    return DATASETS.names()


def seeded_permutation(n: int, seed: int) -> Tensor:
    """The one permutation every split and limit derives from, so a seed fixes them all."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


class RandomHFlip:
    """A collate_fn that flips half of each batch left-right.

    Flipping the stacked batch costs one ``torch.where`` instead of a Python call per
    image. It draws from the loader's own generator, so re-seeding ``loader.generator``
    (as the training loop does each epoch) fixes both the shuffle and the flips.
    """

    def __init__(self, generator: torch.Generator, p: float = 0.5) -> None:
        self.generator = generator
        self.p = p

    def __call__(self, samples: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        x, y = default_collate(samples)    # x: (B, C, H, W)
        flip = torch.rand(x.shape[0], generator=self.generator) < self.p
        return torch.where(flip[:, None, None, None], x.flip(-1), x), y


def _check_options(batch_size: int, eval_batch_size: int, val_size: int,
                   train_limit: int | None, test_limit: int | None) -> None:
    for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if value < 1:
            raise ConfigError(f"{name}={value} must be >= 1")
    if val_size < 0:
        raise ConfigError(f"val_size={val_size} must be >= 0")
    for name, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit is not None and limit < 1:
            raise ConfigError(f"{name}={limit} must be >= 1 (or None for the whole split)")


def _limit(split: tuple[Tensor, Tensor], limit: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random subset of ``limit`` samples (all of them when the split is smaller)."""
    x, y = split
    if limit is None or limit >= len(y):
        return x, y
    keep = seeded_permutation(len(y), seed)[:limit]
    return x[keep], y[keep]


def _eval_loader(split: tuple[Tensor, Tensor], batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(*split), batch_size=batch_size, shuffle=False, num_workers=0)


def _train_loader(split: tuple[Tensor, Tensor], batch_size: int, seed: int,
                  hflip: bool) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    collate: Callable[[Any], Any] | None = RandomHFlip(generator) if hflip else None
    return DataLoader(TensorDataset(*split), batch_size=batch_size, shuffle=True,
                      generator=generator, collate_fn=collate, num_workers=0)


def load_data(name: str = "fashion-mnist", *, root: str | Path | None = None,
              batch_size: int = 128, eval_batch_size: int = 1000, val_size: int = 5000,
              seed: int = 0, augment: bool = True, train_limit: int | None = None,
              test_limit: int | None = None) -> DataBundle:
    """Load a registered dataset into memory and wrap its splits in loaders.

    ``val_size`` images are held out of the training file by a permutation of ``seed``
    (Fashion-MNIST; digits splits 60/20/20 and ignores it); the test split is the
    official one. ``train_limit``/``test_limit`` keep a seeded random subset, for quick
    runs. Only the training loader shuffles and, with ``augment``, flips images.
    """
    _check_options(batch_size, eval_batch_size, val_size, train_limit, test_limit)
    splits = DATASETS.get(name)(root=root, val_size=val_size, seed=seed)
    train = _limit(splits.train, train_limit, seed + 1)
    test = _limit(splits.test, test_limit, seed + 2)
    return DataBundle(
        train=_train_loader(train, batch_size, seed, hflip=augment and splits.hflip),
        val=_eval_loader(splits.val, eval_batch_size),
        test=_eval_loader(test, eval_batch_size),
        info=splits.info, seed=seed)


def calibration_subset(bundle_or_loader: DataBundle | DataLoader, n: int, *, seed: int = 0,
                       batch_size: int = 32) -> DataLoader:
    """``n`` fixed training images (with labels) for calibrating quantization observers.

    Drawn without replacement by ``seed`` and never augmented, so two calibrations with
    the same seed see exactly the same pixels.
    """
    loader = (bundle_or_loader.train if isinstance(bundle_or_loader, DataBundle)
              else bundle_or_loader)
    dataset: Dataset = loader.dataset
    available = len(dataset)  # type: ignore[arg-type]
    if not 1 <= n <= available:
        raise ConfigError(f"calibration_subset: n={n} images requested but the training "
                          f"split holds {available}; pass 1 <= n <= {available}")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    indices = seeded_permutation(available, seed)[:n].tolist()
    return DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                      num_workers=0)
