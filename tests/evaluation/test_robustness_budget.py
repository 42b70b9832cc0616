import pytest

from torchslim.evaluation.robustness import RobustnessLimits, robustness_checks


def block(clean=0.9, corruption=0.8, ece=0.03, per_class=(0.9, 0.8, 1.0), attacks=None):
    attacks = attacks if attacks is not None else {"fgsm eps=2/255": 0.5, "pgd-5 eps=2/255": 0.4}
    return {"clean_top1": clean, "corruptions": {"mean_top1": corruption},
            "calibration": {"ece": ece}, "per_class_top1": list(per_class),
            "adversarial": {"attacks": {k: {"worst_top1": v} for k, v in attacks.items()}},
            "flips": {"per_class": [{"class": 0, "name": "T-shirt"}, {"class": 1, "name": "Shirt"},
                                    {"class": 2, "name": "Bag"}]}}


BASE = block()
LIMITS = RobustnessLimits(max_corruption_drop=0.02, max_ece_increase=0.01,
                          max_class_drop_points=3.0, max_adversarial_drop=0.05)


def test_no_limits_no_checks():
    assert robustness_checks(block(), BASE, RobustnessLimits()) == []


def test_a_candidate_within_every_limit():
    cand = block(corruption=0.79, ece=0.035, per_class=(0.88, 0.79, 1.0),
                 attacks={"fgsm eps=2/255": 0.47, "pgd-5 eps=2/255": 0.38})
    checks = robustness_checks(cand, BASE, LIMITS)
    assert [(c["check"], c["value"], c["limit"], c["op"], c["ok"]) for c in checks] == [
        ("top-1 drop under corruption (mean)", 0.01, 0.02, "<=", True),
        ("ECE increase", 0.005, 0.01, "<=", True),
        ("worst class top-1 drop (points, class 0 'T-shirt')", 2.0, 3.0, "<=", True),
        ("top-1 drop under attack (fgsm eps=2/255)", 0.03, 0.05, "<=", True)]


def test_a_candidate_that_keeps_top1_but_breaks_robustness_fails():
    cand = block(clean=0.9, corruption=0.75, ece=0.06, per_class=(0.95, 0.7, 1.0),
                 attacks={"fgsm eps=2/255": 0.49, "pgd-5 eps=2/255": 0.3})
    checks = robustness_checks(cand, BASE, LIMITS)
    assert [c["ok"] for c in checks] == [False] * 4
    assert [c["value"] for c in checks] == pytest.approx([0.05, 0.03, 10.0, 0.1])
    assert checks[2]["check"] == "worst class top-1 drop (points, class 1 'Shirt')"
    assert checks[3]["check"] == "top-1 drop under attack (pgd-5 eps=2/255)"


def test_a_limit_on_a_figure_never_measured_fails_rather_than_passes():
    cand = block()
    cand["adversarial"] = None
    cand["per_class_top1"] = []
    checks = robustness_checks(cand, BASE, LIMITS)
    assert [(c["value"], c["ok"]) for c in checks[2:]] == [(None, False), (None, False)]
    assert checks[3]["check"] == "top-1 drop under attack (no attack measured)"


def test_the_limit_itself_is_allowed():
    cand = block(corruption=0.78)
    assert robustness_checks(cand, BASE, RobustnessLimits(max_corruption_drop=0.02))[0]["ok"]
