"""Embedded datasets: Fashion-MNIST (IDX files on disk) and scikit-learn's digits.

``load_data(name)`` returns a ``DataBundle`` of train/val/test loaders over in-memory,
normalised tensors; ``calibration_subset`` picks fixed images for quantization.
"""

from torchslim.data import digits as _digits  # noqa: F401  (registers "digits")
from torchslim.data.datasets import (
    DataBundle,
    DatasetInfo,
    calibration_subset,
    dataset_names,
    load_data,
)
from torchslim.data.fashion import fashion_mnist_dir
from torchslim.data.idx import read_idx

__all__ = [
    "DataBundle",
    "DatasetInfo",
    "calibration_subset",
    "dataset_names",
    "fashion_mnist_dir",
    "load_data",
    "read_idx",
]
