"""Reports a person would rather look at than read, and JSON that CI can parse.

``write_report(out_dir, baseline=..., candidates=..., dataset=...)`` writes ``report.json``
(the contract in DESIGN.md) and a self-contained ``report.html`` next to it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torchslim import _io
from torchslim.evaluation.result import EvalResult
from torchslim.report.html import render_html
from torchslim.report.json_report import build_report, load_report, load_results
from torchslim.report.table import print_table

__all__ = ["write_report", "load_report", "load_results", "print_table", "render_html", "build_report"]

logger = logging.getLogger(__name__)


def write_report(out_dir: str | os.PathLike[str], *, baseline: EvalResult,
                 candidates: Sequence[EvalResult], dataset: dict[str, Any],
                 class_names: Sequence[str] | None = None, title: str = "torchslim report",
                 extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``report.json`` and ``report.html`` into ``out_dir``; return both paths.

    The baseline is the first candidate of the JSON. Class names default to those the
    baseline was evaluated with. Both files are written atomically: a crash leaves the
    previous report, never half of one.
    """
    if class_names is None:
        class_names = baseline.extra.get("class_names")
    report = build_report(baseline=baseline, candidates=candidates, dataset=dataset,
                          class_names=class_names, extra=extra)
    html = render_html(report, title=title)
    out = Path(out_dir)
    paths = {"json": _io.write_json(out / "report.json", report),
             "html": _io.write_text(out / "report.html", html)}
    logger.info("wrote %s and %s", paths["json"], paths["html"])
    return paths
