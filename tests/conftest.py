"""Shared fixtures: real data that loads in well under a second, tiny models."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from torchslim.data import DataBundle, load_data
from torchslim.train import TrainConfig, fit
from torchslim.zoo import build_model


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep tests off the user's cache and deterministic."""
    monkeypatch.setenv("TORCHSLIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCHSLIM_PROGRESS", "0")
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny convs on shared CPUs run faster (and steadier) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_model() -> tuple[nn.Module, DataBundle]:
    """A resnet8 (width 8) trained 3 epochs on real digits, once per test session.
    Shared: tests must prune or quantize copies, never edit it."""
    torch.manual_seed(0)
    data = load_data("digits", batch_size=64)
    model = build_model("resnet8", width=8)
    with torch.random.fork_rng():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        fit(model, data.train, config=TrainConfig(epochs=3, lr=0.1))
        torch.set_num_threads(threads)
    return model.eval(), data


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzip'd when the name ends in .gz."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.fixture
def fake_fashion(tmp_path: Path) -> Path:
    """A small Fashion-MNIST-shaped directory: 5600 train (5000 go to validation) and 100
    test images, learnable
    (each class is a different bright square), so end-to-end runs finish in seconds."""
    rng = np.random.default_rng(0)
    root = tmp_path / "fashion"
    root.mkdir()
    for split, n in (("train", 5600), ("t10k", 100)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, size=(n, 28, 28))
        for i, c in enumerate(labels):
            r, col = divmod(int(c), 5)
            images[i, 4 + 10 * r:12 + 10 * r, 2 + 5 * col:6 + 5 * col] = 230
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


class _TinyLSTM(nn.Module):
    """(N, T=12, 16) -> LSTM(16, 32, 2 layers) -> last step -> Linear(., 5)."""

    def __init__(self, bidirectional: bool = False, batch_first: bool = True) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.lstm = nn.LSTM(16, 32, num_layers=2, batch_first=batch_first,
                            bidirectional=bidirectional)
        self.head = nn.Linear(64 if bidirectional else 32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, T, 16)
        if not self.batch_first:
            x = x.transpose(0, 1)
        y, _ = self.lstm(x)
        return self.head(y[:, -1] if self.batch_first else y[-1])


@pytest.fixture
def tiny_lstm():
    """Builder for a small LSTM classifier (quantization and export tests share it)."""
    return _TinyLSTM


@pytest.fixture
def one_line_error() -> Callable[..., str]:
    """Check a CliRunner result: exit code 2, exactly one stderr line starting ``error:``
    that contains every needle, no traceback; returns that line."""
    def check(result: Any, *needles: str) -> str:
        assert result.exit_code == 2, result.output
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error:"), lines[0]
        for needle in needles:
            assert needle in lines[0], lines[0]
        assert "Traceback" not in result.output
        return lines[0]
    return check
