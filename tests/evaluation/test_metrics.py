import numpy as np
import pytest

from torchslim.errors import ConfigError
from torchslim.evaluation.metrics import (agreement, confusion_matrix, mean_cosine,
                                        per_class_accuracy, topk_accuracy)

# 4 samples, 3 classes. argmax: [0, 2, 1, 1]; labels: [0, 1, 1, 2].
LOGITS = np.array([[3.0, 1.0, 0.0],
                   [0.0, 1.0, 2.0],
                   [0.5, 2.0, 0.1],
                   [0.2, 3.0, 1.0]])
LABELS = np.array([0, 1, 1, 2])


def test_top1_counts_argmax_hits():
    assert topk_accuracy(LOGITS, LABELS, 1) == pytest.approx(2 / 4)


def test_top2_adds_second_choices():
    # second choices: sample 1 -> class 1 (hit), sample 3 -> class 2 (hit)
    assert topk_accuracy(LOGITS, LABELS, 2) == pytest.approx(4 / 4)


def test_top5_is_clipped_to_num_classes():
    assert topk_accuracy(LOGITS, LABELS, 5) == 1.0


def test_topk_rejects_k_zero():
    with pytest.raises(ConfigError):
        topk_accuracy(LOGITS, LABELS, 0)


def test_confusion_rows_are_true_class():
    preds = LOGITS.argmax(axis=1)
    expected = np.array([[1, 0, 0],
                         [0, 1, 1],
                         [0, 1, 0]])
    np.testing.assert_array_equal(confusion_matrix(preds, LABELS, 3), expected)


def test_per_class_accuracy_and_missing_class_is_nan():
    preds = LOGITS.argmax(axis=1)
    np.testing.assert_allclose(per_class_accuracy(preds, LABELS, 3), [1.0, 0.5, 0.0])
    acc = per_class_accuracy(np.array([0, 0]), np.array([0, 1]), 3)
    assert acc[0] == 1.0 and acc[1] == 0.0 and np.isnan(acc[2])


def test_confusion_rejects_label_out_of_range():
    with pytest.raises(ConfigError, match="num_classes=3"):
        confusion_matrix(np.array([0]), np.array([3]), 3)


def test_agreement_fraction_of_same_argmax():
    other = LOGITS.copy()
    other[1] = [5.0, 0.0, 0.0]  # argmax 2 -> 0
    assert agreement(LOGITS, other) == pytest.approx(3 / 4)
    assert agreement(LOGITS, LOGITS) == 1.0


def test_mean_cosine_per_sample_then_mean():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 1.0], [2.0, 2.0]])  # cosines 0 and 1
    assert mean_cosine(a, b) == pytest.approx(0.5)
    assert mean_cosine(np.zeros((1, 2)), np.zeros((1, 2))) == 1.0


def test_shape_mismatch_is_config_error():
    with pytest.raises(ConfigError, match="same data"):
        agreement(LOGITS, LOGITS[:3])
