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

__all__ = ["build_report", "load_report", "load_results", "CONTRACT_KEYS"]

CONTRACT_KEYS = ("torchslim_version", "machine", "dataset", "baseline", "candidates")
_REGENERATE = "regenerate it with the command that wrote it (e.g. torchslim evaluate)"
_NUMBER = (int, float)
# a candidate's keys that the report and the table compute with: (types, may be null)
_CANDIDATE_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), False), "runtime": ((str,), False), "precision": ((str,), False),
    "top1": (_NUMBER, False), "top5": (_NUMBER, True), "agreement": (_NUMBER, True),
    "cosine": (_NUMBER, True), "per_class": ((list,), True), "latency_ms": ((dict,), True),
    "items_per_s": ((dict,), True), "bytes": ((int,), True), "params": ((int,), True),
    "nonzero_params": ((int,), True), "macs": ((int,), True),
    "peak_mem_bytes": ((int,), True), "threads": ((int,), True), "n": ((int,), True),
}


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
    except IsADirectoryError:
        raise ConfigError(f"report {p} is a directory; pass its report.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read report {p}: {e}; pass a report.json written by "
                          f"torchslim, or {_REGENERATE}") from e
    if not isinstance(report, dict):
        raise ConfigError(f"report {p} holds a {type(report).__name__}, not a JSON object; "
                          f"pass a report.json written by torchslim")
    missing = [k for k in CONTRACT_KEYS if k not in report]
    if missing:
        raise ConfigError(f"report {p} lacks keys {missing}; is it a torchslim report.json? "
                          f"If it is, {_REGENERATE}")
    if not isinstance(report["candidates"], list) or not report["candidates"]:
        raise ConfigError(f"report {p} has no candidates; {_REGENERATE}")
    for i, candidate in enumerate(report["candidates"]):
        _check_candidate(p, i, candidate)
    names = [c["name"] for c in report["candidates"]]
    if report["baseline"] not in names:
        raise ConfigError(f"report {p}: its baseline {report['baseline']!r} is not one of its "
                          f"candidates ({', '.join(map(repr, names))}); set 'baseline' to one "
                          f"of them, or {_REGENERATE}")
    if not isinstance(report["dataset"], dict) or "name" not in report["dataset"]:
        raise ConfigError(f"report {p}: 'dataset' must be an object with a 'name'; "
                          f"{_REGENERATE}")
    return report


def load_results(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[EvalResult]]:
    """``load_report`` and its candidates as ``EvalResult`` objects, baseline first."""
    report = load_report(path)
    results = []
    for i, candidate in enumerate(report["candidates"]):
        try:
            results.append(EvalResult.from_dict(candidate))
        except (TypeError, ValueError) as e:   # a value of the right type but unusable
            raise ConfigError(f"report {path}: candidates[{i}] ({candidate['name']!r}) cannot "
                              f"be read: {e}; {_REGENERATE}") from e
    return report, results


def _check_candidate(path: Path, i: int, c: Any) -> None:
    where = f"report {path}: candidates[{i}]"
    if not isinstance(c, dict):
        raise ConfigError(f"{where} is a {type(c).__name__}, not an object; {_REGENERATE}")
    for key, (types, nullable) in _CANDIDATE_TYPES.items():
        if key not in c:
            if not nullable:
                raise ConfigError(f"{where} lacks {key!r}; {_REGENERATE}")
            continue
        value = c[key]
        if (value is None and nullable) or (isinstance(value, types)
                                            and not isinstance(value, bool)):
            continue
        kinds = " or ".join(t.__name__ for t in types) + (" or null" if nullable else "")
        raise ConfigError(f"{where}.{key} is {value!r}, not {kinds}; fix the value, or "
                          f"{_REGENERATE}")
    for key in ("top1", "top5", "agreement"):
        value = c.get(key)
        if value is not None and not 0 <= value <= 1:
            raise ConfigError(f"{where}.{key} is {value!r}; fractions are between 0 and 1 "
                              f"(0.92, not 92); fix the value, or {_REGENERATE}")
