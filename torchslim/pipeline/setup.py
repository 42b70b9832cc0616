"""A recipe's inputs: its data (a dataset name or an entry point) and its models (a zoo
name, a ``package.module:function`` entry point or a checkpoint).

This is where a recipe's code runs: entry points are imported and called here, when the
run starts, never while the recipe is validated. Their errors, and a dataset's refusal of
a ``data_args`` value, name the recipe's file, line and field."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from torchslim.data import DataBundle, DatasetInfo, dataset_names, load_data
from torchslim.errors import ConfigError, TorchslimError
from torchslim.pipeline.entry_points import call, resolve_entry_point
from torchslim.pipeline.recipe import Recipe
from torchslim.train import load_checkpoint, read_checkpoint
from torchslim.train.checkpoint import load_state_, rebuild_

__all__ = ["load_data_for", "load_model_for", "load_float"]

logger = logging.getLogger(__name__)

Builder = Callable[[], nn.Module] | None


def load_data_for(recipe: Recipe) -> DataBundle:
    """``data: fashion-mnist`` (``data_args`` go to ``load_data``) or an entry point called
    with ``data_args`` that returns a DataBundle, (train, val, test) or a dict of them."""
    if recipe.data in dataset_names():   # the schema checked the option names
        try:
            return load_data(recipe.data, **{"seed": recipe.seed, **recipe.data_args})
        except ConfigError as e:
            where = recipe.where("data_args") if recipe.data_args else recipe.where("data")
            raise ConfigError(f"{where}: {e}") from None
    where = recipe.where("data")
    fn = resolve_entry_point(recipe.data, where=where)
    loaded = call(fn, recipe.data, where=where, **recipe.data_args)
    try:
        return as_bundle(loaded, name=recipe.data, seed=recipe.seed)
    except TorchslimError as e:
        raise ConfigError(f"{where}: {e}") from None


def as_bundle(loaded: Any, *, name: str, seed: int) -> DataBundle:
    """A DataBundle from what a user's data function returned."""
    if isinstance(loaded, DataBundle):
        return loaded
    if isinstance(loaded, dict):
        loaded = tuple(loaded.get(k) for k in ("train", "val", "test"))
    if not (isinstance(loaded, (tuple, list)) and len(loaded) == 3
            and all(isinstance(x, DataLoader) for x in loaded)):
        raise ConfigError(f"data entry point {name!r} returned {type(loaded).__name__}; "
                          "return a DataBundle, (train, val, test) DataLoaders or a dict of them")
    train, val, test = loaded
    x, _ = next(iter(val))
    labels = torch.cat([y for _, y in val])
    num_classes = int(labels.max()) + 1
    info = DatasetInfo(name=name, num_classes=num_classes, input_shape=tuple(x.shape[1:]),
                       class_names=tuple(str(i) for i in range(num_classes)), mean=0.0, std=1.0)
    return DataBundle(train=train, val=val, test=test, info=info, seed=seed)


def load_model_for(recipe: Recipe, ref: str, data: DataBundle, *, args: dict[str, Any],
                   cache: Path | None = None, key: str = "model"
                   ) -> tuple[nn.Module, Builder, dict[str, Any]]:
    """(model, builder, info): builder rebuilds the architecture for checkpoints that carry
    no zoo name (a user's entry point), None when the checkpoint can rebuild itself; info
    says where the model came from (and whether a pretrained one came from the cache)."""
    from torchslim.zoo import build_model, list_models

    info = data.info
    if ref in list_models():
        if recipe.pretrain is None:
            logger.warning("model %s starts from random weights (no pretrain block)", ref)
            return build_model(ref, num_classes=info.num_classes,
                               in_channels=info.input_shape[0], **args), None, {"zoo": ref}
        model, cached = _pretrained(recipe, ref, data, args, cache)
        return model, None, {"zoo": ref, "pretrained": True, "cached": cached}
    if ref.endswith((".safetensors", ".json")) or Path(ref).exists():
        return load_checkpoint(ref)[0], None, {"checkpoint": ref}
    where = recipe.where(key)
    fn = resolve_entry_point(ref, where=where)

    def build() -> nn.Module:
        model = call(fn, ref, where=where, **args)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{where}: entry point {ref!r} returned "
                              f"{type(model).__name__}, not a torch.nn.Module")
        return model

    return build().eval(), build, {"entry_point": ref}


def _pretrained(recipe: Recipe, ref: str, data: DataBundle, args: dict[str, Any],
                cache: Path | None) -> tuple[nn.Module, bool]:
    """Train once, then reuse from the cache (the same cache as the default teacher)."""
    from torchslim.pipeline.teacher import TeacherRecipe, get_teacher

    pre = recipe.pretrain
    assert pre is not None
    # The cache key covers everything that changes the weights: model, args, schedule,
    # dataset and its subset; a non-default batch size is folded into the dataset name.
    batch = recipe.data_args.get("batch_size", 128)
    dataset = recipe.data if batch == 128 else f"{recipe.data}@batch{batch}"
    teacher = TeacherRecipe(model=ref, model_kwargs=dict(args), dataset=dataset,
                            train=pre.plan(),
                            train_limit=recipe.data_args.get("train_limit"))
    model, _, cached = get_teacher(teacher, data, cache=cache)
    logger.info("%s %s", "reused cached" if cached else "trained", ref)
    return model, cached


def load_float(path: Path, builder: Builder) -> nn.Module:
    """A float checkpoint written by the runner, rebuilt from the zoo or by ``builder``."""
    state, meta = read_checkpoint(path)
    if (meta.get("architecture") or {}).get("name") or builder is None:
        return load_checkpoint(path)[0]
    model = rebuild_(builder(), meta, state)
    load_state_(model, state, source=str(path))
    return model.eval()
