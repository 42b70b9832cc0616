import math

import numpy as np
import pytest

from torchslim.errors import ConfigError
from torchslim.evaluation.robustness import (calibration, expected_calibration_error,
                                             negative_log_likelihood, reliability_bins)

K = 10


def synthetic(n: int, over: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose top class has probability c ~ U(0.2, 1) (the rest share 1 - c); the
    label is that class with probability c - over, so ``over`` is the over-confidence."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(0.2, 1.0 - 1e-6, n)
    top = rng.integers(0, K, n)
    p = np.repeat(((1 - c) / (K - 1))[:, None], K, axis=1)
    p[np.arange(n), top] = c
    right = rng.uniform(size=n) < np.clip(c - over, 0, 1)
    other = (top + rng.integers(1, K, n)) % K
    return np.log(p), np.where(right, top, other)


def test_a_perfectly_calibrated_predictor_has_ece_near_zero():
    logits, labels = synthetic(40_000, over=0.0)
    assert expected_calibration_error(logits, labels) < 0.01


def test_an_over_confident_predictor_has_ece_near_its_over_confidence():
    logits, labels = synthetic(40_000, over=0.2)
    assert abs(expected_calibration_error(logits, labels) - 0.2) < 0.02


def test_ece_by_hand():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right); 2 bins:
    # bin (0.5, 1]: all four, acc 3/4, conf 0.75 -> ECE 0; with 10 bins:
    # bin (0.8, 0.9]: acc 1/2 vs 0.9; bin (0.5, 0.6]: acc 1 vs 0.6 -> 0.5*0.4 + 0.5*0.4 = 0.4
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    assert expected_calibration_error(np.log(p), labels, bins=2) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(np.log(p), labels, bins=10) == pytest.approx(0.4)


def test_nll_of_uniform_logits_is_log_k_and_of_sure_right_ones_zero():
    labels = np.arange(K)
    assert negative_log_likelihood(np.zeros((K, K)), labels) == pytest.approx(math.log(K))
    sure = np.where(np.eye(K, dtype=bool), 50.0, -50.0)
    assert negative_log_likelihood(sure, labels) < 1e-12
    huge = sure * 1e4   # no overflow on large logits
    assert math.isfinite(negative_log_likelihood(huge, labels))


def test_reliability_bins_edges_and_counts():
    rows = reliability_bins(np.array([0.0, 1 / 15, 0.5, 1.0, 1.0]),
                            np.array([True, False, True, True, False]), bins=15)
    assert len(rows) == 15 and sum(r["count"] for r in rows) == 5
    assert rows[0]["count"] == 2            # 0 and exactly 1/15 are in the first bin
    assert rows[7]["count"] == 1 and rows[7]["accuracy"] == 1.0
    assert rows[14]["count"] == 2 and rows[14]["accuracy"] == 0.5 and rows[14]["confidence"] == 1.0
    assert rows[3] == {"lo": 0.2, "hi": 4 / 15, "count": 0, "confidence": None, "accuracy": None}


def test_calibration_block():
    logits, labels = synthetic(2000, over=0.1)
    block = calibration(logits, labels)
    assert set(block) == {"ece", "nll", "mean_confidence", "accuracy", "n", "bins"}
    assert block["n"] == 2000 and len(block["bins"]) == 15
    assert block["mean_confidence"] - block["accuracy"] == pytest.approx(0.1, abs=0.03)
    with pytest.raises(ConfigError, match="labels in"):
        calibration(logits, labels + K)
    with pytest.raises(ConfigError, match="bins=0"):
        reliability_bins(np.zeros(3), np.zeros(3), bins=0)
