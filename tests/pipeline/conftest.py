"""Tiny recipes on real data (scikit-learn digits) and a pretrained ResNet-8 checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from torchslim.train import save_checkpoint


@pytest.fixture
def digits_checkpoint(digits_model, tmp_path: Path) -> Path:
    model, _ = digits_model
    return save_checkpoint(tmp_path / "ck" / "resnet8.safetensors", model, dataset="digits")


# Fast everywhere: one thread, few timing calls, no memory probe subprocess.
TARGET = {"threads": 1, "batch_sizes": [1, 32], "repeats": 2, "stage_repeats": 1,
          "timing_rounds": 2, "measure_memory": False}


@pytest.fixture
def write_recipe(tmp_path: Path, digits_checkpoint: Path):
    """write_recipe(stages, **top_level) -> path of a digits recipe in tmp_path."""

    def write(stages: list[dict[str, Any]], name: str = "tiny", **top: Any) -> Path:
        recipe = {"name": name, "model": str(digits_checkpoint), "data": "digits",
                  "stages": stages, "budget": {"max_drop": 0.05}, "target": dict(TARGET),
                  "output": str(tmp_path / "runs" / name), **top}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    return write
