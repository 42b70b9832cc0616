"""The verdicts and the table of bench/transformer_peers.py: per-round ratios, the issue's
acceptance bars judged on the rows (each 'met', 'not met' or 'not measured' with why),
and the printed table."""

from __future__ import annotations

import statistics
from typing import Any

OURS_DYNAMIC = "torchslim-dynamic-int8"
OURS_INT4 = "torchslim-int4-packed"
HEAD_PRUNED = "torchslim-head-pruned-kd"


def ratio_stats(numerator: list[float], denominator: list[float]) -> dict[str, Any] | None:
    """Per-round ``numerator / denominator``: median and range (rounds of one loop)."""
    if not numerator or len(numerator) != len(denominator):
        return None
    r = [a / b for a, b in zip(numerator, denominator)]
    return {"median": round(statistics.median(r), 3), "low": round(min(r), 3),
            "high": round(max(r), 3), "rounds": len(r)}


def _bar(name: str, value: Any, threshold: Any, ok: bool | None, detail: str) -> dict[str, Any]:
    status = "not measured" if ok is None else ("met" if ok else "not met")
    return {"bar": name, "status": status, "value": value, "threshold": threshold,
            "detail": detail}


def judge(rows: dict[tuple[str, str], dict[str, Any]],
          per_batch: dict[tuple[tuple[str, str, str], int], list[float]],
          noise: float) -> list[dict[str, Any]]:
    """The issue's acceptance bars on this run's rows."""
    def live(method: str, runtime: str = "onnxruntime") -> dict[str, Any] | None:
        r = rows.get((method, runtime))
        return r if r is not None and not r.get("error") else None

    def why_missing(*keys: tuple[str, str]) -> str:
        errors = [f"{m}/{rt}: {rows[(m, rt)]['error']}" for m, rt in keys
                  if (m, rt) in rows and rows[(m, rt)].get("error")]
        return "; ".join(errors) or "row missing"

    bars = []
    ours = live(OURS_DYNAMIC)
    peer_keys = [("ort-dynamic", "onnxruntime"), ("ort-dynamic-per-channel", "onnxruntime"),
                 ("torch-ao-dynamic", "torch")]
    peers = {k: rows[k] for k in peer_keys if live(*k)}
    scored = {k: r for k, r in peers.items() if r.get("cosine") is not None}
    if ours and scored:
        best = max(scored, key=lambda k: scored[k]["cosine"])
        bars.append(_bar("torchslim dynamic cosine >= best peer's", ours["cosine"],
                         scored[best]["cosine"], ours["cosine"] >= scored[best]["cosine"],
                         f"best peer: {best[0]} ({best[1]})"))
    else:
        bars.append(_bar("torchslim dynamic cosine >= best peer's", None, None, None,
                         why_missing((OURS_DYNAMIC, "onnxruntime"), *peer_keys)))
    for b in (1, 32):
        name = f"torchslim dynamic no slower than the fastest peer at batch {b} (within " \
               f"{noise:.0%})"
        timed_peers = {k: r for k, r in peers.items() if r.get(f"p50_ms_b{b}")}
        if not ours or not ours.get(f"p50_ms_b{b}") or not timed_peers:
            bars.append(_bar(name, None, None, None, why_missing((OURS_DYNAMIC, "onnxruntime"),
                                                                 *peer_keys)))
            continue
        fastest = min(timed_peers, key=lambda k: timed_peers[k][f"p50_ms_b{b}"])
        ratio = ratio_stats(per_batch[((ours["model"], OURS_DYNAMIC, "onnxruntime"), b)],
                            per_batch[((ours["model"], *fastest), b)])
        assert ratio is not None
        bars.append(_bar(name, ratio["median"], round(1 + noise, 3),
                         ratio["median"] <= 1 + noise,
                         f"per-round time ratio torchslim / {fastest[0]} ({fastest[1]}): "
                         f"median {ratio['median']}, range {ratio['low']}-{ratio['high']} "
                         f"over {ratio['rounds']} rounds"))
    ort_files = {m: rows[(m, "onnxruntime")]["bytes"] for m in ("ort-dynamic",
                                                                  "ort-dynamic-per-channel")
                 if live(m) and rows[(m, "onnxruntime")].get("bytes")}
    if ours and ort_files:
        smallest = min(ort_files, key=ort_files.get)  # type: ignore[arg-type]
        ratio = round(ours["bytes"] / ort_files[smallest], 4)
        bars.append(_bar("torchslim dynamic file <= 1.05x ONNX Runtime quantize_dynamic's",
                         ratio, 1.05, ratio <= 1.05,
                         f"{ours['bytes']:,} vs {smallest} {ort_files[smallest]:,} bytes "
                         f"(the smaller ORT file); vs the other: "
                         + ", ".join(f"{m} {ours['bytes'] / v:.4f}" for m, v in ort_files.items()
                                     if m != smallest)))
    else:
        bars.append(_bar("torchslim dynamic file <= 1.05x ONNX Runtime quantize_dynamic's",
                         None, 1.05, None, why_missing((OURS_DYNAMIC, "onnxruntime"),
                                                       ("ort-dynamic", "onnxruntime"))))
    int4 = live(OURS_INT4)
    if int4 and ours:
        ratio = round(int4["bytes"] / ours["bytes"], 4)
        bars.append(_bar("int4 packed file <= 0.6x the torchslim int8 file", ratio, 0.6,
                         ratio <= 0.6, f"{int4['bytes']:,} vs {ours['bytes']:,} bytes"))
    else:
        bars.append(_bar("int4 packed file <= 0.6x the torchslim int8 file", None, 0.6, None,
                         why_missing((OURS_INT4, "onnxruntime"), (OURS_DYNAMIC, "onnxruntime"))))
    bars += _head_bars(live(HEAD_PRUNED), rows.get(("fp32", "onnxruntime")),
                       why_missing((HEAD_PRUNED, "onnxruntime")))
    return bars


def _head_bars(row: dict[str, Any] | None, fp32: dict[str, Any] | None, why: str
               ) -> list[dict[str, Any]]:
    names = ("head-pruned + KD: attention+MLP MACs <= 0.5x FP32",
             "head-pruned + KD: cosine >= 0.95",
             "head-pruned + KD: >= 1.4x faster than ORT FP32 at batch 1",
             "head-pruned + KD: >= 1.4x faster than ORT FP32 at batch 32")
    if row is None or fp32 is None:
        return [_bar(n, None, t, None, why) for n, t in zip(names, (0.5, 0.95, 1.4, 1.4))]
    macs = round(row["macs_attention_mlp"] / fp32["macs_attention_mlp"], 4)
    out = [_bar(names[0], macs, 0.5, macs <= 0.5,
                f"{row['macs_attention_mlp']:,} vs {fp32['macs_attention_mlp']:,} per sentence "
                f"of {row['mac_seq']} tokens"),
           _bar(names[1], row["cosine"], 0.95, row["cosine"] >= 0.95, "mean over held-out")]
    for name, b in ((names[2], 1), (names[3], 32)):
        s = row.get(f"speedup_b{b}")
        rng = (row.get("speedup_range") or {}).get(str(b)) or {}
        out.append(_bar(name, s, 1.4, None if s is None else s >= 1.4,
                        f"per-round range {rng.get('low')}-{rng.get('high')}"))
    return out


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict[str, Any]], bars: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for name in ("method", "runtime", "cosine", "cos min", "retrieval", "agree", "b1 ms",
                 "b32 ms", "x b1", "x b32", "bytes", "error"):
        table.add_column(name, justify="left" if name in ("method", "runtime", "error")
                         else "right")
    for r in rows:
        table.add_row(r["method"], r["runtime"], _fmt(r.get("cosine"), ".4f"),
                      _fmt(r.get("cosine_min"), ".4f"), _fmt(r.get("retrieval"), ".3f"),
                      _fmt(r.get("agreement"), ".3f"), _fmt(r["p50_ms_b1"], ".2f"),
                      _fmt(r["p50_ms_b32"], ".1f"), _fmt(r["speedup_b1"], ".2f"),
                      _fmt(r["speedup_b32"], ".2f"), _fmt(r["bytes"], ","),
                      (r["error"] or "")[:80])
    console = Console(width=200)
    console.print(table)
    for b in bars:
        console.print(f"[{b['status']}] {b['bar']}: {b['value']} (bar {b['threshold']}; "
                      f"{b['detail']})", markup=False)
