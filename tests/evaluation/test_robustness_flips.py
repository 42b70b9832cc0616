import math

import numpy as np
import pytest

from torchslim.errors import ConfigError
from torchslim.evaluation.robustness import compare_predictions, holm_adjust, mcnemar


def test_identical_predictions_give_p_one():
    labels = np.arange(100) % 10
    preds = np.where(np.arange(100) % 7 == 0, (labels + 1) % 10, labels)
    out = compare_predictions(preds, preds.copy(), labels, num_classes=10)
    assert out["mcnemar"]["p"] == 1.0
    assert (out["right_to_wrong"], out["wrong_to_right"], out["changed"]) == (0, 0, 0)
    assert all(r["p"] == 1.0 and r["delta"] == 0.0 for r in out["per_class"])
    assert out["lost_significantly"] == [] and out["gained_significantly"] == []


def test_exact_binomial_on_a_small_table():
    # 10 right->wrong, 2 wrong->right: 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 158 / 4096
    out = mcnemar(10, 2)
    assert out["method"] == "exact binomial"
    assert out["p"] == 158 / 4096 == 0.03857421875
    assert mcnemar(2, 10)["p"] == out["p"]
    assert mcnemar(0, 0)["p"] == 1.0 and mcnemar(5, 5)["p"] == 1.0
    assert mcnemar(0, 1)["p"] == 1.0       # one discordant pair proves nothing


def test_chi_square_with_continuity_on_a_large_table():
    # (|30 - 10| - 1)^2 / 40 = 9.025 on 1 d.o.f.; P(chi2_1 > 9.025) = 0.0026631...
    out = mcnemar(30, 10)
    assert out["method"] == "chi-square, continuity-corrected"
    assert out["statistic"] == pytest.approx(9.025)
    assert out["p"] == pytest.approx(0.0026631192591, rel=1e-9)
    assert mcnemar(30, 30)["p"] == 1.0
    # the two regimes agree near the switch (24 exact vs 25 chi-square discordant pairs)
    assert abs(mcnemar(18, 6)["p"] - mcnemar(19, 6)["p"]) < 0.02


def test_holm_by_hand():
    # sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> max(0.06, 0.04) = 0.06
    adj = holm_adjust([0.01, 0.04, 0.03, 0.005, None])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02, None])
    assert holm_adjust([0.9, 0.8]) == [1.0, 1.0]


def _one_class_loses(lost: int, per_class: int = 100) -> tuple[np.ndarray, ...]:
    labels = np.repeat(np.arange(10), per_class)
    base = labels.copy()
    cand = labels.copy()
    cand[:lost] = 5                                  # class 0 loses `lost` samples
    cand[per_class:per_class + 2] = 9                # class 1 loses 2 (noise)
    cand[9 * per_class] = 0                          # class 9 loses one ...
    base[9 * per_class + 1] = 0                      # ... and gains one
    return base, cand, labels


@pytest.mark.parametrize("holm", [True, False])
def test_the_class_that_lost_is_found(holm):
    base, cand, labels = _one_class_loses(30)
    names = [f"c{k}" for k in range(10)]
    out = compare_predictions(base, cand, labels, num_classes=10, holm=holm, class_names=names)
    assert out["correction"] == ("holm" if holm else "none")
    assert (out["right_to_wrong"], out["wrong_to_right"]) == (33, 1)
    assert out["changed"] == 34
    assert out["lost_significantly"] == [0]
    row = out["per_class"][0]
    assert row == {"class": 0, "n": 100, "baseline": 1.0, "candidate": 0.7, "delta": -0.3,
                   "right_to_wrong": 30, "wrong_to_right": 0, "p": row["p"],
                   "p_adjusted": row["p_adjusted"], "name": "c0"}
    assert row["p"] == pytest.approx(math.erfc(math.sqrt(29 ** 2 / 30 / 2)))
    assert row["p_adjusted"] == pytest.approx(min(1.0, 10 * row["p"]) if holm else row["p"])
    assert out["per_class"][1]["p"] == 0.5          # exact: 2 * C(2,0) / 4


def test_holm_is_stricter_than_no_correction():
    base, cand, labels = _one_class_loses(6)        # exact p = 2 / 64 = 0.03125
    plain = compare_predictions(base, cand, labels, num_classes=10, holm=False)
    holm = compare_predictions(base, cand, labels, num_classes=10, holm=True)
    assert plain["per_class"][0]["p"] == 0.03125
    assert plain["lost_significantly"] == [0] and holm["lost_significantly"] == []


def test_a_class_without_samples_is_not_tested():
    labels = np.array([0, 0, 1, 1])
    out = compare_predictions(labels, labels, labels, num_classes=3)
    assert out["per_class"][2] == {"class": 2, "n": 0, "baseline": None, "candidate": None,
                                   "delta": None, "right_to_wrong": 0, "wrong_to_right": 0,
                                   "p": None, "p_adjusted": None}


def test_mismatched_inputs_are_one_clear_error():
    with pytest.raises(ConfigError, match="same samples"):
        compare_predictions(np.zeros(3), np.zeros(4), np.zeros(3))
    with pytest.raises(ConfigError, match="alpha=1.5"):
        compare_predictions(np.zeros(3), np.zeros(3), np.zeros(3), alpha=1.5)
    with pytest.raises(ConfigError, match=">= 0"):
        mcnemar(-1, 2)
