"""The recipe's robustness guard: a budget's ``robustness:`` limits, judged per attempt.

The baseline's robustness block is measured once, on the validation split the accuracy
guard uses, with the baseline's float torch model as the attack source (its block scores
the attacks white-box on itself). Each attempt's artifact is then scored on exactly the
same subset, corruptions and adversarial batches (one ``RobustnessSuite``), and
``robustness_checks`` compares it with the baseline's block. Calibration, the per-class
top-1 and the paired flips use the whole validation split, from the logits the accuracy
guard already collected (``clean=``), not only the subset. The suite (which makes the
adversarial batches: 7 forward+backward passes of the baseline) is built only when an
attempt needs it, so a resumed run whose attempts are all read back spends nothing.

The baseline's block is written to ``stages/00-baseline/robustness.json`` and read back
on resume; a recipe without ``robustness:`` never builds a guard.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from torchslim import _io
from torchslim.data import DataBundle
from torchslim.evaluation.robustness import RobustnessSuite, robustness_checks
from torchslim.evaluation.robustness.suite import collect_split
from torchslim.pipeline.recipe import RobustnessBudget
from torchslim.runtime import Session, TorchSession

__all__ = ["RobustnessGuard", "BASELINE_FILE"]

logger = logging.getLogger(__name__)

BASELINE_FILE = "robustness.json"   # in stages/00-baseline


class RobustnessGuard:
    """The limits, the baseline's block and (built on first use) the shared suite."""

    def __init__(self, budget: RobustnessBudget, data: DataBundle, baseline_model: nn.Module, *,
                 baseline_logits: np.ndarray | None, source: str, threads: int, saved: Path,
                 resume: bool) -> None:
        self.limits, self.config = budget.limits(), budget.config()
        self.data, self.model, self.source, self.threads = data, baseline_model, source, threads
        self.labels = np.concatenate([np.asarray(y).reshape(-1) for _, y in data.val])
        self._suite: RobustnessSuite | None = None
        self.baseline = self._baseline(saved, resume, baseline_logits)

    @property
    def suite(self) -> RobustnessSuite:
        if self._suite is None:
            info = self.data.info
            self._suite = RobustnessSuite(self.data.val, mean=info.mean, std=info.std,
                                          config=self.config, attack_model=self.model,
                                          source=self.source)
        return self._suite

    def _baseline(self, saved: Path, resume: bool, logits: np.ndarray | None) -> dict[str, Any]:
        """The baseline's block: read back on resume (same recipe, same sample), else
        measured on its torch model and saved."""
        if resume:
            try:
                return json.loads(saved.read_text())
            except (OSError, ValueError):
                pass   # not measured before the interruption
        session = TorchSession(self.model, threads=self.threads)
        block = self.suite.evaluate(session, model=self.model, clean=self._clean(session, logits),
                                    class_names=self._class_names())
        _io.write_json(saved, block)
        logger.info("robustness of the baseline on %d validation images: %.1f s",
                    block["sample"]["n"], block["seconds"])
        return block

    def _clean(self, session: Session, logits: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray]:
        """``(logits, labels)`` on the whole validation split: the ones the accuracy guard
        collected, or (for an attempt that measured nothing) run here."""
        if logits is None:
            x, _ = collect_split(self.data.val)
            bs = self.config.batch_size
            logits = np.concatenate([np.asarray(session.run(np.ascontiguousarray(x[i:i + bs])))
                                     for i in range(0, len(x), bs)])
        return np.asarray(logits).reshape(len(self.labels), -1), self.labels

    def _class_names(self) -> list[str]:
        return list(self.data.info.class_names)

    def summary(self) -> dict[str, Any]:
        """What pipeline.json's baseline entry records: the limits, the sample, the block."""
        return {"limits": dataclasses.asdict(self.limits),
                "config": dataclasses.asdict(self.config),
                "block": self.baseline}

    def judge(self, session: Session, model: nn.Module | None,
              logits: np.ndarray | None = None) -> dict[str, Any]:
        """``{"block", "checks", "ok"}`` of one attempt's artifact. ``model`` (its float
        model, or an INT8 artifact's float parent) is attacked white-box as well;
        ``logits``: the session's on the validation split, if already collected."""
        block = self.suite.evaluate(session, baseline=self.baseline, model=model,
                                    clean=self._clean(session, logits),
                                    class_names=self._class_names())
        checks = robustness_checks(block, self.baseline, self.limits)
        return {"block": block, "checks": checks, "ok": all(c["ok"] for c in checks)}

