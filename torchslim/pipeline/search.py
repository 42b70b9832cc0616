"""Budgeted search: try variants of a recipe's prune and quantize stages within a time
budget, keep the best artifact found so far on disk, plot the Pareto front.

The space is small on purpose: the prune stage's MAC target (the recipe's and a few
around it), and for the quantize stage PTQ, PTQ with the most sensitive layers kept in
float (from the sensitivity table), and QAT. Trials share their common prefix: a stage
directory is keyed by the options of that stage and every stage before it, so a stage
(distillation, say) that two trials share runs once, and an interrupted search resumes.

"Best" is the fastest trial (p50 at the budget's batch size on the target runtime) whose
validation top-1 is within the budget; while no trial is, the most accurate one.
``best.onnx`` and ``search.json`` are rewritten atomically after every trial.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchslim import _io
from torchslim.errors import ConfigError
from torchslim.pipeline.recipe import Recipe, StageOptions, load_recipe, stage_name
from torchslim.pipeline.run import Run, RunResult
from torchslim.pipeline.runner import check_output, run_stage_guarded, start
from torchslim.pipeline.summary import finish, png_uri, render_pipeline

__all__ = ["search_recipe", "parse_duration", "SearchResult", "trial_space"]

logger = logging.getLogger(__name__)

PRUNE_GRID = (0.35, 0.5, 0.65, 0.8)      # fractions of the MACs to keep, besides the recipe's
QUANT_VARIANTS: tuple[dict[str, Any], ...] = (
    {"method": "ptq", "keep_sensitive": 0},
    {"method": "ptq", "keep_sensitive": 2},
    {"method": "qat", "keep_sensitive": 0},
)


@dataclass
class SearchResult:
    out: Path
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    final: RunResult


def parse_duration(text: str) -> float:
    """'30m', '90s', '1h30m' or a plain number of seconds -> seconds."""
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ConfigError(f"--time-budget {text!r}: use e.g. 30m, 90s, 1h30m or seconds")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def trial_space(recipe: Recipe) -> list[dict[int, dict[str, Any]]]:
    """Each trial as {stage index: option overrides}, cheapest first (PTQ before QAT,
    mild pruning before harsh)."""
    prune = [i for i, s in enumerate(recipe.stages) if s.kind == "prune"]
    quant = [i for i, s in enumerate(recipe.stages) if s.kind == "quantize"]
    ratios: list[float | None] = [None]
    if prune:
        base = recipe.stages[prune[0]].target_macs
        ratios = sorted({*PRUNE_GRID, *([base] if base else [])}, reverse=True)
    quants: list[dict[str, Any] | None] = list(QUANT_VARIANTS) if quant else [None]
    trials = []
    for q in quants:
        for r in ratios:
            trial: dict[int, dict[str, Any]] = {}
            if r is not None:
                trial[prune[0]] = {"target_macs": r, "target_params": None}
            if q is not None:
                trial[quant[0]] = dict(q)
            trials.append(trial)
    return trials


def _variant(stage: StageOptions, overrides: dict[str, Any]) -> StageOptions:
    data = {**stage.model_dump(), **overrides, "fallbacks": ()}
    return type(stage).model_validate(data)


def _key(stages: list[StageOptions]) -> str:
    blob = json.dumps([s.model_dump(mode="json") for s in stages], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def search_recipe(recipe: Recipe | str | Path, *, time_budget_s: float,
                  output: str | Path | None = None, resume: bool = True) -> SearchResult:
    """Run trials until the next one would not fit in ``time_budget_s``; then write the
    full report (test split, speed-up, verdict) for the best trial."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    out = Path(output) if output is not None else recipe.output_dir / "search"
    recipe = recipe.model_copy(update={"output": str(out)})
    with _io.output_dir(out, command="torchslim search", option="output"):
        return _search(recipe, out, time_budget_s=time_budget_s, resume=resume)


def _search(recipe: Recipe, out: Path, *, time_budget_s: float, resume: bool) -> SearchResult:
    clear = check_output(out, recipe, resume=resume, overwrite=True)
    t0 = time.monotonic()
    run, base_state = start(recipe, out, resume=True, clear=clear)
    if not resume:   # a fresh search: the previous best must not outlive its trials
        for stale in ("best.onnx", "search.json"):
            run.path(stale).unlink(missing_ok=True)
    run.guard = False
    baseline_entry = run.stages[:1]
    trials: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    states: dict[int, Any] = {}
    for n, overrides in enumerate(trial_space(recipe)):
        spent = time.monotonic() - t0
        typical = spent / max(len(trials), 1) if trials else 0.0
        if trials and spent + 2 * typical > time_budget_s:   # leave room for the report
            logger.info("time budget: %.0f s spent, stopping after %d trials", spent, len(trials))
            break
        run.stages, run.attempts = list(baseline_entry), []
        trial, state = _trial(run, base_state, n, overrides)
        trial["seconds"] = round(time.monotonic() - t0, 1)
        trials.append(trial)
        states[n] = (state, list(run.stages), list(run.attempts))
        if _better(trial, best):
            best = trial
            _io.write_bytes(run.path("best.onnx"), Path(state.artifact).read_bytes())
        _io.write_json(run.path("search.json"), {
            "recipe": recipe.name, "trials": trials, "best": best,
            "allowed_drop": run.allowed_drop, "baseline_val_top1": run.baseline_top1})
        logger.info("trial %d %s: val top-1 %.4f, p50 %s ms%s", n, trial["overrides"],
                    trial["val_top1"], trial["p50_ms"], " (best so far)" if best is trial else "")
    assert best is not None
    state, run.stages, run.attempts = states[best["trial"]]
    run.guard = True
    final = finish(run, state)
    _add_search_to_report(final, trials, best, run.allowed_drop, run.baseline_top1)
    return SearchResult(out=out, trials=trials, best=best, final=final)


def _trial(run: Run, state: Any, n: int, overrides: dict[int, dict[str, Any]]
           ) -> tuple[dict[str, Any], Any]:
    """Run one trial's stages (shared prefixes are read back) and summarise its end state."""
    recipe = run.recipe
    stages: list[StageOptions] = []
    for i, stage in enumerate(recipe.stages):
        stage = _variant(stage, overrides.get(i, {}))
        stages.append(stage)
        state, _ = run_stage_guarded(run, i, stage, state,
                                     dirname=f"{stage_name(i, stage)}-{_key(stages)}")
    metrics = state.record["metrics"]
    drop = run.baseline_top1 - metrics["val_top1"]
    trial = {"trial": n, "overrides": {stage_name(i, recipe.stages[i]): o
                                       for i, o in overrides.items()},
             "val_top1": metrics["val_top1"], "val_drop": drop,
             "p50_ms": metrics["p50_ms"].get(str(recipe.budget.batch)),
             "bytes": metrics["bytes"], "precision": state.precision,
             "artifact": run.rel(state.artifact),
             "within_budget": drop <= run.allowed_drop + 1e-9}
    return trial, state


def _better(trial: dict[str, Any], best: dict[str, Any] | None) -> bool:
    if best is None:
        return True
    if trial["within_budget"] != best["within_budget"]:
        return trial["within_budget"]
    if trial["within_budget"]:
        return (trial["p50_ms"] or float("inf")) < (best["p50_ms"] or float("inf"))
    return trial["val_top1"] > best["val_top1"]


def pareto_front(trials: list[dict[str, Any]]) -> list[int]:
    """Trials no other trial beats on both accuracy and latency."""
    front = []
    for t in trials:
        dominated = any(o["val_top1"] >= t["val_top1"] and (o["p50_ms"] or 0) <= (t["p50_ms"] or 0)
                        and (o["val_top1"] > t["val_top1"] or (o["p50_ms"] or 0) < (t["p50_ms"] or 0))
                        for o in trials)
        if not dominated:
            front.append(t["trial"])
    return front


def pareto_plot(trials: list[dict[str, Any]], baseline_top1: float, allowed: float) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = set(pareto_front(trials))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for t in trials:
        ax.scatter(t["p50_ms"], t["val_top1"], c="C0" if t["trial"] in front else "0.6",
                   marker="o" if t["within_budget"] else "x")
        ax.annotate(str(t["trial"]), (t["p50_ms"], t["val_top1"]), fontsize=7)
    pts = sorted((t["p50_ms"], t["val_top1"]) for t in trials if t["trial"] in front)
    if pts:
        ax.plot(*zip(*pts), "-", c="C0", alpha=0.6, label="Pareto front")
    ax.axhline(baseline_top1 - allowed, ls="--", c="C3", lw=1, label="budget")
    ax.set_xlabel("p50 latency (ms, target runtime)")
    ax.set_ylabel("validation top-1")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return png_uri(fig)


def _add_search_to_report(final: RunResult, trials: list[dict[str, Any]], best: dict[str, Any],
                          allowed: float, baseline_top1: float) -> None:
    """Put the trials, the front and its plot into report.json and pipeline.html."""
    plot = pareto_plot(trials, baseline_top1, allowed)
    block = {"trials": trials, "best": best, "pareto_front": pareto_front(trials)}
    report_path = final.report["json"]
    report = json.loads(Path(report_path).read_text())
    report["search"] = block
    _io.write_json(report_path, report)
    final.pipeline["search"] = block
    _io.write_text(final.report["pipeline"], render_pipeline(
        final.pipeline, extra_figures={"search: accuracy vs latency (Pareto front)": plot}))
