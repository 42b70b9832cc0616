"""Digits (8x8, real) and tiny ResNets: every distillation test runs in well under a second."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchslim.data import DataBundle, load_data
from torchslim.zoo import build_model


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions gain nothing from a second thread, and on a busy machine two
    threads that wait for each other at every op make these tests ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits() -> DataBundle:
    return load_data("digits", augment=False, batch_size=64, eval_batch_size=256)


@pytest.fixture
def teacher() -> nn.Module:
    torch.manual_seed(1)
    return build_model("resnet8", width=8)


@pytest.fixture
def student() -> nn.Module:
    torch.manual_seed(2)
    return build_model("resnet8", width=4)
