"""scikit-learn's 8x8 handwritten digits: 1,797 real images that load in milliseconds,
so tests can train and evaluate on real data without any download."""

from __future__ import annotations

from pathlib import Path

import torch

from torchslim.data.datasets import DATASETS, DatasetInfo, Splits, seeded_permutation
from torchslim.errors import MissingDependencyError

__all__ = ["DIGITS"]

DIGITS = DatasetInfo(name="digits", num_classes=10, input_shape=(1, 8, 8),
                     class_names=tuple(str(d) for d in range(10)),
                     mean=0.3053, std=0.3760)   # over all 1,797 images, pixels / 16

TRAIN_FRACTION, VAL_FRACTION = 0.6, 0.2   # the rest (20 %) is the test split


@DATASETS.register("digits")
def load_digits(*, root: str | Path | None = None, val_size: int = 0, seed: int = 0) -> Splits:
    """A 60/20/20 train/val/test split by ``seed``. ``root`` and ``val_size`` are ignored:
    the data ships inside scikit-learn and is too small for a fixed validation count."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise MissingDependencyError("the digits dataset needs scikit-learn: "
                                     "pip install 'torchslim[dev]' (or scikit-learn)") from e
    raw = sk_load_digits()
    x = torch.from_numpy(raw.images).float().div_(16.0).unsqueeze(1)   # (1797, 1, 8, 8)
    x.sub_(DIGITS.mean).div_(DIGITS.std)
    y = torch.from_numpy(raw.target).long()
    order = seeded_permutation(len(y), seed)
    n_train, n_val = int(TRAIN_FRACTION * len(y)), int(VAL_FRACTION * len(y))
    parts = order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]
    train, val, test = ((x[i], y[i]) for i in parts)
    return Splits(train=train, val=val, test=test, info=DIGITS, hflip=False)
