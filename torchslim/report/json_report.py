"""report.json: build it from results, read it back.

The keys below are a contract that users' CI parses (DESIGN.md, "Machine-readable
results"): they keep their names and meaning; extra top-level keys are welcome.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchslim.config import VERSION
from torchslim.errors import ConfigError
from torchslim.evaluation.result import EvalResult

__all__ = ["build_report", "load_report", "CONTRACT_KEYS"]

CONTRACT_KEYS = ("torchslim_version", "machine", "dataset", "baseline", "candidates")


def _dataset_block(dataset: dict[str, Any], n: int) -> dict[str, Any]:
    if not isinstance(dataset, dict) or "name" not in dataset:
        raise ConfigError(f"dataset must be a dict with at least a 'name', got {dataset!r}; "
                          "e.g. {'name': 'fashion-mnist', 'split': 'test', 'n': 10000}")
    block = {"name": dataset["name"], "split": dataset.get("split", "test"),
             "n": int(dataset.get("n", n))}
    block.update({k: v for k, v in dataset.items() if k not in block})
    return block


def _ordered(baseline: EvalResult, candidates: Sequence[EvalResult]) -> list[EvalResult]:
    """The baseline first, then the others; a repeated baseline is dropped, clashes refused."""
    results = [baseline]
    for c in candidates:
        if c is baseline or (c.name == baseline.name and c == baseline):
            continue
        if any(c.name == r.name for r in results):
            raise ConfigError(f"two candidates are named {c.name!r}; pass evaluate(..., "
                              "name=...) so each row of the report is identifiable")
        results.append(c)
    return results


def build_report(*, baseline: EvalResult, candidates: Sequence[EvalResult],
                 dataset: dict[str, Any], class_names: Sequence[str] | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report.json dict; the baseline is also the first candidate."""
    results = _ordered(baseline, candidates)
    report: dict[str, Any] = {
        "torchslim_version": VERSION,
        "machine": dict(baseline.machine),
        "dataset": _dataset_block(dataset, baseline.n),
        "baseline": baseline.name,
        "candidates": [r.to_dict() for r in results],
    }
    if class_names is not None:
        report["class_names"] = list(class_names)
    for key, value in (extra or {}).items():
        if key in report:
            raise ConfigError(f"extra key {key!r} would overwrite a report.json key; "
                              "rename it")
        report[key] = value
    return report


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a report.json written by ``write_report``; ConfigError says why it cannot be used."""
    p = Path(path)
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"report not found: {p}; run an evaluating command first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read report {p}: {e}") from e
    if not isinstance(report, dict):
        raise ConfigError(f"report {p} holds a {type(report).__name__}, not a JSON object")
    missing = [k for k in CONTRACT_KEYS if k not in report]
    if missing:
        raise ConfigError(f"report {p} lacks keys {missing}; is it a torchslim report.json?")
    if not isinstance(report["candidates"], list) or not report["candidates"]:
        raise ConfigError(f"report {p} has no candidates")
    return report
