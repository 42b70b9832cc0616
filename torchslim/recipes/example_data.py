"""An example ``data:`` entry point for recipes: ``torchslim.recipes.example_data:loaders``.

A user's own function has the same shape: keyword arguments from the recipe's
``data_args``, and it returns three DataLoaders of ``(images, labels)`` batches (or a
``torchslim.DataBundle``). Images are float tensors ``(N, C, H, W)``; labels int64.
"""

from __future__ import annotations

from torch.utils.data import DataLoader

from torchslim.data import load_data


def loaders(*, train_limit: int | None = 2000, batch_size: int = 64,
            root: str | None = None) -> tuple[DataLoader, DataLoader, DataLoader]:
    """(train, val, test) loaders over a Fashion-MNIST subset."""
    bundle = load_data("fashion-mnist", root=root, train_limit=train_limit,
                       batch_size=batch_size, test_limit=2000)
    return bundle.train, bundle.val, bundle.test
