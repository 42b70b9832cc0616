"""report.html: one self-contained page (inline CSS, PNG plots as data URIs, no JS).

It renders from the report.json dict, so a report read back from disk (``torchslim
report``) looks exactly like a fresh one.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from torchslim.report.robustness_section import robustness_section
from torchslim.report.table import candidates_of, summary_table

__all__ = ["render_html"]

_TEMPLATES = Path(__file__).parent / "templates"
Candidate = dict[str, Any]


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _class_names(report: dict[str, Any], base: Candidate) -> list[str]:
    """Names from the report, else from the baseline's evaluation, else the indices."""
    n = len(base.get("per_class") or [])
    names = report.get("class_names") or (base.get("extra") or {}).get("class_names")
    return list(names) if names and len(names) == n else [str(k) for k in range(n)]


def _produced_by(candidates: list[Candidate]) -> str:
    """"runtimes: torch (a) · onnxruntime (b, c)": which engine measured which candidate."""
    by_runtime: dict[str, list[str]] = {}
    for c in candidates:
        by_runtime.setdefault(c.get("runtime", "?"), []).append(c["name"])
    return "Runtimes: " + " · ".join(f"{rt} ({', '.join(names)})"
                                     for rt, names in by_runtime.items())


def _figures(candidates: list[Candidate], baseline: str, names: list[str]) -> list[dict]:
    # matplotlib costs ~0.3 s to import: load it when a page is drawn, not with torchslim
    # (every CLI call and every memory-probe child imports the package).
    from torchslim.report import plots

    batch = plots.largest_batch(candidates)
    runtimes = _produced_by(candidates)
    return [
        {"title": "Accuracy vs latency", "uri": _data_uri(
            plots.accuracy_latency_plot(candidates, batch)),
         "caption": f"Top-1 and p50 latency at batch {batch}, each measured on the "
                    f"candidate's own runtime. {runtimes}."},
        {"title": "Size", "uri": _data_uri(plots.size_plot(candidates)),
         "caption": "Bytes on disk of each artifact (safetensors size for an in-memory "
                    f"PyTorch model). {runtimes}."},
        {"title": "Latency", "uri": _data_uri(plots.latency_plot(candidates)),
         "caption": f"Median (p50) latency per batch size, timed in one run. {runtimes}."},
        {"title": "Per-class change", "uri": _data_uri(
            plots.per_class_delta_plot(candidates, baseline, names)),
         "caption": f"Per-class top-1 of each candidate minus {baseline}, in points. "
                    f"{runtimes}."},
    ]


def _confusion(base: Candidate, names: list[str]) -> list[dict]:
    """Rows of cells with a shade proportional to the row share (diagonal blue, errors red)."""
    rows = []
    for i, counts in enumerate(base.get("confusion") or []):
        total = max(sum(counts), 1)
        cells = []
        for j, count in enumerate(counts):
            share = count / total
            rgb = "37, 99, 235" if i == j else "220, 38, 38"
            color = "#fff" if share > 0.55 else "#1f2937"
            cells.append({"count": count, "style": f"background: rgba({rgb}, "
                          f"{min(share * 1.2, 1.0):.2f}); color: {color}"})
        rows.append({"name": names[i] if i < len(names) else str(i), "cells": cells})
    return rows


def _worst(candidates: list[Candidate], base: Candidate, names: list[str]) -> list[dict]:
    out = []
    for c in candidates:
        k = c.get("worst_class", -1)
        per_class = c.get("per_class") or []
        if k is None or k < 0 or k >= len(per_class) or per_class[k] is None:
            continue
        base_acc = (base.get("per_class") or [None] * (k + 1))[k]
        delta = None if base_acc is None else 100.0 * (per_class[k] - base_acc)
        out.append({"name": c["name"], "runtime": c.get("runtime", "?"),
                    "cls": names[k] if k < len(names) else str(k),
                    "acc": f"{100.0 * per_class[k]:.1f}%",
                    "delta": "—" if delta is None else f"{delta:+.1f}"})
    return out


def render_html(report: dict[str, Any], *, title: str = "torchslim report") -> str:
    """The HTML page for a report.json dict."""
    import jinja2

    candidates, baseline = candidates_of(report)
    base = next((c for c in candidates if c["name"] == baseline), candidates[0])
    names = _class_names(report, base)
    headers, rows = summary_table(report)
    split = headers.index("size")  # speed columns in one table, size columns in another
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    return env.get_template("report.html.j2").render(
        title=title, report=report, baseline=baseline, base=base,
        speed=(headers[:split], [r[:split] for r in rows]),
        size=(headers[:1] + headers[split:], [r[:1] + r[split:] for r in rows]),
        figures=_figures(candidates, baseline, names),
        confusion=_confusion(base, names), class_names=names,
        worst=_worst(candidates, base, names), candidates=candidates,
        sensitivity=_sensitivity(report), pruning=_pruning(report),
        placement=_placement(report), robustness=robustness_section(report, candidates),
        interleaved=_interleaved_note(candidates), registry=report.get("registry"),
        machine=report.get("machine") or {}, dataset=report.get("dataset") or {})


def _interleaved_note(candidates: list[Candidate]) -> str:
    """"here: 10 rounds, 7 candidates in one loop" when the candidates carry interleaved
    speed-ups, "not here" otherwise."""
    timed = [(c.get("extra") or {}).get("speedup_interleaved") for c in candidates]
    timed = [t for t in timed if t and t.get("batches")]
    if not timed:
        return "not here"
    return f"here: {timed[0].get('rounds')} rounds, {len(timed)} candidates in one loop"


def _pruning(report: dict[str, Any]) -> dict[str, Any] | None:
    """Per-layer channels before/after and weight sparsity (``torchslim prune``)."""
    block = report.get("pruning")
    if not block:
        return None
    layers = block.get("layers") or {}
    sparsity = block.get("sparsity") or {}
    rows = []
    for name in sorted(set(layers) | set(sparsity)):
        shape = layers.get(name) or {}
        cin, cout = shape.get("in", ["-", "-"]), shape.get("out", ["-", "-"])
        rows.append([name, f"{cin[0]} → {cin[1]}", f"{cout[0]} → {cout[1]}",
                     f"{100 * sparsity[name]:.1f}%" if name in sparsity else "-"])
    note = (f"MACs {block.get('macs_before', 0):,} → {block.get('macs_after', 0):,}, "
            f"parameters {block.get('params_before', 0):,} → {block.get('params_after', 0):,}, "
            "counted on the rewritten model.")
    return {"headers": ["layer", "in channels", "out channels", "zero weights"],
            "rows": rows, "note": note}


def _placement(report: dict[str, Any]) -> dict[str, Any] | None:
    """Each node variant that runtime-aware placement timed, and what it kept."""
    block = report.get("placement")
    if not block or not block.get("trials"):
        return None
    rows = [[t["node"], t["op"], t["variant"], f"{t['speedup']:.3f}×",
             f"{t['low']:.3f}–{t['high']:.3f}", f"{t['wins']}/{t['rounds']}",
             "kept" if t["kept"] else t["reason"]] for t in block["trials"]]
    total = block.get("speedup")
    note = (f"Timed on {block.get('runtime')} at batch {block.get('batch')}, "
            f"{block.get('threads')} threads, each variant against the unchanged artifact "
            "in one interleaved loop (speed-up: median per-round ratio). "
            + (f"The kept variants together: {total:.3f}× the unchanged artifact."
               if block.get("kept") and total else block.get("note") or ""))
    return {"headers": ["node", "op", "variant", "speed-up", "range", "faster in", "decision"],
            "rows": rows, "note": note}


def _sensitivity(report: dict[str, Any]) -> dict[str, Any] | None:
    """The per-layer sensitivity table, when the report carries one (``quantize
    --sensitivity``): most sensitive first, as ``layer_sensitivity`` sorts it."""
    block = report.get("sensitivity")
    if not block or not block.get("layers"):
        return None
    rows = [[r["name"], f"{r['metric_drop']:+.2f}", f"{r['sqnr_db']:.1f}", f"{r['params']:,}"]
            for r in block["layers"]]
    note = (f"Each layer quantized alone (w{block.get('weight_bits', '?')}a8, observer "
            f"{block.get('observer', '?')}), the rest in float, scored on the "
            f"{block.get('split', '?')} split in PyTorch (fake quantization).")
    return {"headers": ["layer", "top-1 drop (pts)", "output SQNR (dB)", "params"],
            "rows": rows, "note": note}
