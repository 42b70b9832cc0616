"""`torchslim train --seed S` twice gives bit-identical weights: the seed is set before the
model is built, so the initial weights, the shuffling and the augmentation all follow it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file


def _train(out: Path, seed: int, cwd: Path) -> dict:  # type: ignore[type-arg]
    env = {**os.environ, "TORCHSLIM_PROGRESS": "0", "OMP_NUM_THREADS": "1",
           "TORCHSLIM_CACHE": str(cwd / "cache")}
    done = subprocess.run([sys.executable, "-m", "torchslim", "--quiet", "train", "--model",
                           "resnet8", "--width", "4", "--dataset", "digits", "--epochs", "1",
                           "--threads", "1", "--seed", str(seed), "--out", str(out)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    weights = sorted(p for p in out.glob("*.safetensors"))
    assert weights, sorted(p.name for p in out.iterdir())
    return {p.name: load_file(p) for p in weights}


@pytest.mark.slow
def test_the_same_seed_twice_gives_bit_identical_weights(tmp_path: Path) -> None:
    first = _train(tmp_path / "a", 3, tmp_path)
    again = _train(tmp_path / "b", 3, tmp_path)
    other = _train(tmp_path / "c", 4, tmp_path)
    assert first.keys() == again.keys()
    for name, tensors in first.items():
        assert tensors.keys() == again[name].keys()
        for key, value in tensors.items():
            assert value.equal(again[name][key]), (name, key)
    name = next(iter(first))
    assert any(not v.equal(other[name][k]) for k, v in first[name].items())  # the seed matters
