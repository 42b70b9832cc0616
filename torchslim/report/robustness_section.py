"""The report's robustness section: one row per candidate that carries a robustness block
(``extra["robustness"]``, see ``torchslim.evaluation.robustness``) and its two figures."""

from __future__ import annotations

import base64
from typing import Any

__all__ = ["robustness_section"]

Candidate = dict[str, Any]
HEADERS = ["candidate", "runtime", "clean top-1", "corruptions (mean)", "worst attack",
           "ECE", "flips ✓→✗ / ✗→✓", "McNemar p", "classes lost"]


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100.0 * x:.1f}%"


def _with_delta(value: float | None, delta: float | None) -> str:
    return _pct(value) if delta is None else f"{_pct(value)} ({100.0 * delta:+.1f})"


def _worst_attack(block: dict[str, Any]) -> str:
    attacks = (block.get("adversarial") or {}).get("attacks") or {}
    if not attacks:
        return "not measured"
    key = min(attacks, key=lambda k: attacks[k]["worst_top1"])
    a = attacks[key]
    kind = "white-box" if a.get("white_box_top1") is not None else "transfer"
    return f"{key}: {_with_delta(a['worst_top1'], a.get('delta_worst'))} {kind}"


def _row(c: Candidate, block: dict[str, Any]) -> list[str]:
    cal, flips = block.get("calibration") or {}, block.get("flips")
    cor = block.get("corruptions") or {}
    ece = cal.get("ece")
    ece_cell = "—" if ece is None else (f"{ece:.4f}" if cal.get("delta_ece") is None
                                        else f"{ece:.4f} ({cal['delta_ece']:+.4f})")
    if flips:
        flip_cell = f"{flips['right_to_wrong']} / {flips['wrong_to_right']}"
        p_cell = f"{flips['mcnemar']['p']:.3g}"
        lost = ", ".join(str(k) for k in flips.get("lost_significantly") or []) or "none"
    else:
        flip_cell, p_cell, lost = "baseline", "—", "—"
    return [c["name"], c.get("runtime", "?"),
            _with_delta(block.get("clean_top1"), block.get("delta_clean_top1")),
            _with_delta(cor.get("mean_top1"), cor.get("delta_mean_top1")),
            _worst_attack(block), ece_cell, flip_cell, p_cell, lost]


def robustness_section(report: dict[str, Any], candidates: list[Candidate]
                       ) -> dict[str, Any] | None:
    """Table rows, figures and a note, or None when no candidate has a robustness block."""
    scored = [(c, (c.get("extra") or {}).get("robustness")) for c in candidates]
    scored = [(c, b) for c, b in scored if b]
    if not scored:
        return None
    from torchslim.report.robustness_plots import reliability_plot, robustness_plot

    blocks = {c["name"]: b for c, b in scored}
    figures = [{"title": "Robustness", "uri": _uri(robustness_plot(blocks)),
                "caption": "Top-1 on the robustness sample: clean, under each corruption "
                           "(mean over severities), under each attack (worst of transfer "
                           "and white-box)."},
               {"title": "Reliability", "uri": _uri(reliability_plot(
                   {n: b["calibration"] for n, b in blocks.items()})),
                "caption": "Accuracy against confidence per bin; the diagonal is perfect "
                           "calibration."}]
    first = scored[0][1]
    sample = first.get("sample") or {}
    meta = report.get("robustness") or {}
    cost = (f" Scoring all {len(scored)} took {meta['seconds']} s."
            if meta.get("seconds") is not None else "")
    note = (f"{sample.get('n', '?')} of {sample.get('of', '?')} test images, stratified by "
            f"class (seed {sample.get('seed', '?')}); figures in brackets are changes against "
            f"{scored[0][0]['name']} in points (ECE in absolute units). Attacks are made "
            "white-box on the float teacher and transferred; a float torch candidate is also "
            "attacked through its own gradients. ECE, flips and McNemar use the whole test "
            f"split; 'classes lost' are those with a Holm-corrected significant drop.{cost}")
    return {"headers": HEADERS, "rows": [_row(c, b) for c, b in scored], "figures": figures,
            "note": note}


def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
