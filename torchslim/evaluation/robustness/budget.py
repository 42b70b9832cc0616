"""Budget checks on a candidate's robustness block against the baseline's.

Each check has the shape the pipeline's checks have (``torchslim.pipeline.summary``):
``{"check", "value", "limit", "op", "ok"}``, so a recipe's verdict and the accuracy guard
can treat a robustness limit like a top-1 limit. A limit of None adds no check; a figure
missing from either block (no attack model, say) makes its check fail with value None
rather than pass unseen.
"""

from __future__ import annotations

from typing import Any

from torchslim.evaluation.robustness.config import RobustnessLimits

__all__ = ["robustness_checks", "worst_class_drop", "worst_adversarial_drop", "check"]

Block = dict[str, Any]


def check(name: str, value: float | None, limit: float, op: str) -> dict[str, Any]:
    """One check; ``op`` is "<=" or ">=" (the pipeline's rule, with the same tolerance)."""
    ok = value is not None and (value <= limit + 1e-9 if op == "<=" else value >= limit)
    return {"check": name, "value": None if value is None else round(float(value), 6),
            "limit": limit, "op": op, "ok": bool(ok)}


def _drop(base: float | None, cand: float | None) -> float | None:
    return None if base is None or cand is None else base - cand


def worst_class_drop(candidate: Block, baseline: Block) -> tuple[float | None, int | None]:
    """The largest clean top-1 drop of one class, in points, and that class's index."""
    cand, base = candidate.get("per_class_top1") or [], baseline.get("per_class_top1") or []
    drops = {k: 100.0 * (b - c) for k, (b, c) in enumerate(zip(base, cand))
             if b is not None and c is not None}
    if not drops or len(cand) != len(base):
        return None, None
    worst = max(drops, key=lambda k: drops[k])
    return drops[worst], worst


def worst_adversarial_drop(candidate: Block, baseline: Block) -> tuple[float | None, str | None]:
    """The largest drop of worst-case accuracy under one attack, and that attack's key.

    The candidate's figure is the lower of transfer and white-box (when it has one); the
    baseline's is white-box on itself. Transfer alone is weaker than white-box, so for a
    candidate that is not a torch model this drop is a lower bound of the real one.
    """
    cand = (candidate.get("adversarial") or {}).get("attacks") or {}
    base = (baseline.get("adversarial") or {}).get("attacks") or {}
    drops = {k: _drop(base[k]["worst_top1"], a["worst_top1"]) for k, a in cand.items() if k in base}
    if not drops:
        return None, None
    key = max(drops, key=lambda k: drops[k])
    return drops[key], key


def robustness_checks(candidate: Block, baseline: Block, limits: RobustnessLimits
                      ) -> list[dict[str, Any]]:
    """The checks ``limits`` asks for, candidate against baseline, in a fixed order."""
    checks = []
    if limits.max_corruption_drop is not None:
        drop = _drop((baseline.get("corruptions") or {}).get("mean_top1"),
                     (candidate.get("corruptions") or {}).get("mean_top1"))
        checks.append(check("top-1 drop under corruption (mean)", drop,
                            limits.max_corruption_drop, "<="))
    if limits.max_ece_increase is not None:
        rise = _drop((candidate.get("calibration") or {}).get("ece"),
                     (baseline.get("calibration") or {}).get("ece"))
        checks.append(check("ECE increase", rise, limits.max_ece_increase, "<="))
    if limits.max_class_drop_points is not None:
        drop, which = worst_class_drop(candidate, baseline)
        label = "" if which is None else f", class {_class_name(candidate, which)}"
        checks.append(check(f"worst class top-1 drop (points{label})", drop,
                            limits.max_class_drop_points, "<="))
    if limits.max_adversarial_drop is not None:
        drop, which = worst_adversarial_drop(candidate, baseline)
        checks.append(check(f"top-1 drop under attack ({which or 'no attack measured'})", drop,
                            limits.max_adversarial_drop, "<="))
    return checks


def _class_name(block: Block, k: int) -> str:
    rows = (block.get("flips") or {}).get("per_class") or []
    name = rows[k].get("name") if k < len(rows) else None
    return f"{k} {name!r}" if name is not None else str(k)
