"""The main job: the built-in recipe (``torchslim/recipes/fashion_mnist.yaml``: the default
teacher -> KD student -> structured pruning -> QAT INT8 -> ONNX Runtime under a 1-point
budget), run once, beside the teacher's own ONNX Runtime export and its INT8 PTQ -> one
report with every candidate: the teacher on PyTorch (the recipe's baseline, what every
speed-up is measured against) and on ONNX Runtime, the PTQ teacher, each accepted stage of
the recipe (its KD student, its pruned model) and its shipped artifact
(``final-int8-onnxruntime``), each evaluated on the test split, scored for robustness and
timed in one interleaved loop; the recipe's stage log is ``pipeline``.

The recipe's stages are the demo's candidates: nothing is trained twice. Each step logs
when it starts and how long it took (``timing`` in the report).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchslim import _io
from torchslim.artifacts import ModelRegistry
from torchslim.data import DataBundle, load_data
from torchslim.evaluation import EvalResult, evaluate, interleaved_speedups
from torchslim.evaluation.robustness import RobustnessConfig, RobustnessSuite
from torchslim.evaluation.robustness.suite import collect_split
from torchslim.exporters import export_qdq
from torchslim.pipeline import setup
from torchslim.pipeline.prune import measure_pruned
from torchslim.pipeline.publish import publish_run
from torchslim.pipeline.quantize import CALIB_BATCH, QUANTIZE, fake_quant_agreement, quantize_model
from torchslim.pipeline.recipe import Recipe, load_recipe
from torchslim.pipeline.run import CHECKPOINT, RunResult
from torchslim.pipeline.runner import run_recipe
from torchslim.pipeline.stages import ARTIFACT
from torchslim.pipeline.teacher import QUICK_TEACHER, TeacherRecipe, get_teacher
from torchslim.report import write_report
from torchslim.runtime import Session, TorchSession
from torchslim.runtime import open as open_session

logger = logging.getLogger(__name__)

# robustness sample: 500 test images (50 per class); see RobustnessConfig for the error bars
ROBUSTNESS_N = 500
BASELINE = Path("stages") / "00-baseline"   # the recipe's starting model (runner layout)
EVAL_BATCH = 256   # the recipe's eval_batch_size: PyTorch's small convolutions run faster in
                   # batches of 256 than of 1,000 on 2 cores


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    out: Path = Path("runs/demo")
    quick: bool = False                 # tiny teacher and data: a smoke test in seconds
    threads: int = 2
    batch_sizes: tuple[int, ...] = (1, 32)
    data_root: Path | None = None
    cache: Path | None = None


class _Steps:
    """The demo's long steps, logged as each starts ("demo step 2/7: ...") and ends (its
    wall-clock and CPU seconds: on a shared machine the CPU time is the steadier figure);
    ``block()`` is the report's ``timing`` block."""

    NAMES = ("teacher", "recipe", "teacher candidates", "robustness", "registry",
             "interleaved timing", "report")

    def __init__(self) -> None:
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, what: str) -> Iterator[None]:
        i = self.NAMES.index(name) + 1
        logger.info("demo step %d/%d: %s", i, len(self.NAMES), what)
        t0, cpu0 = time.perf_counter(), time.process_time()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 1)
        self.cpu_seconds[name] = round(time.process_time() - cpu0, 1)
        logger.info("demo step %d/%d done in %.1f s, CPU %.1f s (%.1f s so far)", i,
                    len(self.NAMES), self.seconds[name], self.cpu_seconds[name],
                    time.perf_counter() - self.t0)

    def block(self) -> dict[str, Any]:
        return {"steps_s": dict(self.seconds), "steps_cpu_s": dict(self.cpu_seconds),
                "total_s": round(time.perf_counter() - self.t0, 1),
                "total_cpu_s": round(time.process_time() - self.cpu0, 1),
                "note": "this process's wall-clock and CPU seconds (all threads) up to the "
                        "report, installation and interpreter start not included"}


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    """Run the demo and return {"report": dict paths, "results": [EvalResult], ...}."""
    torch.set_num_threads(opts.threads)
    step = _Steps()
    recipe = QUICK_TEACHER if opts.quick else TeacherRecipe()
    # the data first: a missing dataset is one error line before any step starts
    data = load_data(recipe.dataset, root=opts.data_root, train_limit=recipe.train_limit,
                     test_limit=1000 if opts.quick else None, eval_batch_size=EVAL_BATCH)
    with step("teacher", "the default teacher (shipped, cached, or trained once)"):
        teacher, meta, cached = get_teacher(recipe, data, cache=opts.cache)
    out = Path(opts.out)
    plan = demo_recipe(opts)
    with step("recipe", f"the recipe {plan.name}: "
              f"{' -> '.join(s.kind for s in plan.stages)} (its epochs are logged as they end)"):
        pipeline = run_recipe(plan, overwrite=True, cache=opts.cache)
    _check_same_teacher(teacher, pipeline.out / BASELINE / CHECKPOINT)
    # the recipe's baseline: the teacher on PyTorch fp32, on the test split
    torch_result = pipeline.results[0]
    common: dict[str, Any] = {"batch_sizes": opts.batch_sizes, "repeats": plan.target.repeats,
                              "class_names": list(data.info.class_names)}
    with step("teacher candidates", "the teacher on ONNX Runtime, FP32 and INT8 PTQ, on the "
              "test split"):
        onnx_path = _io.write_bytes(out / "teacher.onnx",
                                    (pipeline.out / BASELINE / ARTIFACT).read_bytes())
        ort_result = evaluate(open_session(onnx_path, threads=opts.threads), data.test,
                              name="teacher-fp32-onnxruntime", reference=torch_result,
                              model=teacher, **common)
        int8_result = _ptq_candidate(teacher, data, out, opts, torch_result, common)
    results: list[EvalResult] = [torch_result, ort_result, int8_result, *pipeline.results[1:]]
    sessions = [TorchSession(teacher, threads=opts.threads),
                *(open_session(r.artifact, threads=opts.threads) if r.artifact else None
                  for r in results[1:])]
    with step("robustness", f"robustness of {len(results) - 1} candidates"):
        robustness = _robustness(data, teacher, results[1:], sessions[1:],
                                 models=_stage_models(pipeline, plan.target.runtime),
                                 quick=opts.quick)
    with step("registry", "publishing the recipe's chain"):
        registry = _publish(pipeline.out, out / "registry")
    rounds = 3 if opts.quick else 10
    with step("interleaved timing", f"timing {len(results)} candidates in one interleaved "
              f"loop ({rounds} rounds)"):
        sample, _ = next(iter(data.test))
        interleaved_speedups(results, sessions, sample[:1].numpy(),
                             batch_sizes=opts.batch_sizes, rounds=rounds)
    with step("report", "writing the report"):
        extra = {"teacher": {"cached": cached, "architecture": meta.get("architecture"),
                             "val_top1": (meta.get("metrics") or {}).get("val_top1")},
                 "pruning": _pruning(pipeline, tuple(data.info.input_shape)),
                 "pipeline": pipeline.pipeline, "robustness": robustness, "registry": registry}
        timing = step.block()   # the steps up to the report: what the report and caller get
        paths = write_report(out, baseline=torch_result, candidates=results[1:],
                             dataset={"name": recipe.dataset, "split": "test",
                                      "n": torch_result.n},
                             class_names=list(data.info.class_names), title="torchslim demo",
                             extra={**extra, "timing": timing})
    paths["pipeline"] = pipeline.report["pipeline"]
    logger.info("demo finished in %.1f s: verdict %s", timing["total_s"], pipeline.verdict)
    return {"report": paths, "results": results, "teacher_cached": cached,
            "verdict": pipeline.verdict, "artifact": pipeline.artifact, "registry": registry,
            "timing": timing}


# The quick demo's recipe: the built-in one's stages, shrunk to a smoke test.
QUICK_STAGES = [
    {"kind": "distill", "width_mult": 0.5, "epochs": 1, "max_steps_per_epoch": 10},
    {"kind": "prune", "target_macs": 0.5, "round_to": 4, "finetune_epochs": 1,
     "fallbacks": [{"target_macs": 0.8}]},
    {"kind": "quantize", "method": "qat", "qat_epochs": 1, "calib_batches": 4,
     "fallbacks": [{"keep_sensitive": 2}]},
    {"kind": "export", "artifact": "model-int8.onnx"},
]


def demo_recipe(opts: DemoOptions) -> Recipe:
    """The built-in ``fashion_mnist`` recipe writing into ``<out>/pipeline`` with the demo's
    threads, batch sizes and data; ``quick`` shrinks it to the quick teacher and subset."""
    base = load_recipe("fashion_mnist").model_dump(mode="json")
    target = {**base["target"], "threads": opts.threads, "batch_sizes": list(opts.batch_sizes)}
    data_args = {**base["data_args"],
                 **({"root": str(opts.data_root)} if opts.data_root is not None else {})}
    update: dict[str, Any] = {"output": str(Path(opts.out) / "pipeline"), "target": target,
                              "data_args": data_args}
    if opts.quick:
        update.update(model=QUICK_TEACHER.model, model_args=dict(QUICK_TEACHER.model_kwargs),
                      pretrain={"epochs": QUICK_TEACHER.train.epochs,
                                "lr": QUICK_TEACHER.train.lr},
                      data_args={**data_args, "train_limit": QUICK_TEACHER.train_limit,
                                 "test_limit": 1000},
                      stages=QUICK_STAGES, budget={"max_drop": 0.05, "batch": 32},
                      target={**target, "repeats": 5, "stage_repeats": 2, "timing_rounds": 3,
                              "measure_memory": False})
    return Recipe.model_validate({**base, **update})


def _check_same_teacher(teacher: torch.nn.Module, checkpoint: Path) -> None:
    """The recipe's baseline is the demo's teacher (the same recipe key): its figures are
    the teacher's. Anything else is a bug, never silently reported."""
    baseline = setup.load_float(checkpoint, None).state_dict()
    mine = teacher.state_dict()
    if baseline.keys() != mine.keys() or not all(torch.equal(baseline[k], mine[k])
                                                 for k in mine):
        raise RuntimeError(f"the recipe's baseline {checkpoint} is not the demo's teacher; "
                           "the demo's recipe and TeacherRecipe must name the same model")


def _ptq_candidate(teacher: torch.nn.Module, data: DataBundle, out: Path, opts: DemoOptions,
                   reference: EvalResult, common: dict[str, Any]) -> EvalResult:
    """W8A8 static PTQ (per-channel s8 weights, u8 activations) on ONNX Runtime."""
    plan = QUANTIZE.plan(calib_batches=4 if opts.quick else 16)
    prepared = quantize_model(teacher, data, plan)
    path = export_qdq(prepared, out / "teacher-int8.onnx", input_shape=data.info.input_shape)
    session = open_session(path, threads=opts.threads)
    result = evaluate(session, data.test, name="teacher-int8-onnxruntime", reference=reference,
                      model=teacher, **common)
    result.extra["fake_quant_agreement"] = fake_quant_agreement(prepared, session, data,
                                                                outputs=result.logits)
    result.extra["quantization"] = {"method": "ptq", "weights": "s8 per-channel symmetric",
                                    "activations": "u8 per-tensor asymmetric",
                                    "observer": plan.observer,
                                    "calibration_images": plan.calib_batches * CALIB_BATCH}
    return result


def _accepted(pipeline: RunResult) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(stage entry, its accepted attempt) of each stage the recipe kept, in order."""
    for entry in pipeline.pipeline["stages"][1:]:
        if entry["status"] == "done":
            yield entry, entry["attempts"][entry["accepted"]]


def _stage_models(pipeline: RunResult, runtime: str) -> dict[str, torch.nn.Module]:
    """The float model of each float stage candidate (``01-distill-fp32-onnxruntime``...),
    read back from its checkpoint, so the robustness block attacks it white-box too."""
    return {f"{entry['stage']}-fp32-{runtime}":
            setup.load_float(pipeline.out / rec["checkpoint"], None)
            for entry, rec in _accepted(pipeline) if rec["precision"] == "fp32"}


def _pruning(pipeline: RunResult, input_shape: tuple[int, ...]) -> dict[str, Any] | None:
    """The recipe's accepted prune stage: its record and per-layer channels, counted on
    the models before and after it (the previous stage's and its own checkpoints)."""
    before = pipeline.out / BASELINE / CHECKPOINT
    for entry, rec in _accepted(pipeline):
        after = pipeline.out / rec["checkpoint"]
        if entry["kind"] == "prune":
            x = torch.zeros(2, *input_shape)
            counts = measure_pruned(setup.load_float(before, None),
                                    setup.load_float(after, None), x)
            return {**rec["record"], **counts, "stage": entry["stage"],
                    "attempt": rec["attempt"], "options": rec["options"]}
        before = after
    return None


def _robustness(data: DataBundle, teacher: torch.nn.Module, results: list[EvalResult],
                sessions: list[Session | None], *, models: dict[str, torch.nn.Module],
                quick: bool) -> dict[str, Any]:
    """The robustness block (``torchslim.evaluation.robustness``) of each result with a
    session, on one stratified test subset, against the first (the teacher's ONNX Runtime
    FP32 export, its model being the attack source):
    corruptions, FGSM/PGD made white-box on the teacher (and on a float candidate's own
    model), calibration and paired flips on the whole test split. Written into each
    result's ``extra["robustness"]``; returns the sample and its cost for the report."""
    t0 = time.perf_counter()
    config = RobustnessConfig(n=200 if quick else ROBUSTNESS_N)
    suite = RobustnessSuite(data.test, mean=data.info.mean, std=data.info.std, config=config,
                            attack_model=teacher, source="teacher-fp32-torch")
    _, labels = collect_split(data.test)
    scored: dict[str, Any] = {}
    baseline = None
    for i, (result, session) in enumerate(zip(results, sessions)):
        if session is None:
            logger.warning("%s: no artifact, no robustness block", result.name)
            continue
        model = teacher if i == 0 else models.get(result.name)
        block = suite.evaluate(session, baseline=baseline, model=model,
                               clean=(result.logits, labels) if result.logits is not None
                               else None, class_names=list(data.info.class_names))
        baseline = baseline or block
        result.extra["robustness"] = block
        scored[result.name] = block["seconds"]
        logger.info("robustness of %s: %.1f s", result.name, block["seconds"])
    seconds = round(time.perf_counter() - t0, 1)
    logger.info("robustness of %d candidates on %d images: %.1f s", len(scored),
                suite.y.size, seconds)
    return {"baseline": results[0].name, "n": int(suite.y.size), "seconds": seconds,
            "per_candidate_s": scored, "sample": "stratified by class, seed 0 "
            "(RobustnessConfig: the standard error at n = 500 is 1.3 points near 90 %)"}


DEMO_MODEL = "fashion-mnist-demo"


def _publish(run_dir: Path, root: Path) -> dict[str, Any]:
    """The recipe's chain (teacher -> kept stages -> shipped INT8) pushed to a registry in
    the demo's output; returns what the report shows: the versions and the lineage."""
    registry = ModelRegistry(root)
    pushed = publish_run(run_dir, DEMO_MODEL, registry=registry)
    lineage = registry.lineage(pushed[-1].ref)
    for line in lineage.lines():
        logger.info("lineage: %s", line)
    return {"root": str(root), "versions": [p.ref for p in pushed],
            "lineage": lineage.lines(), "command": f"torchslim registry lineage "
            f"{pushed[-1].ref} --registry {root}"}
