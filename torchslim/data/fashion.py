"""Fashion-MNIST from the original IDX files (Debian package ``dataset-fashion-mnist``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from torchslim.data.datasets import DATASETS, DatasetInfo, Splits, seeded_permutation
from torchslim.data.idx import REINSTALL_HINT, read_idx
from torchslim.errors import ConfigError, DataFormatError, DataNotFoundError

__all__ = ["fashion_mnist_dir", "FASHION_MNIST", "DEFAULT_DIR", "FILES"]

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
INSTALL_HINT = ("install it with `apt-get update && apt-get install -y dataset-fashion-mnist`, "
                "or set TORCHSLIM_DATA to a directory holding the IDX files")

FASHION_MNIST = DatasetInfo(
    name="fashion-mnist", num_classes=10, input_shape=(1, 28, 28),
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"),
    mean=0.2860, std=0.3530)   # computed on the 60,000 training images


def _find(directory: Path, stem: str) -> Path | None:
    """The ``.gz`` file, else the uncompressed one, else None."""
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def fashion_mnist_dir(root: str | Path | None = None) -> Path:
    """The directory holding the four Fashion-MNIST IDX files.

    Looked for in ``root``, else ``$TORCHSLIM_DATA``, else the Debian package's location;
    only the first of these that is set is checked, so a typo in a setting is reported
    instead of silently falling back to other data.
    """
    env = os.environ.get("TORCHSLIM_DATA")
    directory = Path(root if root is not None else env or DEFAULT_DIR).expanduser()
    source = "root argument" if root is not None else ("TORCHSLIM_DATA" if env else "default")
    missing = [stem for stem in FILES if _find(directory, stem) is None]
    if missing:
        raise DataNotFoundError(
            f"Fashion-MNIST not found: {directory} ({source}) lacks {missing[0]}.gz "
            f"({len(missing)} of {len(FILES)} files missing); {INSTALL_HINT}")
    return directory


def _read_pair(directory: Path, prefix: str) -> tuple[Tensor, Tensor]:
    """Images normalised to (N, 1, 28, 28) float32 and int64 labels (N,)."""
    # A file deleted since fashion_mnist_dir() looked falls through to read_idx's error.
    images_path, labels_path = (_find(directory, stem) or directory / f"{stem}.gz"
                                for stem in (f"{prefix}-images-idx3-ubyte",
                                             f"{prefix}-labels-idx1-ubyte"))
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DataFormatError(f"{images_path}: expected uint8 images (N, 28, 28), got "
                              f"{images.dtype} {images.shape}; {REINSTALL_HINT}")
    if labels.shape != (images.shape[0],):
        raise DataFormatError(f"{labels_path}: {labels.shape} labels for {images.shape[0]} "
                              f"images in {images_path.name}; {REINSTALL_HINT}")
    x = torch.from_numpy(images).unsqueeze(1).float().div_(255.0)   # (N, 1, 28, 28) in [0, 1]
    x.sub_(FASHION_MNIST.mean).div_(FASHION_MNIST.std)
    return x, torch.from_numpy(labels.astype(np.int64))


@DATASETS.register("fashion-mnist")
def load_fashion_mnist(*, root: str | Path | None, val_size: int, seed: int) -> Splits:
    """Validation = ``val_size`` training images picked by ``seed``; test = official t10k."""
    directory = fashion_mnist_dir(root)
    x, y = _read_pair(directory, "train")
    if val_size >= len(y):
        raise ConfigError(f"val_size={val_size} must be smaller than the {len(y)} training "
                          "images")
    order = seeded_permutation(len(y), seed)
    val_idx, train_idx = order[:val_size], order[val_size:]
    return Splits(train=(x[train_idx], y[train_idx]), val=(x[val_idx], y[val_idx]),
                  test=_read_pair(directory, "t10k"), info=FASHION_MNIST, hflip=True)
