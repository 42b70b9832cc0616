"""Fixtures shared by the pruning tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny convs on shared CPUs run faster (and steadier) on one thread."""


def _outputs_in_a_new_process(path: Path, x: torch.Tensor, tmp_path: Path) -> np.ndarray:
    """``torchslim.load(path)(x)`` computed in a fresh Python process."""
    np.save(tmp_path / "x.npy", x.numpy())
    code = ("import sys, numpy as np, torch, torchslim\n"
            "m = torchslim.load(sys.argv[1])\n"
            "x = torch.from_numpy(np.load(sys.argv[2]))\n"
            "with torch.no_grad(): np.save(sys.argv[3], m(x).numpy())\n")
    subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "x.npy"),
                    str(tmp_path / "y.npy")], check=True, timeout=120)
    return np.load(tmp_path / "y.npy")


@pytest.fixture
def outputs_in_a_new_process() -> Callable[[Path, torch.Tensor, Path], np.ndarray]:
    return _outputs_in_a_new_process
