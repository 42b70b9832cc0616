"""Where the errors moved: paired flips between a baseline and a candidate, with McNemar.

Two classifiers scored on the same samples differ only on the discordant ones: ``b``
right -> wrong (the baseline was right, the candidate is wrong) and ``c`` wrong -> right.
Under "equally accurate" each discordant sample is a fair coin, so McNemar's test asks
whether ``b`` vs ``c`` is a plausible split of ``b + c`` fair tosses:

- ``b + c < 25``: the exact two-sided binomial tail, ``min(1, 2 P(X <= min(b, c)))``
  with ``X ~ Binomial(b + c, 1/2)``, in exact integer arithmetic;
- otherwise: chi-square with Edwards' continuity correction,
  ``(max(|b - c| - 1, 0))^2 / (b + c)`` on one degree of freedom, ``p = erfc(sqrt(stat/2))``.

Per class the same test runs on that class's samples only. Classes "lost significantly"
when the candidate is worse there and the p-value (Holm-corrected across the classes
by default, which controls the chance of any false flag at ``alpha``) is below ``alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from torchslim.errors import ConfigError

__all__ = ["mcnemar", "holm_adjust", "compare_predictions", "EXACT_BELOW"]

EXACT_BELOW = 25   # discordant pairs under which the chi-square approximation is poor


def _binomial_two_sided(k: int, n: int) -> float:
    """``min(1, 2 P(X <= k))`` for ``X ~ Binomial(n, 1/2)``, ``k <= n / 2``, exactly."""
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, tail / 2 ** (n - 1)) if n else 1.0


def mcnemar(right_to_wrong: int, wrong_to_right: int, *,
            exact_below: int = EXACT_BELOW) -> dict[str, Any]:
    """McNemar's test on the discordant counts: ``{"statistic", "p", "method"}``."""
    b, c = int(right_to_wrong), int(wrong_to_right)
    if b < 0 or c < 0:
        raise ConfigError(f"discordant counts must be >= 0, got {b} and {c}")
    n = b + c
    if n < exact_below:
        return {"statistic": float(min(b, c)), "p": _binomial_two_sided(min(b, c), n),
                "method": "exact binomial"}
    stat = max(abs(b - c) - 1, 0) ** 2 / n
    return {"statistic": stat, "p": math.erfc(math.sqrt(stat / 2)),
            "method": "chi-square, continuity-corrected"}


def holm_adjust(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None and does not count as a test)."""
    tested = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    m = len(tested)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(tested)):
        running = max(running, min(1.0, (m - rank) * p))   # monotone in the sorted order
        adjusted[i] = running
    return adjusted


def _as_labels(a: np.ndarray, what: str, n: int | None = None) -> np.ndarray:
    a = np.asarray(a).reshape(-1).astype(np.int64)
    if n is not None and a.shape[0] != n:
        raise ConfigError(f"{what} has {a.shape[0]} entries, the labels {n}; compare "
                          "predictions on the same samples in the same order")
    return a


def _flips(base_ok: np.ndarray, cand_ok: np.ndarray) -> tuple[int, int]:
    return int(np.sum(base_ok & ~cand_ok)), int(np.sum(~base_ok & cand_ok))


def _class_row(k: int, mask: np.ndarray, base_ok: np.ndarray, cand_ok: np.ndarray
               ) -> dict[str, Any]:
    n = int(mask.sum())
    if n == 0:
        return {"class": k, "n": 0, "baseline": None, "candidate": None, "delta": None,
                "right_to_wrong": 0, "wrong_to_right": 0, "p": None}
    b, c = _flips(base_ok[mask], cand_ok[mask])
    base, cand = float(base_ok[mask].mean()), float(cand_ok[mask].mean())
    return {"class": k, "n": n, "baseline": round(base, 6), "candidate": round(cand, 6),
            "delta": round(cand - base, 6), "right_to_wrong": b, "wrong_to_right": c,
            "p": mcnemar(b, c)["p"]}


def compare_predictions(baseline: np.ndarray, candidate: np.ndarray, labels: np.ndarray, *,
                        num_classes: int | None = None, alpha: float = 0.05,
                        holm: bool = True, class_names: Sequence[str] | None = None
                        ) -> dict[str, Any]:
    """Flips overall and per class, McNemar p-values, and the classes that lost significantly.

    ``baseline``/``candidate`` are predicted classes (N,) on the same samples as ``labels``.
    """
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha={alpha} must be in (0, 1)")
    labels = _as_labels(labels, "labels")
    base = _as_labels(baseline, "baseline predictions", labels.shape[0])
    cand = _as_labels(candidate, "candidate predictions", labels.shape[0])
    k = num_classes or int(max(labels.max(initial=-1), base.max(initial=-1),
                               cand.max(initial=-1)) + 1)
    base_ok, cand_ok = base == labels, cand == labels
    b, c = _flips(base_ok, cand_ok)
    rows = [_class_row(j, labels == j, base_ok, cand_ok) for j in range(k)]
    adjusted = holm_adjust([r["p"] for r in rows]) if holm else [r["p"] for r in rows]
    for r, p_adj, name in zip(rows, adjusted, class_names or [None] * k):
        r["p_adjusted"] = p_adj
        if name is not None:
            r["name"] = str(name)
    significant = [r for r in rows if r["p_adjusted"] is not None and r["p_adjusted"] < alpha]
    return {"n": int(labels.shape[0]), "right_to_wrong": b, "wrong_to_right": c,
            "changed": int(np.sum(base != cand)), "mcnemar": mcnemar(b, c),
            "alpha": alpha, "correction": "holm" if holm else "none",
            "lost_significantly": [r["class"] for r in significant if r["delta"] < 0],
            "gained_significantly": [r["class"] for r in significant if r["delta"] > 0],
            "per_class": rows}
