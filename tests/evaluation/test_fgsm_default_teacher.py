"""FGSM on the default teacher (the one the demo compresses, shipped with the package):
eps = 0 changes nothing, and accuracy falls monotonically as eps grows (issue 20)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchslim.data import load_data
from torchslim.evaluation.robustness import fgsm, stratified_subset
from torchslim.evaluation.robustness.suite import collect_split
from torchslim.pipeline.teacher import SHIPPED, TeacherRecipe
from torchslim.train import load_checkpoint


@pytest.fixture(scope="module")
def teacher_and_test():
    weights = SHIPPED / f"{TeacherRecipe().key()}.safetensors"
    assert weights.is_file(), f"the default teacher is not shipped at {weights}"
    model, _ = load_checkpoint(weights)
    data = load_data("fashion-mnist", augment=False)
    x, y = collect_split(data.test)
    keep = stratified_subset(y, 300, seed=0)
    return model.eval(), x[keep], y[keep], data.info


def _top1(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def test_fgsm_is_identity_at_zero_and_monotone_in_eps(teacher_and_test) -> None:
    model, x, y, info = teacher_and_test
    clean = _top1(model, x, y)
    assert clean > 0.85   # a trained teacher, not random weights
    at_zero = fgsm(model, x, y, eps=0.0, mean=info.mean, std=info.std)
    assert np.array_equal(at_zero, x)
    curve = [clean] + [_top1(model, fgsm(model, x, y, eps=e / 255, mean=info.mean,
                                         std=info.std), y) for e in (1, 2, 4, 8, 16)]
    assert all(b <= a for a, b in zip(curve, curve[1:])), curve
    assert curve[-1] < clean - 0.2, curve   # 16/255 breaks an undefended model
