"""The end of a run: ship the artifact, measure on the test split, judge, report.

``report.json`` gets the usual candidates (the baseline on PyTorch fp32, each accepted
stage's artifact and ``final-<precision>-<runtime>``, the shipped file) and a ``pipeline``
block: one entry per stage attempt, the checks and the verdict. With robustness limits
the verdict's checks include the shipped state's robustness checks (validation split,
as the guard judged them); each attempt carries its block (``attempts[i].robustness``)
and the baseline's is in ``stages[0].robustness``. ``pipeline.html`` shows
the stage-by-stage table and plots (accuracy, p50 latency and size after each stage).
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from torchslim import _io
from torchslim.errors import ArtifactError
from torchslim.evaluation import EvalResult, evaluate
from torchslim.evaluation.robustness.budget import check as _check
from torchslim.evaluation.timing import time_interleaved
from torchslim.pipeline import setup
from torchslim.pipeline.run import Run, RunResult
from torchslim.runtime import open as open_session
from torchslim.pipeline.stages import State
from torchslim.report import write_report
from torchslim.runtime import Session, TorchSession

__all__ = ["finish", "interleaved_speedup", "stage_plot", "png_uri"]

logger = logging.getLogger(__name__)


def finish(run: Run, state: State) -> RunResult:
    """Write the shipped artifact and the report; return the RunResult."""
    recipe, out, data = run.recipe, run.out, run.ctx.data
    target = recipe.target
    export = next((s for s in recipe.stages if s.kind == "export"), None)
    shipped = _io.write_bytes(run.path(export.artifact if export else "model.onnx"),
                              Path(state.artifact).read_bytes())
    common: dict[str, Any] = {"batch_sizes": target.batch_sizes, "repeats": target.repeats,
                              "class_names": list(data.info.class_names)}
    base_model = run.baseline_model()
    base = evaluate(TorchSession(base_model, threads=target.threads), data.test,
                    name=f"{recipe.baseline_name}-fp32-torch", model=base_model,
                    measure_memory=target.measure_memory, **common)
    base.agreement, base.cosine = 1.0, 1.0
    stages = _stage_results(run, state, base, common)
    final_session = _session(run, shipped, state.precision)
    final = evaluate(final_session, data.test, name=f"final-{state.precision}-{target.runtime}",
                     reference=base, model=state.model, measure_memory=target.measure_memory,
                     **common)
    sample = next(iter(data.test))[0].numpy()
    timing = interleaved_speedup(TorchSession(base_model, threads=target.threads), final_session,
                                 sample, batch=recipe.budget.batch, rounds=target.timing_rounds)
    checks = _checks(run, state, base, final, timing)
    verdict = "met" if all(c["ok"] for c in checks) else "not met"
    block = {"recipe": recipe.name, "verdict": verdict, "checks": checks, "model": run.model_info,
             "baseline_val_top1": run.baseline_top1, "allowed_drop": run.allowed_drop,
             "stages": run.stages, "attempts": run.attempts, "speedup": timing,
             "artifact": str(shipped), "serve": serve_hint(shipped, target.runtime)}
    run.write_log(verdict=verdict, checks=checks, speedup=timing, artifact=str(shipped))
    paths = write_report(out, baseline=base, candidates=[*stages, final],
                         dataset={"name": data.info.name, "split": "test", "n": base.n},
                         title=f"torchslim run: {recipe.name}", extra={"pipeline": block})
    paths["pipeline"] = _io.write_text(run.path("pipeline.html"), render_pipeline(block))
    logger.info("verdict: %s; artifact %s", verdict, shipped)
    return RunResult(out=out, verdict=verdict, artifact=shipped, pipeline=block,
                     results=[base, *stages, final], report=paths)


def _session(run: Run, path: Path, precision: str) -> Session:
    target = run.recipe.target
    return open_session(Path(path), target.runtime, threads=target.threads,
                        precision=None if precision == "fp32" else "int8")


def _stage_results(run: Run, final: State, base: EvalResult,
                   common: dict[str, Any]) -> list[EvalResult]:
    """Each accepted stage's artifact on the test split (the final one is measured apart)."""
    results = []
    for entry in run.stages[1:]:
        if entry["status"] != "done":
            continue
        rec = entry["attempts"][entry["accepted"]]
        artifact = run.path(rec["artifact"])
        if artifact == Path(final.artifact):
            continue
        model = setup.load_float(run.path(rec["checkpoint"]), run.builder)
        results.append(evaluate(_session(run, artifact, rec["precision"]), run.ctx.data.test,
                                name=f"{entry['stage']}-{rec['precision']}-"
                                     f"{run.recipe.target.runtime}",
                                reference=base, model=model, measure_memory=False, **common))
    return results


def interleaved_speedup(baseline: Session, candidate: Session, sample: np.ndarray, *,
                        batch: int, rounds: int, calls: int = 5) -> dict[str, Any]:
    """Baseline/candidate time ratio at ``batch``, the two timed in one interleaved loop
    (``torchslim.evaluation.time_interleaved``): the median of the per-round ratios and
    their range."""
    if rounds < 1:
        return {"batch": batch, "rounds": 0, "speedup": None}
    timings = time_interleaved([baseline, candidate], sample, batch_sizes=(batch,),
                               rounds=rounds, calls=calls)
    ratio = timings.ratio(0, 1, batch)
    if ratio is None:
        failed = "; ".join(f"{timings.names[i]}: {e}" for i, e in timings.errors.items())
        raise ArtifactError(f"timing the speed-up failed ({failed}); check that both "
                            "artifacts run on this machine")
    return {"batch": batch, "rounds": rounds,
            "baseline_p50_ms": round(timings.p50_ms(0, batch) or 0.0, 4),
            "candidate_p50_ms": round(timings.p50_ms(1, batch) or 0.0, 4),
            "speedup": round(ratio.median, 3), "speedup_range": [round(ratio.low, 3),
                                                                 round(ratio.high, 3)],
            "baseline": baseline.name, "candidate": candidate.name}


def _checks(run: Run, state: State, base: EvalResult, final: EvalResult,
            timing: dict[str, Any]) -> list[dict[str, Any]]:
    budget = run.recipe.budget
    allowed = run.allowed_drop
    val_drop = run.baseline_top1 - state.record["metrics"]["val_top1"]
    checks = [_check("top-1 drop (val, guard)", val_drop, allowed, "<="),
              _check("top-1 drop (test)", base.top1 - final.top1, allowed, "<=")]
    if budget.min_speedup is not None:
        checks.append(_check(f"speed-up at batch {budget.batch} vs {base.name}",
                             timing.get("speedup"), budget.min_speedup, ">="))
    if budget.max_latency_ms is not None:
        p50 = (final.latency_ms.get(str(budget.batch)) or {}).get("p50",
                                                                  timing.get("candidate_p50_ms"))
        checks.append(_check(f"p50 ms at batch {budget.batch}", p50, budget.max_latency_ms, "<="))
    if budget.max_bytes is not None:
        checks.append(_check("artifact bytes", final.bytes, budget.max_bytes, "<="))
    # the shipped state's robustness limits, as the guard judged them on the val split
    robustness = state.record.get("robustness") or {}
    checks += [{**c, "check": f"{c['check']} (val, guard)"} for c in robustness.get("checks", [])]
    return checks


def serve_hint(path: Path, runtime: str) -> str:
    return (f"python -c \"import torchslim; s = torchslim.load_session('{path}'); "
            f"print(s.run(x))\"  (runtime {runtime}); or onnxruntime.InferenceSession("
            f"'{path}'); check it with: torchslim evaluate {path}")


# ------------------------------------------------------------------------ HTML and plots


def png_uri(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def stage_plot(block: dict[str, Any]) -> str:
    """Validation top-1, p50 latency and size after each accepted stage."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(s["stage"], s["metrics"]) for s in block["stages"] if s.get("metrics")]
    names = [r[0] for r in rows]
    batch = str(max(int(b) for b in rows[0][1]["p50_ms"])) if rows else "1"
    series = [("val top-1", [m["val_top1"] for _, m in rows]),
              (f"p50 ms (batch {batch})", [m["p50_ms"].get(batch) for _, m in rows]),
              ("artifact MB", [(m["bytes"] or 0) / 1e6 for _, m in rows])]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (label, values) in zip(axes, series):
        ax.plot(range(len(names)), [v if v is not None else np.nan for v in values], "o-")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    return png_uri(fig)


def _verdict(attempt: dict[str, Any]) -> str:
    """The attempt's verdict and, when rolled back, the checks it failed."""
    failed = [c["check"] for c in attempt.get("checks", []) if not c["ok"]]
    return attempt["verdict"] + (f" ({'; '.join(failed)})" if failed else "")


def render_pipeline(block: dict[str, Any], *, extra_figures: dict[str, str] | None = None) -> str:
    """A self-contained page: verdict, checks, every attempt, the stage plots."""
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(a['stage'])}</td><td>{a['attempt']}</td><td>{esc(str(a['options']))}</td>"
        f"<td>{a['metrics']['val_top1']:.4f}</td><td>{-100 * a['val_drop']:+.2f}</td>"
        f"<td>{esc(str(a['metrics']['p50_ms']))}</td><td>{a['metrics']['bytes'] or 0:,}</td>"
        f"<td>{a['seconds']}</td><td>{esc(_verdict(a))}</td></tr>" for a in block["attempts"])
    checks = "".join(f"<li>{esc(c['check'])}: {c['value']} {c['op']} {c['limit']} — "
                     f"{'ok' if c['ok'] else 'FAILED'}</li>" for c in block.get("checks", []))
    figures = {"after each stage": stage_plot(block), **(extra_figures or {})}
    imgs = "".join(f"<h3>{esc(k)}</h3><img src='{v}' alt='{esc(k)}'>" for k, v in figures.items())
    speed = block.get("speedup") or {}
    return (f"<!doctype html><meta charset='utf-8'><title>{esc(block['recipe'])}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;"
            "border-bottom:1px solid #ddd}</style>"
            f"<h1>Recipe {esc(block['recipe'])}: budget {esc(block.get('verdict') or '?')}</h1>"
            f"<p>baseline val top-1 {block['baseline_val_top1']:.4f}; allowed drop "
            f"{100 * block['allowed_drop']:.2f} points; speed-up at batch {speed.get('batch')}: "
            f"{speed.get('speedup')}× (interleaved, {speed.get('rounds')} rounds)</p>"
            f"<ul>{checks}</ul><p>artifact: <code>{esc(str(block.get('artifact')))}</code><br>"
            f"serve: <code>{esc(str(block.get('serve')))}</code></p>"
            "<h2>Every attempt (validation split, target runtime)</h2><table><tr><th>stage</th>"
            "<th>attempt</th><th>overrides</th><th>val top-1</th><th>Δ top-1 (pts)</th>"
            "<th>p50 ms</th><th>bytes</th><th>s</th><th>verdict</th></tr>"
            f"{rows}</table>{imgs}")
