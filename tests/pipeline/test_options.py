"""Option tables: each flat option sets one config field; plans hold the configs; an error
names the option at fault."""

from __future__ import annotations

import dataclasses

import pytest

from torchslim._commands.llm import LLM_QUANTIZE
from torchslim.distillation import DistillConfig, StudentConfig
from torchslim.errors import ConfigError
from torchslim.pipeline.distill import DISTILL
from torchslim.pipeline.options import OptionError
from torchslim.pipeline.prune import PRUNE
from torchslim.pipeline.quantize import QUANTIZE
from torchslim.pipeline.training import FINETUNE, PRETRAIN, TRAIN
from torchslim.prune import ChannelPruneConfig, SparsityConfig
from torchslim.quant import DynamicQuantConfig, QuantConfig, WeightOnlyConfig
from torchslim.quant.config import DEFAULT_WEIGHT
from torchslim.train import TrainConfig

TABLES = [PRUNE, QUANTIZE, DISTILL, TRAIN, PRETRAIN, FINETUNE, LLM_QUANTIZE]


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.command)
def test_every_row_sets_a_real_field_and_the_defaults_build(table) -> None:
    for o in table.options:   # a row naming a missing field raises TypeError here
        assert o.annotation is not None, o.name
        o.default_for("recipe"), o.default_for("cli")
    assert table.plan() is not None and table.plan("cli") is not None


def test_prune_defaults_are_the_commands_and_the_plan_holds_configs() -> None:
    plan = PRUNE.plan()
    assert plan.config == ChannelPruneConfig(target_macs=0.5, round_to=8)
    assert plan.finetune == TrainConfig(epochs=2, lr=0.02, schedule="cosine")
    assert (plan.steps, plan.sensitivity) == (1, False)
    by_params = PRUNE.plan(target_params=0.4).config   # the parameter target replaces MACs
    assert (by_params.target_macs, by_params.target_params) == (None, 0.4)
    masks = PRUNE.plan(structured=False, pattern="2:4", protected=("fc",), finetune_epochs=0)
    assert masks.config == SparsityConfig(pattern="n:m", n=2, m=4, protected=("fc",))
    assert masks.finetune is None
    assert PRUNE.plan("cli", blocks="layer1.1, layer2.0").config.blocks == ("layer1.1", "layer2.0")


def test_quantize_picks_the_config_type_by_method_and_sets_nested_fields() -> None:
    ptq = QUANTIZE.plan(bits=4, observer="entropy", float_layers=("fc",))
    assert ptq.config == QuantConfig(weight=dataclasses.replace(DEFAULT_WEIGHT, bits=4),
                                     activation_observer="entropy", skip=("fc",))
    assert (ptq.method, ptq.label, ptq.precision, ptq.qat) == ("ptq", "w4a8", "w4a8", None)
    qat = QUANTIZE.plan(method="qat", qat_epochs=3)
    assert qat.qat == TrainConfig(epochs=3, lr=1e-3, schedule="cosine") and qat.precision == "int8"
    assert QUANTIZE.plan(method="dynamic").config == DynamicQuantConfig()
    weight_only = QUANTIZE.plan(method="weight-only", bits=4)
    assert weight_only.config == WeightOnlyConfig(bits=4, group_size=None)
    assert (weight_only.label, weight_only.precision) == ("w4", "w4")


def test_distill_and_llm_tables_map_cli_values_onto_their_configs() -> None:
    cli = DISTILL.plan("cli", student="teacher", feature=("layer3:layer3",), epochs=2)
    assert cli.student == StudentConfig(model=None)          # 'teacher': its architecture
    assert cli.config.features == (("layer3", "layer3"),) and cli.config.train.epochs == 2
    recipe = DISTILL.plan()
    assert recipe.student == StudentConfig(width_mult=0.5) and recipe.config.train.epochs == 3
    assert recipe.config == DistillConfig(train=TrainConfig(epochs=3))
    llm = LLM_QUANTIZE.plan("cli", method="rtn", group_size=0, asymmetric=True)
    assert (llm.group_size, llm.symmetric, llm.n_samples) == (None, False, 32)
    smooth = LLM_QUANTIZE.plan("cli", method="smoothquant", bits=4)   # W8A8 whatever bits says
    assert (smooth.bits, smooth.group_size, smooth.symmetric) == (8, None, True)


def test_errors_name_the_option_at_fault_or_none_for_a_combination() -> None:
    with pytest.raises(OptionError, match="target_macs=1.5 must be in") as err:
        PRUNE.plan(target_macs=1.5, round_to=16)
    assert err.value.key == "target_macs"
    with pytest.raises(OptionError, match="unknown importance 'hessian'") as err:
        PRUNE.plan(importance="hessian")
    assert err.value.key == "importance"
    with pytest.raises(OptionError, match="cache_teacher=True") as err:   # each alone is fine
        DISTILL.plan("cli", cache_teacher=True, feature=("a:b",))
    assert err.value.key is None
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['ratio'\]; allowed: structured"):
        PRUNE.plan(ratio=0.5)
