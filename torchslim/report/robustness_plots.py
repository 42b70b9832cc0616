"""The robustness figures, as PNG bytes in the report's house style (torchslim.report.plots).

``reliability_plot({name: block["calibration"], ...})`` draws the reliability diagram:
accuracy against confidence per bin, one line per candidate, the diagonal being perfect
calibration. ``robustness_plot({name: block, ...})`` draws top-1 clean, under each
corruption (mean over severities) and under each attack, one bar per candidate.
They draw the blocks of ``torchslim.evaluation.robustness`` but live with the report's
other figures, below the evaluation layer's imports; ``torchslim.report.html`` loads them
(and matplotlib) only when a page with a robustness section is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

# the report's style, colours and PNG writer; importing it also selects the Agg backend
from torchslim.report.plots import _STYLE, _color, _empty, _figure, _legend_below, _png

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

__all__ = ["reliability_plot", "robustness_plot"]


def reliability_plot(calibrations: Mapping[str, dict[str, Any]]) -> bytes:
    """Accuracy vs mean confidence per non-empty bin; a marker's area follows its count."""
    with plt.rc_context(_STYLE):
        fig, ax = _figure(width=5.2, height=4.4)
        ax.plot([0, 1], [0, 1], linestyle="--", color="#888888", linewidth=1.0,
                label="perfectly calibrated")
        drawn = 0
        for i, (name, cal) in enumerate(calibrations.items()):
            rows = [r for r in cal.get("bins") or [] if r["count"]]
            if not rows:
                continue
            total = sum(r["count"] for r in rows)
            conf = [r["confidence"] for r in rows]
            acc = [r["accuracy"] for r in rows]
            sizes = [12 + 200 * r["count"] / total for r in rows]
            ax.plot(conf, acc, color=_color(i), linewidth=1.0, alpha=0.8,
                    label=f"{name} (ECE {100 * cal['ece']:.1f} %)")
            ax.scatter(conf, acc, s=sizes, color=_color(i), edgecolor="black", linewidth=0.5,
                       zorder=3)
            drawn += 1
        if not drawn:
            _empty(ax, "no calibration measured")
            return _png(fig)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("confidence (top-1 softmax)")
        ax.set_ylabel("accuracy")
        ax.set_title("Reliability (below the diagonal: over-confident)")
        return _png(fig, bottom=_legend_below(fig, ax, drawn + 1))


def _groups(block: dict[str, Any]) -> dict[str, float | None]:
    """Figure label -> top-1 of one block: clean, each corruption, each attack."""
    out: dict[str, float | None] = {"clean": block.get("clean_top1")}
    for name, c in ((block.get("corruptions") or {}).get("by_corruption") or {}).items():
        out[name.replace("_", " ")] = c.get("mean_top1")
    for key, a in ((block.get("adversarial") or {}).get("attacks") or {}).items():
        out[key] = a.get("worst_top1")
    return out


def robustness_plot(blocks: Mapping[str, dict[str, Any]]) -> bytes:
    """Top-1 (%) per condition, grouped, one bar per candidate."""
    per = {name: _groups(b) for name, b in blocks.items()}
    labels = list(dict.fromkeys(k for g in per.values() for k in g))
    with plt.rc_context(_STYLE):
        fig, ax = _figure(width=min(11.0, max(6.4, 0.5 * len(labels) * (1 + 0.5 * len(per)))))
        if not per:
            _empty(ax, "no robustness measured")
            return _png(fig)
        width = 0.8 / len(per)
        for i, (name, g) in enumerate(per.items()):
            ys = [np.nan if g.get(k) is None else 100.0 * g[k] for k in labels]
            xs = np.arange(len(labels)) + (i - (len(per) - 1) / 2) * width
            ax.bar(xs, ys, width, color=_color(i), edgecolor="black", linewidth=0.5, label=name)
        values = [100.0 * v for g in per.values() for v in g.values() if v is not None]
        low = min(values, default=0.0)
        ax.set_ylim(max(0.0, 10 * math.floor(low / 10) - 5), 100)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title("Top-1 clean, under corruption (mean of severities), under attack")
        return _png(fig, bottom=_legend_below(fig, ax, len(per)))
