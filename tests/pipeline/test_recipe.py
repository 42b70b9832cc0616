"""Recipe schema: valid files load; every malformed one gives file:line: field: message."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchslim.errors import ConfigError
from torchslim.pipeline.recipe import (STAGE_SCHEMAS, Budget, PruneOptions, builtin_recipes,
                                       load_recipe, parse_recipe)
from torchslim.pipeline.stages import STAGES

GOOD = """\
name: t
model: resnet8
model_args: {width: 8}
data: digits
stages:
  - kind: finetune
    epochs: 1
  - kind: prune
    target_macs: 0.5
    fallbacks:
      - {target_macs: 0.7}
      - {target_macs: 0.9, round_to: 1}
  - kind: quantize
    method: ptq
  - kind: export
"""


def test_a_good_recipe_loads_with_its_attempts_in_order() -> None:
    recipe = parse_recipe(GOOD)
    assert [s.kind for s in recipe.stages] == ["finetune", "prune", "quantize", "export"]
    prune = recipe.stages[1]
    assert isinstance(prune, PruneOptions)
    attempts = prune.attempts()
    assert [a.target_macs for a in attempts] == [0.5, 0.7, 0.9]
    assert [a.round_to for a in attempts] == [8, 8, 1]   # a fallback overrides only its keys
    assert recipe.output_dir == Path("runs/t")


@pytest.mark.parametrize("old, new, line, needles", [
    ("target_macs: 0.5", "target_macs: half", 9, ("stages[1].target_macs", "valid number", "'half'")),
    ("method: ptq", "method: int4", 14, ("stages[2].method", "'ptq' or 'qat'", "'int4'")),
    ("kind: prune", "kind: prun", 8, ("stages[1].kind", "unknown stage 'prun'",
                                      "allowed: distill, distill_embeddings, export, "
                                      "finetune, prune, quantize",
                                      "did you mean 'prune'")),
    ("epochs: 1", "epochs: [1", 8, ("invalid YAML",)),
    ("model: resnet8", "model: nopkg models:build", 2, ("model", "package.module:function")),
    ("data: digits", "data: mine:data:x", 4, ("data", "package.module:function")),
    ("name: t", "name: ../t", 1, ("name", "must be a plain name")),
    ("name: t", "name: t\nname: u", 2, ("name", "duplicate key (first at line 1)")),
    ("epochs: 1", "epochs: 1\n    epochs: 2", 8, ("stages[0].epochs", "duplicate key (first at line 7)")),
    ("- kind: finetune", "- kind: finetune\n    name: /tmp/evil", 7, ("stages[0].name", "plain name")),
    ("- kind: finetune", "- kind: finetune\n    name: a/../../b", 7, ("stages[0].name", "plain name")),
    ("  - kind: export\n", "  - kind: export\n    artifact: ../x.onnx\n", 16,
     ("stages[3].artifact", "plain name")),
    ("  - kind: export\n", "  - kind: export\n    artifact: /tmp/x.onnx\n", 16,
     ("stages[3].artifact", "plain name")),
    ("  - kind: export\n", "  - kind: export\n    artifact: model.exe\n", 16,
     ("stages[3].artifact", "must end in .onnx")),
    ("data: digits", "data: digits\ndata_args: {colour: red}", 5,
     ("data_args", "unknown option(s) ['colour']", "train_limit")),
    ("model: resnet8", "model: resnet9", 2, ("model", "'resnet9'", "resnet8")),
    ("data: digits", "data: cifar", 4, ("data", "unknown dataset 'cifar'", "fashion-mnist")),
    ("epochs: 1", "epoch: 1", 7, ("stages[0].epoch", "unknown option", "allowed: epochs")),
    ("{target_macs: 0.7}", "{target_macs: 2}", 11, ("stages[1].fallbacks[0].target_macs",
                                                    "must be in (0, 1]", "the fraction to keep")),
    ("{target_macs: 0.7}", "{ratio: 0.7}", 11, ("stages[1].fallbacks[0].ratio", "unknown option")),
    ("method: ptq", "method: ptq\n    bits: 12", 15, ("stages[2].bits", "bits=12", "[2, 8]")),
    ("method: ptq", "method: ptq\n    observer: kl", 15, ("stages[2].observer",
                                                       "unknown observer 'kl'", "entropy")),
    ("  - kind: export\n", "  - kind: export\n  - kind: finetune\n", 15,
     ("stages[3].kind", "export must be the last stage")),
    ("  - kind: export\n", "  - kind: finetune\n", 15,
     ("stages[3].kind", "only export may follow quantize")),
])
def test_malformed_recipes_name_file_line_and_field(old: str, new: str, line: int,
                                                    needles: tuple[str, ...]) -> None:
    text = GOOD.replace(old, new, 1)
    assert text != GOOD
    with pytest.raises(ConfigError) as err:
        parse_recipe(text, source="r.yaml")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"r.yaml:{line}: "), message
    for needle in needles:
        assert needle in message, message


def test_validation_imports_no_entry_point(tmp_path: Path, monkeypatch) -> None:
    """A recipe is checked without running its code: a module that would raise on import
    (or does not exist) loads as a recipe; its entry point runs only when the run starts."""
    (tmp_path / "planted_mod.py").write_text("raise SystemExit('imported while validating')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = GOOD.replace("model: resnet8", "model: planted_mod:build").replace(
        "data: digits", "data: nopkg.loaders:data")
    recipe = parse_recipe(text, source="r.yaml")
    assert (recipe.model, recipe.data) == ("planted_mod:build", "nopkg.loaders:data")
    import sys
    assert "planted_mod" not in sys.modules and "nopkg" not in sys.modules
    assert recipe.where("data") == "r.yaml:4: data"
    assert recipe.model_copy(update={"output": "x"}).where("model") == "r.yaml:2: model"


def test_the_percentile_option_reaches_the_quant_config() -> None:
    text = GOOD.replace("    method: ptq\n", "    method: ptq\n    observer: percentile\n"
                                               "    percentile: 99.9\n")
    config = parse_recipe(text).stages[2].plan().config
    assert (config.activation_observer, config.activation_percentile) == ("percentile", 99.9)
    assert config.activation_observer_kwargs == {"percentile": 99.9}
    with pytest.raises(ConfigError, match=r"^r.yaml:16: stages\[2\]\.percentile: "
                                          r"percentile=101(\.0)? must be in \(0, 100\]"):
        parse_recipe(text.replace("99.9", "101"), source="r.yaml")
    with pytest.raises(ConfigError, match=r"^r.yaml:16: stages\[2\]\.percentile: .*"
                                          r"activation_observer='percentile', not 'minmax'"):
        parse_recipe(text.replace("observer: percentile", "observer: minmax"), source="r.yaml")


def test_top_level_errors() -> None:
    with pytest.raises(ConfigError, match=r"^r.yaml:1: model: Field required"):
        parse_recipe(GOOD.replace("model: resnet8\n", ""), source="r.yaml")
    with pytest.raises(ConfigError, match=r"^r.yaml:17: target.runtime: unknown runtime 'trt'; "
                                          r"allowed: onnxruntime, openvino"):
        parse_recipe(GOOD + "target:\n  runtime: trt\n", source="r.yaml")
    with pytest.raises(ConfigError, match=r"^r.yaml:1: \(top level\): a recipe is a mapping"):
        parse_recipe("- 1\n- 2\n", source="r.yaml")


def test_budget_takes_the_tighter_of_absolute_and_relative() -> None:
    assert Budget(max_drop=0.01).allowed_drop(0.9) == pytest.approx(0.01)
    assert Budget(max_drop=0.01, max_relative_drop=0.005).allowed_drop(0.9) == pytest.approx(0.0045)
    assert Budget(max_drop=None).allowed_drop(0.9) == 1.0


def test_every_stage_schema_has_a_runner() -> None:
    assert STAGE_SCHEMAS.names() == STAGES.names() == [
        "distill", "distill_embeddings", "export", "finetune", "prune", "quantize"]


def test_builtin_recipes_load(tmp_path: Path) -> None:
    assert builtin_recipes() == ["fashion_mnist", "ptq_only", "torchvision_custom_data"]
    fashion = load_recipe("fashion_mnist")
    assert [s.kind for s in fashion.stages] == ["distill", "prune", "quantize", "export"]
    assert fashion.stages[2].method == "qat" and fashion.budget.max_drop == 0.01
    assert fashion.budget.min_speedup == 4.0
    tv = load_recipe("torchvision_custom_data")
    assert tv.model == "tv:resnet18" and tv.data == "torchslim.recipes.example_data:loaders"
    with pytest.raises(ConfigError, match="ptq_only:6: model: checkpoint"):
        load_recipe("ptq_only")
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"")
    assert load_recipe("ptq_only", model=str(ckpt)).stages[0].method == "ptq"
    with pytest.raises(ConfigError, match="recipe 'nope.yaml' not found"):
        load_recipe("nope.yaml")
