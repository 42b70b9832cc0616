"""A recipe's inputs: data entry points, data_args, model references."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from torchslim.errors import ConfigError, EntryPointError
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
    with pytest.raises(ConfigError, match=r"^r.yaml:5: data_args: unknown option\(s\) "
                                          r"\['colour'\].*train_limit"):
        parse_recipe(RECIPE + "data_args: {train_limit: 100, colour: red}\n", source="r.yaml")
    bad_value = parse_recipe(RECIPE + "data_args: {train_limit: -5}\n", source="r.yaml")
    with pytest.raises(ConfigError, match=r"^r.yaml:5: data_args: train_limit=-5"):
        load_data_for(bad_value)
    bundle = load_data_for(parse_recipe(RECIPE + "data_args: {train_limit: 100}\n"))
    assert len(bundle.train.dataset) == 100


@pytest.mark.parametrize("module, needles", [
    (None, ("r.yaml:2: data", "cannot import 'usermod_missing'", "install the package")),
    ("def loaders(:\n", ("r.yaml:2: data", "raised SyntaxError", "fix the module")),
    ("raise RuntimeError('boom')\n", ("r.yaml:2: data", "raised RuntimeError: boom")),
    ("def other():\n    pass\n", ("r.yaml:2: data", "has no function 'loaders'")),
    ("def loaders():\n    raise ValueError('no files')\n",
     ("r.yaml:2: data", "'usermod_{n}:loaders' raised ValueError: no files", "fix the function")),
    ("def loaders():\n    return [1]\n", ("r.yaml:2: data", "returned list")),
])
def test_data_entry_point_errors_name_the_recipe_line(tmp_path, monkeypatch, module, needles) -> None:
    name = f"usermod_{len(module or '')}" if module else "usermod_missing"
    if module is not None:
        (tmp_path / f"{name}.py").write_text(module)
        monkeypatch.syspath_prepend(str(tmp_path))
    recipe = parse_recipe(f"model: resnet8\ndata: {name}:loaders\nstages:\n  - kind: quantize\n",
                          source="r.yaml")
    with pytest.raises(EntryPointError if "returned" not in needles[-1] else ConfigError) as err:
        load_data_for(recipe)
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle.replace("{n}", str(len(module or ""))) in message, message


def test_model_entry_point_errors_name_the_recipe_line(tmp_path, monkeypatch) -> None:
    (tmp_path / "usermodels.py").write_text("def net():\n    raise KeyError('width')\n"
                                            "def notamodule():\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = load_data_for(parse_recipe(RECIPE))
    for ref, needle in (("usermodels:net", "raised KeyError: 'width'"),
                        ("usermodels:notamodule", "returned int, not a torch.nn.Module"),
                        ("nopkg.models:build", "cannot import 'nopkg.models'"),
                        ("torchslim.zoo:nothing", "no function 'nothing'")):
        recipe = parse_recipe(RECIPE.replace("resnet8", ref), source="r.yaml")
        with pytest.raises(ConfigError, match=r"^r.yaml:1: model: ") as err:
            load_model_for(recipe, ref, data, args={})
        assert needle in str(err.value)


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
