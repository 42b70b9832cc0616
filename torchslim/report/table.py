"""The summary table: one row per candidate, shared by the HTML report and the terminal.

``summary_table`` turns a report (or a list of results) into headers and formatted cells;
``print_table`` writes them to a rich Console the caller owns (the library never prints
on its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torchslim.errors import ConfigError

__all__ = ["print_table", "summary_table", "candidates_of", "human_bytes", "human_count",
           "speedup"]

Candidate = dict[str, Any]
_DASH = "—"
_MACHINE_KEYS = ("cpu", "cores", "platform")  # what makes two timings comparable


def _si(n: float | None, units: tuple[str, ...], sep: str) -> str:
    """``n`` scaled by 1000 per step of ``units``; whole numbers below the first step."""
    if n is None:
        return _DASH
    value = float(n)
    for i, unit in enumerate(units):
        if abs(value) < 1000 or i == len(units) - 1:
            return f"{value:.0f}{sep}{unit}" if i == 0 else f"{value:.1f}{sep}{unit}"
        value /= 1000.0
    raise AssertionError("unreachable")


def human_bytes(n: float | None) -> str:
    """1085000 -> "1.1 MB" (SI units, like file managers)."""
    return _si(n, ("B", "KB", "MB", "GB"), " ")


def human_count(n: float | None) -> str:
    """270000 -> "270.0K", 41000000 -> "41.0M"."""
    return _si(n, ("", "K", "M", "G"), "")


def candidates_of(report_or_results: Any) -> tuple[list[Candidate], str]:
    """``(candidate dicts, baseline name)`` from a report dict or a list of results.

    For a list (of ``EvalResult`` or dicts) the first one is the baseline.
    """
    if isinstance(report_or_results, dict):
        candidates = list(report_or_results.get("candidates") or [])
        baseline = report_or_results.get("baseline") or (candidates[0]["name"]
                                                         if candidates else "")
        return candidates, baseline
    items = [r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in report_or_results]
    if not items:
        raise ConfigError("nothing to tabulate: pass a report dict or at least one result")
    return items, items[0]["name"]


def _same_machine(a: Candidate, b: Candidate) -> bool:
    ma, mb = a.get("machine") or {}, b.get("machine") or {}
    return all(ma.get(k) == mb.get(k) for k in _MACHINE_KEYS)


def speedup(candidate: Candidate, base: Candidate, batch: str) -> float | None:
    """Baseline time / candidate time at ``batch``: the median per-round ratio of one
    interleaved loop when the candidate carries one against this baseline
    (``extra["speedup_interleaved"]``, written by ``interleaved_speedups``), else baseline
    p50 / candidate p50 of their own timings; None when not timed on the same machine."""
    timed = ((candidate.get("extra") or {}).get("speedup_interleaved") or {})
    if timed.get("vs") == base.get("name") and (timed.get("batches") or {}).get(batch):
        return timed["batches"][batch]["speedup"]
    if candidate.get("name") == base.get("name") and timed.get("vs") is not None:
        return 1.0
    if not _same_machine(candidate, base):
        return None
    try:
        return base["latency_ms"][batch]["p50"] / candidate["latency_ms"][batch]["p50"]
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def _pct(x: float | None) -> str:
    return _DASH if x is None else f"{100.0 * x:.2f}%"


def _batches(candidates: Sequence[Candidate]) -> list[str]:
    return sorted({b for c in candidates for b in (c.get("latency_ms") or {})}, key=int)


def _latency_cells(c: Candidate, base: Candidate, b: str, compact: bool) -> list[str]:
    stats = (c.get("latency_ms") or {}).get(b)
    ratio = speedup(c, base, b)
    ips = (c.get("items_per_s") or {}).get(b)
    if compact:
        latency = f"{stats['p50']:.3f}" if stats else _DASH
    else:
        latency = f"{stats['p50']:.3f} / {stats['p99']:.3f}" if stats else _DASH
    cells = [latency] if compact else [latency, _DASH if ips is None else f"{ips:,.0f}"]
    return cells + [_DASH if ratio is None else f"{ratio:.2f}×"]


def _row(c: Candidate, base: Candidate, batches: list[str], compact: bool) -> list[str]:
    delta = 100.0 * (c["top1"] - base["top1"])
    cells = [c["name"], c.get("runtime", _DASH), c.get("precision", _DASH),
             str(c.get("threads", _DASH)), _pct(c["top1"]), f"{delta:+.2f}",
             _pct(c.get("agreement"))]
    for b in batches:
        cells += _latency_cells(c, base, b, compact)
    cells += [human_bytes(c.get("bytes")), human_count(c.get("params")),
              human_count(c.get("nonzero_params")), human_count(c.get("macs")),
              human_bytes(c.get("peak_mem_bytes"))]
    return cells


def summary_table(report_or_results: Any, *, compact: bool = False
                  ) -> tuple[list[str], list[list[str]]]:
    """``(headers, rows)``: formatted cells, the baseline first.

    ``compact`` (for narrow terminals) keeps p50 only and drops items/s per batch size.
    The size columns start at the header "size".
    """
    candidates, baseline = candidates_of(report_or_results)
    base = next((c for c in candidates if c["name"] == baseline), candidates[0])
    ordered = [base] + [c for c in candidates if c is not base]
    batches = _batches(ordered)
    headers = ["name", "runtime", "precision", "threads", "top-1", "Δ top-1 (pts)",
               "agreement"]
    for b in batches:
        headers += ([f"b{b} p50 (ms)"] if compact
                    else [f"b{b} p50 / p99 (ms)", f"b{b} items/s"]) + [f"b{b} speed-up"]
    headers += ["size", "params", "non-zero", "MACs", "peak mem"]
    return headers, [_row(c, base, batches, compact) for c in ordered]


def _rich_table(title: str, headers: list[str], rows: list[list[str]], left: int) -> Any:
    from rich.table import Table

    table = Table(title=title, header_style="bold", title_justify="left")
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i < left else "right",
                         overflow="fold", style="bold" if i == 0 else None)
    for row in rows:
        table.add_row(*row)
    return table


def speedup_legend(report_or_results: Any) -> str:
    """What the speed-up column means for these candidates (see ``speedup``)."""
    candidates, _ = candidates_of(report_or_results)
    timed = [bool((c.get("extra") or {}).get("speedup_interleaved")) for c in candidates]
    if all(timed):
        return "speed-up = median per-round ratio to the baseline in one interleaved loop"
    if any(timed):
        return ("speed-up = median per-round ratio in one interleaved loop, else baseline "
                "p50 / candidate p50")
    return "speed-up = baseline p50 / candidate p50"


def _transposed(headers: list[str], rows: list[list[str]], legend: str) -> Any:
    """One column per candidate, one row per metric: fits a narrow terminal."""
    from rich.table import Table

    table = Table(title=f"torchslim summary ({legend})",
                  header_style="bold", title_justify="left")
    table.add_column("", style="bold", no_wrap=True)
    for row in rows:
        table.add_column(row[0], justify="right", overflow="fold")
    for j, header in enumerate(headers[1:], start=1):
        section_ends = header == "agreement" or headers[j + 1:j + 2] == ["size"]
        table.add_row(header, *(row[j] for row in rows), end_section=section_ends)
    return table


def print_table(report_dict_or_results: Any, console: Any = None) -> None:
    """Write the summary to ``console`` (a rich Console; stdout when None).

    On a wide console: two tables, accuracy/speed then size/cost, as in the HTML report.
    Narrower than 150 columns: one table with a column per candidate and p99 and items/s
    left out, which stays readable in 80 columns.
    """
    from rich.console import Console

    console = console or Console(stderr=False)
    narrow = console.width < 150
    headers, rows = summary_table(report_dict_or_results, compact=narrow)
    legend = speedup_legend(report_dict_or_results)
    if narrow:
        console.print(_transposed(headers, rows, legend))
        return
    split = headers.index("size")
    console.print(_rich_table(f"Accuracy and speed ({legend})",
                              headers[:split], [r[:split] for r in rows], left=3))
    console.print(_rich_table("Size and cost", headers[:1] + headers[split:],
                              [r[:1] + r[split:] for r in rows], left=1))
