"""The recipe keys that make the built-in recipe cheap (issue 19, time to first result):
a KD stage that runs the teacher once, and QAT on part of an epoch."""

from __future__ import annotations

import pytest

from torchslim.pipeline.distill import DISTILL
from torchslim.pipeline.options import OptionError
from torchslim.pipeline.quantize import QUANTIZE
from torchslim.pipeline.recipe import DistillOptions, QuantizeOptions, load_recipe


def test_qat_steps_per_epoch_caps_qat_and_is_refused_without_qat() -> None:
    plan = QuantizeOptions(kind="quantize", method="qat", max_steps_per_epoch=150).plan()
    assert plan.qat.max_steps_per_epoch == 150 and plan.qat.epochs == 1
    assert QUANTIZE.plan(method="qat").qat.max_steps_per_epoch is None   # a whole epoch
    with pytest.raises(OptionError, match="method 'ptq' trains nothing") as err:
        QUANTIZE.plan(method="ptq", max_steps_per_epoch=150)
    assert err.value.key == "max_steps_per_epoch"
    assert QUANTIZE["max_steps_per_epoch"].flag is None     # a recipe key, not a CLI flag


def test_a_recipe_distill_stage_can_cache_the_teacher() -> None:
    assert DistillOptions(kind="distill", cache_teacher=True).plan().config.cache_teacher
    assert not DISTILL.plan().config.cache_teacher


def test_the_builtin_recipe_caches_its_teacher_on_unaugmented_images() -> None:
    recipe = load_recipe("fashion_mnist")
    distill, prune, quantize = recipe.stages[:3]
    assert distill.plan().config.cache_teacher is True
    assert recipe.data_args["augment"] is False      # cached logits need fixed images
    assert quantize.plan().qat.max_steps_per_epoch == 150
    assert prune.target_macs == 0.8
