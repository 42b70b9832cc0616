"""Fixtures shared by the quantization tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from torchslim.data import DataBundle, load_data
from torchslim.train import TrainConfig, fit
from torchslim.zoo import build_model


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny convs on shared CPUs run faster (and steadier) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_model() -> tuple[nn.Module, DataBundle]:
    """A resnet8 (width 8) trained 3 epochs on real digits, once per test session.
    Shared: tests must quantize copies (every torchslim entry point does), never edit it."""
    torch.manual_seed(0)
    data = load_data("digits", batch_size=64)
    model = build_model("resnet8", width=8)
    with torch.random.fork_rng():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        fit(model, data.train, config=TrainConfig(epochs=3, lr=0.1))
        torch.set_num_threads(threads)
    return model.eval(), data
