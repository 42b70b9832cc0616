"""Accuracy metrics on logits, in plain numpy so each one can be checked by hand.

Every function takes arrays already collected from a session: ``logits`` is
``(N, num_classes)`` float, ``labels`` and ``preds`` are ``(N,)`` int. Fractions are 0-1.

Outputs that are not class scores (embeddings, hidden states, a detector's boxes) are
measured by a ``Metric``: any callable ``metric(outputs, targets, reference)`` returning
named figures, such as ``output_cosine``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from torchslim.errors import ConfigError

__all__ = ["topk_accuracy", "per_class_accuracy", "confusion_matrix", "agreement",
           "mean_cosine", "Metric", "output_cosine", "run_metric"]


@runtime_checkable
class Metric(Protocol):
    """Named figures computed once from a whole evaluation.

    ``outputs`` is the session's first output over every sample, ``(N, ...)``;
    ``targets`` the data's targets joined the same way, or None when the data yields None;
    ``reference`` the outputs of the reference result (same shape as ``outputs``), or None
    without one. Returns ``{name: value}``; the names become keys of the result's
    ``metrics``, so name them by what they measure ("cosine_to_reference", "mse").
    """

    def __call__(self, outputs: np.ndarray, targets: np.ndarray | None,
                 reference: np.ndarray | None) -> Mapping[str, float]: ...


def output_cosine(outputs: np.ndarray, targets: np.ndarray | None,
                  reference: np.ndarray | None) -> dict[str, float]:
    """Mean per-sample cosine of the outputs (each sample flattened) with float
    ``targets`` of the same shape (e.g. the original model's embeddings stored as the
    data's targets) and with the reference's outputs, whichever are given. The baseline
    itself, with neither, gets no figures (``{}``), so one metric serves every candidate."""
    out = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    figures: dict[str, float] = {}
    if targets is not None:
        t = np.asarray(targets)
        if t.dtype.kind == "f" and t.shape == np.asarray(outputs).shape:
            figures["cosine_to_targets"] = mean_cosine(t.reshape(len(out), -1), out)
    if reference is not None:
        figures["cosine_to_reference"] = mean_cosine(
            np.asarray(reference).reshape(len(out), -1), out)
    return figures


def run_metric(metric: Any, outputs: np.ndarray, targets: np.ndarray | None,
               reference: np.ndarray | None) -> dict[str, float]:
    """Call a user's ``metric`` and check what it returns: ``{str: finite number}``."""
    figures = metric(outputs, targets, reference)
    name = getattr(metric, "__name__", type(metric).__name__)
    if not isinstance(figures, Mapping):
        raise ConfigError(f"metric {name} returned {type(figures).__name__}; a metric "
                          "returns a dict of named figures, e.g. {'cosine': 0.99}")
    checked = {}
    for key, value in figures.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not isinstance(key, str) or not math.isfinite(number):
            raise ConfigError(f"metric {name} gave {key!r}: {value!r}; each figure needs a "
                              "string name and a finite number")
        checked[key] = number
    return checked


def _check_logits(logits: np.ndarray, labels: np.ndarray | None = None) -> None:
    if logits.ndim != 2:
        raise ConfigError(f"logits must be 2-D (N, num_classes), got shape {logits.shape}; "
                          "flatten the model output before evaluating")
    if labels is not None and labels.shape != (logits.shape[0],):
        raise ConfigError(f"labels shape {labels.shape} does not match logits {logits.shape}; "
                          "pass one integer label per sample")


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the ``k`` highest logits.

    ``k`` is clipped to the number of classes, so top-5 on a 3-class problem is 1.0
    rather than an error: a report asks for top-5 whatever the dataset.
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    _check_logits(logits, labels)
    if k < 1:
        raise ConfigError(f"k={k} must be >= 1")
    if logits.shape[0] == 0:
        return 0.0
    k = min(k, logits.shape[1])
    # Stable sort on the negated logits: ties go to the lower class index, like argmax.
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]  # (N, k)
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def confusion_matrix(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 counts; rows are the true class, columns the guess."""
    preds = np.asarray(preds, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if preds.shape != labels.shape:
        raise ConfigError(f"preds shape {preds.shape} != labels shape {labels.shape}")
    for what, arr in (("labels", labels), ("preds", preds)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ConfigError(f"{what} hold values in [{arr.min()}, {arr.max()}] but "
                              f"num_classes={num_classes}; the model's output width must "
                              "cover every label")
    flat = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_accuracy(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of each class: correct / samples of that class.

    A class with no samples gets NaN, not 0: "never seen" is not "always wrong".
    """
    cm = confusion_matrix(preds, labels, num_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def agreement(a_logits: np.ndarray, b_logits: np.ndarray) -> float:
    """Fraction of samples where both models pick the same class (argmax)."""
    a, b = np.asarray(a_logits), np.asarray(b_logits)
    _check_same(a, b)
    if a.shape[0] == 0:
        return 1.0
    return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of each pair of output rows, then the mean over samples.

    Per sample first, so one large-norm sample cannot hide many small disagreements.
    Two all-zero rows count as identical (1.0); one zero row against a non-zero one as 0.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    _check_same(a, b)
    if a.shape[0] == 0:
        return 1.0
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)  # (N,)
    dot = np.sum(a * b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (na * nb)
    cos = np.where((na == 0) & (nb == 0), 1.0, np.where((na == 0) | (nb == 0), 0.0, cos))
    return float(np.mean(np.clip(cos, -1.0, 1.0)))


def _check_same(a: np.ndarray, b: np.ndarray) -> None:
    _check_logits(a)
    if a.shape != b.shape:
        raise ConfigError(f"outputs differ in shape: {a.shape} vs {b.shape}; compare models "
                          "evaluated on the same data in the same order")
