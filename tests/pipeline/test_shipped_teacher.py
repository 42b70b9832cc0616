"""The default teacher ships with the package: an empty cache loads it instead of training."""

from __future__ import annotations

from pathlib import Path

from torchslim.pipeline.teacher import SHIPPED, TeacherRecipe, get_teacher


def test_empty_cache_uses_the_shipped_default_teacher(tmp_path: Path) -> None:
    recipe = TeacherRecipe()
    model, meta, cached = get_teacher(recipe, None, cache=tmp_path)  # type: ignore[arg-type]
    assert cached and meta["shipped"] is True
    assert meta["architecture"]["name"] == recipe.model == "resnet14"
    assert meta["metrics"]["val_top1"] > 0.9
    assert not (tmp_path / "teachers").exists()   # nothing trained, nothing written
    assert (SHIPPED / f"{recipe.key()}.safetensors").stat().st_size < 1_000_000
    assert sum(p.numel() for p in model.parameters()) == 174_970
