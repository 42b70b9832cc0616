"""One recipe run's working set (``Run``) and what ``run_recipe`` returns (``RunResult``).

The runner fills a ``Run`` stage by stage; the summary reads it to write the report. Both
import this module, never each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from torchslim import _io
from torchslim.evaluation import EvalResult
from torchslim.pipeline import setup
from torchslim.pipeline.recipe import Recipe
from torchslim.pipeline.stages import StageContext

__all__ = ["CHECKPOINT", "Run", "RunResult"]

CHECKPOINT = "model.safetensors"   # each stage directory's float model


@dataclass
class RunResult:
    """What ``run_recipe`` returns: the report's paths, the final results and the log."""

    out: Path
    verdict: str
    artifact: Path
    pipeline: dict[str, Any]
    results: list[EvalResult] = field(default_factory=list)
    report: dict[str, Path] = field(default_factory=dict)


@dataclass
class Run:
    """One run's working set: the recipe, its inputs, the guard's reference, the log."""

    recipe: Recipe
    out: Path
    ctx: StageContext
    builder: Any                      # rebuilds the starting architecture (non-zoo models)
    baseline_top1: float = 0.0        # val top-1 of the starting model on PyTorch fp32
    guard: bool = True                # False (search): keep every attempt, judge it only
    model_info: dict[str, Any] = field(default_factory=dict)   # where the model came from
    attempts: list[dict[str, Any]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def allowed_drop(self) -> float:
        return self.recipe.budget.allowed_drop(self.baseline_top1)

    def path(self, *parts: str | Path) -> Path:
        """``out / parts``, refused if it would resolve outside the output (an absolute
        part, ``..``, a symlink out of it): every path a run writes or reads comes here."""
        return _io.inside(self.out, *parts)

    def rel(self, path: Path) -> str:
        return str(Path(path).relative_to(self.out))

    def write_log(self, **extra: Any) -> None:
        _io.write_json(self.path("pipeline.json"), {
            "recipe": self.recipe.name, "baseline_val_top1": self.baseline_top1,
            "allowed_drop": self.allowed_drop, "stages": self.stages,
            "attempts": self.attempts, **extra})

    def baseline_model(self) -> nn.Module:
        """The starting model, read back from ``stages/00-baseline``."""
        return setup.load_float(self.path("stages", "00-baseline", CHECKPOINT), self.builder)
