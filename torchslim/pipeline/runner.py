"""The recipe runner: stages in order, measured after each, guarded by the accuracy budget.

Output directory layout (every file written atomically)::

    recipe.json                     the validated recipe and its fingerprint
    pipeline.json                   the stage log: every attempt so far, then the verdict
    stages/00-baseline/             the starting model (checkpoint + ONNX)
    stages/02-prune/attempt-1/      model.safetensors (+ .json), model.onnx, attempt.json
    stages/02-prune/stage.json      the stage's outcome: written last, so it marks "done"
    model.onnx, report.json/.html   the shipped artifact and the report

Each attempt's state is reloaded from its files before the next stage uses it, so a run
resumed after SIGKILL (``resume=True``) continues from exactly what an uninterrupted run
would have had: finished stages and attempts are read back, the interrupted attempt is
started again from its own seed.

With ``budget.robustness`` limits, each attempt is also judged on its robustness block
against the baseline's (``torchslim.pipeline.robustness_guard``): the block and the
checks are in its ``attempt.json`` (``"robustness"``), and the baseline's block in
``pipeline.json``'s first stage entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchslim import _io
from torchslim.errors import ConfigError
from torchslim.evaluation import EvalResult, evaluate
from torchslim.evaluation.robustness.budget import check
from torchslim.exporters import export_onnx
from torchslim.pipeline import setup
from torchslim.pipeline.recipe import Recipe, StageOptions, load_recipe, stage_name
from torchslim.pipeline.robustness_guard import BASELINE_FILE, RobustnessGuard
from torchslim.pipeline.run import CHECKPOINT, Run, RunResult
from torchslim.pipeline.stages import ARTIFACT, StageContext, State, run_stage
from torchslim.pipeline.summary import finish
from torchslim.runtime import Session
from torchslim.runtime import open as open_session
from torchslim.train import save_checkpoint

__all__ = ["run_recipe", "RunResult", "measure"]

logger = logging.getLogger(__name__)


@dataclass
class GuardedRun(Run):
    """A ``Run`` with the robustness guard its budget asks for (None: no robustness limits)."""

    robustness: RobustnessGuard | None = None


def fingerprint(recipe: Recipe) -> str:
    """What a resumed run must share with the interrupted one (the output may move). A
    budget without robustness limits fingerprints as before they existed."""
    exclude: dict[str, Any] = {"output": True}
    if recipe.budget.robustness is None:
        exclude["budget"] = {"robustness"}
    blob = recipe.model_dump_json(exclude=exclude)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_recipe(recipe: Recipe | str | Path, *, resume: bool = False, overwrite: bool = False,
               output: str | Path | None = None, cache: Path | None = None) -> RunResult:
    """Run a recipe (a ``Recipe`` or a YAML path) end to end; see the module docstring.
    ``cache`` is where pretrained models are cached (default: ``torchslim.config.cache_dir``)."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    if output is not None:
        recipe = recipe.model_copy(update={"output": str(output)})
    out = recipe.output_dir
    with _io.output_dir(out, command="torchslim run", option="output"):
        clear = check_output(out, recipe, resume=resume, overwrite=overwrite)
        torch.set_num_threads(recipe.target.threads)
        run, state = start(recipe, out, resume=resume, cache=cache, clear=clear)
        for i, stage in enumerate(recipe.stages):
            state, status = run_stage_guarded(run, i, stage, state)
            if status == "stopped":
                break
        return finish(run, state)


def check_output(out: Path, recipe: Recipe, *, resume: bool, overwrite: bool) -> bool:
    """Refuse a run already in ``out`` unless resumed (with the same recipe) or
    ``overwrite``; returns whether the old run must be cleared. Writes nothing: the
    run's inputs are loaded (the recipe's code runs) before anything is written."""
    saved = _io.inside(out, "recipe.json")
    _io.inside(out, "stages")              # a symlink out of the output: refused before work
    if saved.is_file() and not resume:
        if not overwrite:
            raise ConfigError(f"output {out} already holds a run ({saved}); pass --resume to "
                              "continue it, --overwrite to start again, or another output")
        return True
    if saved.is_file():
        old = _io_read(saved).get("fingerprint")
        if old != fingerprint(recipe):
            raise ConfigError(f"the recipe changed since the run in {out} started "
                              f"(fingerprint {old} -> {fingerprint(recipe)}); resume it with "
                              "the same recipe or pass --overwrite to start again")
    return False


def record_output(out: Path, recipe: Recipe, *, clear: bool) -> None:
    """Clear the old run (``clear``) and record the recipe; the caller holds the lock."""
    if clear:
        stages = _io.inside(out, "stages")
        if stages.is_symlink():
            raise ConfigError(f"{stages} is a symlink; torchslim will not delete through it")
        shutil.rmtree(stages, ignore_errors=True)
        _io.inside(out, "pipeline.json").unlink(missing_ok=True)
    _io.write_json(_io.inside(out, "recipe.json"), {"fingerprint": fingerprint(recipe),
                                                     "recipe": recipe.model_dump(mode="json")})


def _io_read(path: Path) -> dict[str, Any]:
    """A JSON file this runner wrote, or {} when it is missing (or was never finished)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def start(recipe: Recipe, out: Path, *, resume: bool, cache: Path | None = None,
          clear: bool = False) -> tuple[Run, State]:
    """Load data and models (the recipe's entry points run here), record the run in
    ``out`` (``record_output``), save (or reload) the starting point, measure it."""
    torch.manual_seed(recipe.seed)
    data = setup.load_data_for(recipe)
    model, builder, info = setup.load_model_for(recipe, recipe.model, data,
                                                args=recipe.model_args, cache=cache)
    teacher = model if recipe.teacher is None else \
        setup.load_model_for(recipe, recipe.teacher, data, args={}, cache=cache,
                             key="teacher")[0]
    ctx = StageContext(data=data, teacher=teacher.eval(), target=recipe.target, seed=recipe.seed)
    run = GuardedRun(recipe=recipe, out=out, ctx=ctx, builder=builder, model_info=info)
    record_output(out, recipe, clear=clear)
    bdir = run.path("stages", "00-baseline")
    if resume and (bdir / CHECKPOINT).is_file():
        model = setup.load_float(bdir / CHECKPOINT, builder)
    else:
        save_checkpoint(bdir / CHECKPOINT, model, dataset=data.info.name)
        model = setup.load_float(bdir / CHECKPOINT, builder)
    artifact = export_onnx(model, bdir / ARTIFACT, input_shape=ctx.input_shape)
    state = State(model=model, artifact=artifact, checkpoint=bdir / CHECKPOINT)
    torch_result = _evaluate_val(run, state, on_torch=True)
    torch_val = _metrics(torch_result, state)
    run.baseline_top1 = torch_val["val_top1"]
    state.record = {"metrics": measure(run, state)}
    entry = {"stage": "00-baseline", "kind": "baseline", "status": "start",
             "metrics": state.record["metrics"], "torch_metrics": torch_val}
    if recipe.budget.robustness is not None:
        run.robustness = RobustnessGuard(
            recipe.budget.robustness, data, model, baseline_logits=torch_result.logits,
            source=f"{recipe.baseline_name}-fp32-torch", threads=recipe.target.threads,
            saved=bdir / BASELINE_FILE, resume=resume)
        entry["robustness"] = run.robustness.summary()
    run.stages.append(entry)
    logger.info("baseline: val top-1 %.4f on PyTorch fp32; allowed drop %.4f",
                run.baseline_top1, run.allowed_drop)
    run.write_log()
    return run, state


def measure(run: Run, state: State, *, on_torch: bool = False) -> dict[str, Any]:
    """Validation top-1, latency and size of ``state`` on the target runtime (or PyTorch)."""
    return _metrics(_evaluate_val(run, state, on_torch=on_torch), state)


def _evaluate_val(run: Run, state: State, *, on_torch: bool = False) -> EvalResult:
    target = run.recipe.target
    if on_torch:
        from torchslim.runtime import TorchSession
        session: Any = TorchSession(state.model, threads=target.threads)
    else:
        session = _artifact_session(run, state)
    return evaluate(session, run.ctx.data.val, batch_sizes=target.batch_sizes,
                    repeats=target.stage_repeats, warmup=1, model=state.model,
                    measure_memory=False)


def _metrics(result: EvalResult, state: State) -> dict[str, Any]:
    return {"val_top1": result.top1, "runtime": result.runtime, "precision": state.precision,
            "p50_ms": {b: s["p50"] for b, s in result.latency_ms.items()},
            "bytes": result.bytes, "params": result.params, "macs": result.macs}


def _artifact_session(run: Run, state: State) -> Session:
    target = run.recipe.target
    return open_session(state.artifact, target.runtime, threads=target.threads,
                        precision=None if state.precision == "fp32" else "int8")


def run_stage_guarded(run: Run, i: int, stage: StageOptions, state: State, *,
                      dirname: str | None = None) -> tuple[State, str]:
    """Run (or read back) one stage into ``stages/<dirname or its name>``; returns the
    state after it and its status ("done", "skipped" or "stopped")."""
    name = stage_name(i, stage)
    sdir = run.path("stages", dirname or name)
    done = _io_read(sdir / "stage.json")
    if done:
        run.attempts.extend(done["attempts"])
        run.stages.append(done)
        logger.info("%s: finished before (%s), reusing it", name, done["status"])
        accepted = done.get("accepted")
        return (state if accepted is None else _restore(run, done["attempts"][accepted], state),
                done["status"])
    records: list[dict[str, Any]] = []
    new_state, accepted = state, None
    for k, opts in enumerate(stage.attempts()):
        record = _attempt(run, i, k, stage, opts, state, sdir / f"attempt-{k}")
        records.append(record)
        run.attempts.append(record)
        run.write_log()
        if record["verdict"] == "accepted":
            new_state, accepted = _restore(run, record, state), k
            break
    status = "done" if accepted is not None else ("skipped" if stage.on_fail == "skip"
                                                  else "stopped")
    entry = {"stage": name, "kind": stage.kind, "status": status, "accepted": accepted,
             "attempts": records,
             "metrics": records[accepted]["metrics"] if accepted is not None else None}
    _io.write_json(sdir / "stage.json", entry)
    run.stages.append(entry)
    run.write_log()
    if accepted is None:
        logger.warning("%s: every attempt broke the budget; %s", name,
                       "skipping the stage" if status == "skipped" else "stopping the run")
    return new_state, status


def _attempt(run: Run, i: int, k: int, stage: StageOptions, opts: StageOptions, state: State,
             adir: Path) -> dict[str, Any]:
    """One attempt: run, export, measure on val, judge against the budget; or read it back."""
    saved = _io_read(adir / "attempt.json")
    if saved:
        return saved
    shutil.rmtree(adir, ignore_errors=True)   # what a killed attempt left behind
    _seed(run.recipe.seed * 1_000 + i * 10 + k)
    t0 = time.monotonic()
    new = run_stage(state, opts, run.ctx, adir)
    logits = None
    if new.artifact == state.artifact:        # export: nothing changed, nothing to re-measure
        metrics, new.checkpoint = state.record["metrics"], state.checkpoint
    else:
        if new.model is not state.model:
            new.checkpoint = save_checkpoint(adir / CHECKPOINT, new.model,
                                             dataset=run.ctx.data.info.name)
        else:
            new.checkpoint = state.checkpoint
        result = _evaluate_val(run, new)
        metrics, logits = _metrics(result, new), result.logits
    drop = run.baseline_top1 - metrics["val_top1"]
    allowed = run.allowed_drop if opts.max_drop is None else min(run.allowed_drop, opts.max_drop)
    checks = [check("top-1 drop (val, guard)", drop, allowed, "<=")]
    robustness = _robustness(run, state, new, logits)
    if robustness is not None:
        checks += robustness["checks"]
    ok = all(c["ok"] for c in checks)
    verdict = "accepted" if ok or not run.guard else "rolled back"
    record = {"stage": stage_name(i, stage), "kind": stage.kind, "attempt": k,
              "options": stage.fallbacks[k - 1] if k else {}, "metrics": metrics,
              "val_drop": round(drop, 6), "allowed_drop": round(allowed, 6),
              "within_budget": ok, "checks": checks, "verdict": verdict,
              "seconds": round(time.monotonic() - t0, 2), "record": new.record,
              "artifact": run.rel(new.artifact), "checkpoint": run.rel(new.checkpoint),
              "precision": new.precision}
    if robustness is not None:
        record["robustness"] = robustness
    _io.write_json(adir / "attempt.json", record)
    failed = [c["check"] for c in checks if not c["ok"]]
    logger.info("%s attempt %d: val top-1 %.4f (drop %.4f, allowed %.4f) -> %s%s",
                record["stage"], k, metrics["val_top1"], drop, allowed,
                record["verdict"], f" (failed: {'; '.join(failed)})" if failed else "")
    return record


def _robustness(run: Run, before: State, new: State, logits: Any) -> dict[str, Any] | None:
    """The attempt's robustness block and checks, None without robustness limits. An
    attempt that left the artifact as it was (export) keeps the one it had."""
    guard = getattr(run, "robustness", None)
    if guard is None:
        return None
    if new.artifact == before.artifact and before.record.get("robustness"):
        return before.record["robustness"]
    return guard.judge(_artifact_session(run, new), new.model, logits)


def _restore(run: Run, record: dict[str, Any], previous: State) -> State:
    """The accepted attempt's state, read back from its files."""
    ckpt = run.path(record["checkpoint"])
    model = setup.load_float(ckpt, run.builder)
    kept = {"robustness": record["robustness"]} if record.get("robustness") else {}
    return State(model=model, artifact=run.path(record["artifact"]),
                 precision=record["precision"], checkpoint=ckpt,
                 record={"metrics": record["metrics"], **record["record"], **kept})


def _seed(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

