"""A recipe's inputs: data entry points, data_args, model references."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from torchslim.errors import ConfigError
from torchslim.pipeline.recipe import parse_recipe
from torchslim.pipeline.setup import as_bundle, load_data_for, load_model_for

RECIPE = "model: resnet8\ndata: digits\nstages:\n  - kind: quantize\n"


def _loader(n: int, classes: int) -> DataLoader:
    x = torch.randn(n, 3, 16, 16)
    y = torch.arange(n) % classes
    return DataLoader(TensorDataset(x, y), batch_size=8)


def test_three_loaders_become_a_bundle_with_inferred_info() -> None:
    bundle = as_bundle((_loader(32, 5), _loader(16, 5), _loader(16, 5)), name="mine:data", seed=0)
    assert bundle.info.num_classes == 5 and bundle.info.input_shape == (3, 16, 16)
    assert bundle.info.name == "mine:data" and len(bundle.info.class_names) == 5
    same = as_bundle({"train": bundle.train, "val": bundle.val, "test": bundle.test},
                     name="x", seed=0)
    assert same.val is bundle.val


def test_a_data_function_returning_something_else_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="returned list; return a DataBundle, \\(train, val, test\\)"):
        as_bundle([1, 2], name="mine:data", seed=0)


def test_data_args_are_checked_against_load_data() -> None:
    recipe = parse_recipe(RECIPE + "data_args: {train_limit: 100, colour: red}\n")
    with pytest.raises(ConfigError, match=r"data_args: unknown option\(s\) \['colour'\].*train_limit"):
        load_data_for(recipe)
    bundle = load_data_for(parse_recipe(RECIPE + "data_args: {train_limit: 100}\n"))
    assert len(bundle.train.dataset) == 100


def test_zoo_model_without_pretrain_is_built_for_the_data() -> None:
    recipe = parse_recipe(RECIPE + "model_args: {width: 4}\n")
    data = load_data_for(recipe)
    model, builder, info = load_model_for(recipe, "resnet8", data, args={"width": 4})
    assert builder is None and info == {"zoo": "resnet8"}
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_pretrain_trains_once_then_reuses_the_cache(tmp_path) -> None:
    recipe = parse_recipe(RECIPE + "pretrain: {epochs: 1, lr: 0.05}\ndata_args: {train_limit: 200}\n")
    data = load_data_for(recipe)
    first = load_model_for(recipe, "resnet8", data, args={"width": 4}, cache=tmp_path)
    second = load_model_for(recipe, "resnet8", data, args={"width": 4}, cache=tmp_path)
    assert (first[2]["cached"], second[2]["cached"]) == (False, True)
    x = torch.zeros(2, 1, 8, 8)
    assert torch.equal(first[0].eval()(x), second[0].eval()(x))


def test_the_example_data_entry_point_serves_three_loaders(fake_fashion) -> None:
    from torchslim.recipes.example_data import loaders

    bundle = as_bundle(loaders(train_limit=200, batch_size=32, root=str(fake_fashion)),
                       name="torchslim.recipes.example_data:loaders", seed=0)
    assert len(bundle.train.dataset) == 200 and bundle.info.input_shape == (1, 28, 28)
    assert bundle.info.num_classes == 10
