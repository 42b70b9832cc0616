"""Can the model's confidence be trusted? ECE, NLL and a reliability diagram's data.

Everything is computed from logits ``(N, K)`` and labels ``(N,)`` in float64 numpy, so
it applies to any session's outputs (the full test split that ``evaluate`` collected, or
the robustness subset).

ECE (Guo et al., 2017): the top-1 confidences (softmax maximum) fall into ``bins``
equal-width bins ``((i - 1) / bins, i / bins]`` (a confidence of exactly 0 goes to the
first); ECE = sum over bins of ``count / N * |accuracy - mean confidence|``. A perfectly
calibrated predictor scores 0 up to sampling noise, one that is always surer than right
scores about its average over-confidence.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from torchslim.errors import ConfigError

__all__ = ["softmax", "log_softmax", "expected_calibration_error", "negative_log_likelihood",
           "reliability_bins", "calibration"]


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ConfigError(f"logits {logits.shape} and labels {labels.shape} must be "
                          "(N, num_classes) and (N,)")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ConfigError(f"labels in [{labels.min()}, {labels.max()}] for "
                          f"{logits.shape[1]} model outputs")
    return logits, labels


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)           # stable: exp never overflows
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean of ``-log p(label)`` in nats."""
    logits, labels = _check(logits, labels)
    if labels.size == 0:
        return 0.0
    return float(-np.mean(log_softmax(logits)[np.arange(labels.size), labels]))


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = 15
                     ) -> list[dict[str, Any]]:
    """Per bin: its edges, the samples' mean confidence and accuracy (None when empty), count."""
    if bins < 1:
        raise ConfigError(f"bins={bins} must be >= 1")
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)  # (N,)
    count = np.bincount(index, minlength=bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=bins)
    hit_sum = np.bincount(index, weights=correct, minlength=bins)
    rows = []
    for b in range(bins):
        n = int(count[b])
        rows.append({"lo": b / bins, "hi": (b + 1) / bins, "count": n,
                     "confidence": float(conf_sum[b] / n) if n else None,
                     "accuracy": float(hit_sum[b] / n) if n else None})
    return rows


def _ece(rows: list[dict[str, Any]]) -> float:
    total = sum(r["count"] for r in rows)
    if total == 0:
        return 0.0
    return float(sum(r["count"] / total * abs(r["accuracy"] - r["confidence"])
                     for r in rows if r["count"]))


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-1 confidence, ``bins`` equal-width bins (0-1)."""
    logits, labels = _check(logits, labels)
    p = softmax(logits)
    return _ece(reliability_bins(p.max(axis=1), p.argmax(axis=1) == labels, bins))


def calibration(logits: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """The report block: ``ece``, ``nll``, mean confidence, accuracy and the ``bins``."""
    logits, labels = _check(logits, labels)
    p = softmax(logits)
    confidence, correct = p.max(axis=1), p.argmax(axis=1) == labels
    rows = reliability_bins(confidence, correct, bins)
    return {"ece": round(_ece(rows), 6), "nll": round(negative_log_likelihood(logits, labels), 6),
            "mean_confidence": round(float(confidence.mean()), 6) if labels.size else None,
            "accuracy": round(float(correct.mean()), 6) if labels.size else None,
            "n": int(labels.size), "bins": rows}
