"""The report's four figures, as PNG bytes (matplotlib, Agg backend, nothing shown).

Each function takes report.json candidates (``EvalResult.to_dict()`` dicts), so the same
code draws a fresh run and a report read back from disk. A candidate keeps its colour in
every figure (its position in the list), and its runtime picks the marker.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib

if matplotlib.get_backend().lower() != "agg":
    matplotlib.use("Agg", force=True)  # never open a window; safe on a headless server
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from torchslim.report.table import human_bytes  # noqa: E402

__all__ = ["accuracy_latency_plot", "size_plot", "latency_plot", "per_class_delta_plot",
           "largest_batch"]

Candidate = dict[str, Any]

_MARKERS = {"torch": "o", "onnxruntime": "s", "openvino": "D", "tensorrt": "^"}
_FALLBACK_MARKERS = ("v", "P", "X", "*", "h")
_DPI = 110
_STYLE = {"axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
          "grid.alpha": 0.3, "font.size": 9, "axes.titlesize": 11,
          "axes.titleweight": "bold", "legend.fontsize": 8, "legend.frameon": False}


def _color(i: int) -> tuple[float, ...]:
    return plt.get_cmap("tab10")(i % 10)


def _marker(runtime: str) -> str:
    if runtime in _MARKERS:
        return _MARKERS[runtime]
    return _FALLBACK_MARKERS[sum(map(ord, runtime)) % len(_FALLBACK_MARKERS)]


def _png(fig: plt.Figure, *, bottom: float = 0.0) -> bytes:
    """PNG bytes of ``fig`` (closed afterwards); ``bottom`` is kept free for a legend."""
    buf = io.BytesIO()
    try:
        fig.tight_layout(rect=(0.0, bottom, 1.0, 1.0))
        fig.savefig(buf, format="png", dpi=_DPI)
    finally:
        plt.close(fig)
    return buf.getvalue()


def _figure(width: float = 6.4, height: float = 4.0) -> tuple[plt.Figure, plt.Axes]:
    """A figure; callers draw inside ``plt.rc_context(_STYLE)`` so the style applies."""
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_axisbelow(True)
    return fig, ax


def _empty(ax: plt.Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes,
            color="#666666")
    ax.set_xticks([])
    ax.set_yticks([])


def _legend_below(fig: plt.Figure, ax: plt.Axes, entries: int) -> float:
    """A legend along the figure's bottom edge, where it never hides a bar.

    Returns the fraction of the figure height it needs, for ``_png(bottom=...)``.
    """
    columns = min(entries, 3)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=columns)
    rows = math.ceil(entries / columns) if columns else 0
    return 0.03 + 0.055 * rows


def largest_batch(candidates: Sequence[Candidate]) -> str | None:
    """The largest batch size (as a key) that every candidate was timed at."""
    common = set.intersection(*(set(c.get("latency_ms") or {}) for c in candidates)) \
        if candidates else set()
    return max(common, key=int) if common else None


def accuracy_latency_plot(candidates: Sequence[Candidate], batch: str | None = None) -> bytes:
    """Top-1 (%) against p50 latency at ``batch``: up and to the left is better."""
    batch = batch or largest_batch(candidates)
    with plt.rc_context(_STYLE):
        fig, ax = _figure()
        if batch is None:
            _empty(ax, "no common batch size timed")
            return _png(fig)
        seen_runtimes: set[str] = set()
        for i, c in enumerate(candidates):
            x, y = c["latency_ms"][batch]["p50"], 100.0 * c["top1"]
            runtime = c.get("runtime", "?")
            ax.scatter([x], [y], s=70, color=_color(i), marker=_marker(runtime),
                       edgecolor="black", linewidth=0.6, zorder=3)
            ax.annotate(c["name"], (x, y), textcoords="offset points", xytext=(6, 5),
                        fontsize=8)
            seen_runtimes.add(runtime)
        for runtime in sorted(seen_runtimes):  # a legend of markers, in grey
            ax.scatter([], [], marker=_marker(runtime), color="#bbbbbb", edgecolor="black",
                       label=runtime)
        ax.legend(title="runtime", loc="best")
        ax.set_xlabel(f"p50 latency at batch {batch} (ms)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title("Accuracy vs latency")
        ax.margins(x=0.25, y=0.2)
        return _png(fig)


def size_plot(candidates: Sequence[Candidate]) -> bytes:
    """Bytes on disk per candidate, labelled on each bar."""
    with plt.rc_context(_STYLE):
        fig, ax = _figure()
        names = [c["name"] for c in candidates]
        sizes = [c.get("bytes") or 0 for c in candidates]
        bars = ax.bar(range(len(names)), [s / 1e6 for s in sizes],
                      color=[_color(i) for i in range(len(names))], edgecolor="black",
                      linewidth=0.5)
        for bar, size, c in zip(bars, sizes, candidates):
            label = human_bytes(size) if c.get("bytes") is not None else "n/a"
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                        textcoords="offset points")
        ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
        ax.set_ylabel("size on disk (MB)")
        ax.set_title("Model size")
        ax.margins(y=0.15)
        return _png(fig)


def latency_plot(candidates: Sequence[Candidate]) -> bytes:
    """p50 latency per batch size, one bar per candidate; log scale when ranges are wide."""
    batches = sorted({b for c in candidates for b in (c.get("latency_ms") or {})}, key=int)
    with plt.rc_context(_STYLE):
        fig, ax = _figure()
        if not batches:
            _empty(ax, "no latency measured")
            return _png(fig)
        width = 0.8 / max(len(candidates), 1)
        values = []
        for i, c in enumerate(candidates):
            p50 = [c["latency_ms"].get(b, {}).get("p50", np.nan) for b in batches]
            values += [v for v in p50 if not math.isnan(v)]
            xs = np.arange(len(batches)) + (i - (len(candidates) - 1) / 2) * width
            ax.bar(xs, p50, width, color=_color(i), edgecolor="black", linewidth=0.5,
                   label=c["name"])
        if values and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        ax.set_ylabel("p50 latency (ms)" + (", log scale" if ax.get_yscale() == "log" else ""))
        ax.set_title("Latency per batch size (lower is better)")
        return _png(fig, bottom=_legend_below(fig, ax, len(candidates)))


def per_class_delta_plot(candidates: Sequence[Candidate], baseline: str,
                         class_names: Sequence[str] | None = None) -> bytes:
    """Per-class top-1 change vs the baseline, in points, for each other candidate."""
    base = next(c for c in candidates if c["name"] == baseline)
    others = [(i, c) for i, c in enumerate(candidates) if c["name"] != baseline]
    n_classes = len(base.get("per_class") or [])
    names = list(class_names) if class_names and len(class_names) == n_classes \
        else [str(k) for k in range(n_classes)]
    with plt.rc_context(_STYLE):
        fig, ax = _figure(width=max(6.4, 0.45 * n_classes + 2.0))
        if not others or n_classes == 0:
            _empty(ax, "no candidate besides the baseline")
            ax.set_title("Per-class accuracy change vs baseline")
            return _png(fig)
        width = 0.8 / len(others)
        largest = 0.0
        for j, (i, c) in enumerate(others):
            delta = [100.0 * (a - b) if a is not None and b is not None else np.nan
                     for a, b in zip(c.get("per_class") or [], base["per_class"])]
            largest = max([largest, *(abs(d) for d in delta if not math.isnan(d))])
            xs = np.arange(len(delta)) + (j - (len(others) - 1) / 2) * width
            ax.bar(xs, delta, width, color=_color(i), edgecolor="black", linewidth=0.5,
                   label=c["name"])
        if largest == 0.0:  # otherwise an empty-looking plot reads as a drawing failure
            ax.text(0.5, 0.6, "every class unchanged", ha="center", transform=ax.transAxes,
                    color="#666666")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(range(n_classes), names, rotation=30, ha="right")
        ax.set_ylabel("Δ top-1 vs baseline (points)")
        ax.set_title(f"Per-class accuracy change vs {baseline}")
        ax.margins(y=0.2)
        return _png(fig, bottom=_legend_below(fig, ax, len(others)))
