"""Evaluation beyond top-1: corruptions, adversarial attacks, calibration, prediction flips.

Compression can keep the average accuracy and still hurt inputs a little off the
training distribution, adversarial robustness, the trust one can put in the model's
confidence, or a few classes. One suite measures all four on any ``Session``:

>>> suite = RobustnessSuite(data.test, mean=info.mean, std=info.std,           # doctest: +SKIP
...                         attack_model=teacher, source="teacher-fp32-torch")
>>> base = suite.evaluate(TorchSession(teacher))                              # doctest: +SKIP
>>> cand = suite.evaluate(runtime.open("model-int8.onnx"), baseline=base)     # doctest: +SKIP
>>> robustness_checks(cand, base, RobustnessLimits(max_class_drop_points=3))  # doctest: +SKIP

Each block is JSON-able (a report.json candidate's ``"robustness"`` key): clean top-1 on
the subset; top-1 per corruption and severity and their mean; top-1 under each attack,
transferred from the baseline and, for a torch candidate, white-box on itself;
ECE/NLL and the reliability bins; the clean predictions (for pairing); and, with a
baseline, every change against it, the flips and McNemar p-values overall and per class.

Sample size and cost. By default 500 test images, stratified by class with a fixed seed
(``RobustnessConfig.n``). The standard error of an accuracy near 0.9 is 1.3 points at
n = 500 (0.9 at 1,000), and a candidate's change against the baseline, measured on the
same images, has a smaller one (about sqrt(flip fraction / n): 0.9 points when 4 % of the
predictions flip). A candidate is scored on 22 versions of the subset (clean, 6
corruptions x 3 severities, 3 attacks): 11,000 image-forwards; the baseline's attacks
take 7 forward+backward passes (FGSM at two eps, PGD-5). Measured once on this 2-core
machine while other jobs held it (load average 4.4), with 2 threads, Fashion-MNIST:
making the attacks on the ResNet-14 w16 teacher 27.8 s, the teacher's block on torch
20.9 s and on ONNX Runtime FP32 12.6 s, a ResNet-8 w16 on ONNX Runtime 6.4 s. For the
demo's six candidates that is about 60 s on a loaded machine (score the baseline on its
ORT FP32 export, passing ``model=teacher`` so it is known as the attack source); 1,000
images would double it. Pass ``clean=(logits, labels)`` from ``evaluate``'s full split
so calibration and the per-class tests use all 10,000 images at no extra cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from torchslim.evaluation.robustness._pixels import Stat, from_pixels, to_pixels
from torchslim.evaluation.robustness.adversarial import (ATTACKS, AdversarialSet, AttackSpec,
                                                         attack, fgsm, make_adversarial, pgd)
from torchslim.evaluation.robustness.budget import robustness_checks
from torchslim.evaluation.robustness.calibration import (calibration,
                                                         expected_calibration_error,
                                                         negative_log_likelihood,
                                                         reliability_bins)
from torchslim.evaluation.robustness.config import RobustnessConfig, RobustnessLimits
from torchslim.evaluation.robustness.corruptions import (CORRUPTIONS, corrupt, corrupt_pixels,
                                                         corruption_names)
from torchslim.evaluation.robustness.flips import compare_predictions, holm_adjust, mcnemar
from torchslim.evaluation.robustness.suite import RobustnessSuite, stratified_subset
from torchslim.runtime.base import Session

__all__ = ["RobustnessConfig", "RobustnessLimits", "RobustnessSuite", "evaluate_robustness",
           "robustness_checks", "corrupt", "corrupt_pixels", "corruption_names", "CORRUPTIONS",
           "to_pixels", "from_pixels", "AttackSpec", "AdversarialSet", "ATTACKS", "attack",
           "fgsm", "pgd", "make_adversarial", "calibration", "expected_calibration_error",
           "negative_log_likelihood", "reliability_bins", "mcnemar", "holm_adjust",
           "compare_predictions", "stratified_subset"]


def evaluate_robustness(session: Session, data: Iterable | tuple[Any, Any], *, mean: Stat,
                        std: Stat, baseline: dict[str, Any] | None = None,
                        attack_model: nn.Module | None = None, model: nn.Module | None = None,
                        config: RobustnessConfig | None = None,
                        class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The robustness block of one ``session`` on ``data`` (normalised ``(x, y)`` batches).

    For several candidates build one ``RobustnessSuite`` and call its ``evaluate``: the
    subset, corruptions and adversarial batches are then made once. ``attack_model``
    (default: a torch session's own model) makes the adversarial batches.
    """
    own = attack_model is None and isinstance(getattr(session, "model", None), nn.Module)
    if own:
        attack_model = session.model  # type: ignore[attr-defined]
    suite = RobustnessSuite(data, mean=mean, std=std, config=config, attack_model=attack_model,
                            source=session.name if own else "attack model")
    return suite.evaluate(session, baseline=baseline, model=model, class_names=class_names)
