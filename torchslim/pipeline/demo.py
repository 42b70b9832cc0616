"""The main job: teacher -> ONNX FP32, INT8 (PTQ), a structurally pruned model and a
distilled student -> evaluate on PyTorch and ONNX Runtime; then the built-in recipe
(``torchslim/recipes/fashion_mnist.yaml``: KD student -> pruning -> QAT INT8 -> ONNX
Runtime under a 1-point budget) -> one report with every candidate, the recipe's stages,
its shipped artifact (``final-int8-onnxruntime``) and its stage log (``pipeline``).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchslim.data import DataBundle, load_data
from torchslim.distillation import DistillConfig, distill
from torchslim.evaluation import EvalResult, evaluate, interleaved_speedups
from torchslim.evaluation.robustness import RobustnessConfig, RobustnessSuite
from torchslim.evaluation.robustness.suite import collect_split
from torchslim.exporters import export_onnx, export_qdq
from torchslim.artifacts import ModelRegistry
from torchslim.pipeline.prune import PRUNE, prune_model
from torchslim.pipeline.publish import publish_run
from torchslim.pipeline.quantize import CALIB_BATCH, QUANTIZE, fake_quant_agreement, quantize_model
from torchslim.pipeline.recipe import Recipe, load_recipe
from torchslim.pipeline.runner import run_recipe
from torchslim.pipeline.teacher import QUICK_TEACHER, TeacherRecipe, get_teacher
from torchslim.report import write_report
from torchslim.runtime import Session, TorchSession
from torchslim.runtime import open as open_session
from torchslim.train import TrainConfig, save_checkpoint
from torchslim.zoo import build_model

logger = logging.getLogger(__name__)

PRUNE_FINETUNE_EPOCHS = 3  # recovery after removing half the MACs (bench/prune_peers.py)
# the student of bench/distill.py: ResNet-8 width 8 (11 % of the teacher's parameters);
# T = 2 scored best on the validation split there
STUDENT = ("resnet8", {"width": 8})
KD = {"temperature": 2.0, "alpha": 0.9, "epochs": 3}
# robustness sample: 500 test images (50 per class); see RobustnessConfig for the error bars
ROBUSTNESS_N = 500


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    out: Path = Path("runs/demo")
    quick: bool = False                 # tiny teacher and data: a smoke test in seconds
    threads: int = 2
    batch_sizes: tuple[int, ...] = (1, 32)
    data_root: Path | None = None
    cache: Path | None = None


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    """Run the demo and return {"report": dict paths, "results": [EvalResult], ...}."""
    torch.set_num_threads(opts.threads)
    recipe = QUICK_TEACHER if opts.quick else TeacherRecipe()
    data = load_data(recipe.dataset, root=opts.data_root, train_limit=recipe.train_limit,
                     test_limit=1000 if opts.quick else None)
    teacher, meta, cached = get_teacher(recipe, data, cache=opts.cache)
    out = Path(opts.out)
    onnx_path = export_onnx(teacher, out / "teacher.onnx", input_shape=data.info.input_shape)
    repeats = 5 if opts.quick else 30
    common: dict[str, Any] = {"batch_sizes": opts.batch_sizes, "repeats": repeats,
                              "class_names": list(data.info.class_names)}
    torch_result = evaluate(TorchSession(teacher, threads=opts.threads), data.test,
                            name="teacher-fp32-torch", model=teacher, **common)
    ort_result = evaluate(open_session(onnx_path, threads=opts.threads), data.test,
                          name="teacher-fp32-onnxruntime", reference=torch_result,
                          model=teacher, **common)
    torch_result.agreement, torch_result.cosine = 1.0, 1.0
    int8_result = _ptq_candidate(teacher, data, out, opts, torch_result, common)
    pruned_result, pruned, pruning = _pruned_candidate(teacher, meta, data, out, opts,
                                                       torch_result, common)
    student_result, student = _distilled_candidate(teacher, recipe, out, opts, torch_result,
                                                   common)
    # the recipe measures the same teacher as its baseline: keep ours, add its stages + final
    pipeline = run_recipe(demo_recipe(opts), overwrite=True, cache=opts.cache)
    results: list[EvalResult] = [torch_result, ort_result, int8_result, pruned_result,
                                 student_result, *pipeline.results[1:]]
    sessions = [TorchSession(teacher, threads=opts.threads),
                *(open_session(r.artifact, threads=opts.threads) if r.artifact else None
                  for r in results[1:])]
    # the teacher (its ONNX Runtime export), PTQ, pruned, KD and the recipe's final artifact;
    # the recipe's intermediate stages are left out to keep the block under a minute
    scored = [1, 2, 3, 4, len(results) - 1]
    robustness = _robustness(data, teacher, [results[i] for i in scored],
                             [sessions[i] for i in scored],
                             models={pruned_result.name: pruned, student_result.name: student},
                             quick=opts.quick)
    registry = _publish(pipeline.out, out / "registry")
    sample, _ = next(iter(data.test))
    interleaved_speedups(results, sessions, sample[:1].numpy(), batch_sizes=opts.batch_sizes,
                         rounds=3 if opts.quick else 10)
    paths = write_report(out, baseline=torch_result, candidates=results[1:],
                         dataset={"name": recipe.dataset, "split": "test", "n": torch_result.n},
                         class_names=list(data.info.class_names), title="torchslim demo",
                         extra={"teacher": {"cached": cached, "architecture": meta.get("architecture"),
                                            "val_top1": (meta.get("metrics") or {}).get("val_top1")},
                                "pruning": pruning, "pipeline": pipeline.pipeline,
                                "robustness": robustness, "registry": registry})
    paths["pipeline"] = pipeline.report["pipeline"]
    return {"report": paths, "results": results, "teacher_cached": cached,
            "verdict": pipeline.verdict, "artifact": pipeline.artifact, "registry": registry}


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
    data_args = {"root": str(opts.data_root)} if opts.data_root is not None else {}
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


def _ptq_candidate(teacher: torch.nn.Module, data: DataBundle, out: Path, opts: DemoOptions,
                   reference: EvalResult, common: dict[str, Any]) -> EvalResult:
    """W8A8 static PTQ (per-channel s8 weights, u8 activations) on ONNX Runtime."""
    plan = QUANTIZE.plan(calib_batches=4 if opts.quick else 16)
    prepared = quantize_model(teacher, data, plan)
    path = export_qdq(prepared, out / "teacher-int8.onnx", input_shape=data.info.input_shape)
    session = open_session(path, threads=opts.threads)
    result = evaluate(session, data.test, name="teacher-int8-onnxruntime", reference=reference,
                      model=teacher, **common)
    result.extra["fake_quant_agreement"] = fake_quant_agreement(prepared, session, data)
    result.extra["quantization"] = {"method": "ptq", "weights": "s8 per-channel symmetric",
                                    "activations": "u8 per-tensor asymmetric",
                                    "observer": plan.observer,
                                    "calibration_images": plan.calib_batches * CALIB_BATCH}
    return result


def _pruned_candidate(teacher: torch.nn.Module, meta: dict[str, Any], data: DataBundle,
                      out: Path, opts: DemoOptions, reference: EvalResult,
                      common: dict[str, Any]) -> tuple[EvalResult, torch.nn.Module,
                                                       dict[str, Any]]:
    """Half the MACs by structured pruning (one residual block, the one whose bypass costs
    least validation loss, then channels in multiples of 16, the block ONNX Runtime's AVX-512
    NCHWc convolutions use), recovery fine-tuning, FP32 on ONNX Runtime."""
    epochs = 1 if opts.quick else PRUNE_FINETUNE_EPOCHS
    plan = PRUNE.plan(target_macs=0.5, round_to=4 if opts.quick else 16, blocks=1,
                      finetune_epochs=epochs)
    model = copy.deepcopy(teacher)
    record = prune_model(model, data, plan, threads=opts.threads)
    model.eval()
    save_checkpoint(out / "teacher-pruned.safetensors", model, spec=meta.get("architecture"),
                    dataset=meta.get("dataset"), pruning=record)
    path = export_onnx(model, out / "teacher-pruned.onnx", input_shape=data.info.input_shape)
    result = evaluate(open_session(path, threads=opts.threads), data.test,
                      name="teacher-pruned-onnxruntime", reference=reference, model=model,
                      **common)
    result.extra["pruning"] = {k: record[k] for k in ("macs_before", "macs_after",
                                                      "params_before", "params_after")}
    result.extra["pruning"]["finetune_epochs"] = epochs
    result.extra["pruning"]["removed_blocks"] = record.get("removed_blocks", [])
    return result, model, record


def _distilled_candidate(teacher: torch.nn.Module, recipe: TeacherRecipe, out: Path,
                         opts: DemoOptions, reference: EvalResult,
                         common: dict[str, Any]) -> tuple[EvalResult, torch.nn.Module]:
    """A small student taught by the teacher (temperature KD + hard labels), FP32 on ONNX
    Runtime. Unaugmented images, so the teacher's logits are computed once."""
    plain = load_data(recipe.dataset, root=opts.data_root, augment=False,
                      train_limit=recipe.train_limit, test_limit=1000 if opts.quick else None)
    name, kwargs = STUDENT if not opts.quick else ("resnet8", {"width": 4})  # quick: a tiny teacher
    torch.manual_seed(0)
    student = build_model(name, num_classes=plain.info.num_classes,
                          in_channels=plain.info.input_shape[0], **kwargs)
    train = TrainConfig(epochs=1 if opts.quick else KD["epochs"], lr=0.1, seed=0,
                        threads=opts.threads, channels_last=False)  # NHWC is slower at 8 channels
    config = DistillConfig(temperature=KD["temperature"], alpha=KD["alpha"],
                           cache_teacher=True, train=train)
    student = distill(student, teacher, plain, config).eval()
    save_checkpoint(out / "student-kd.safetensors", student, dataset=recipe.dataset,
                    distillation={"teacher": "teacher", **KD, "epochs": train.epochs})
    path = export_onnx(student, out / "student-kd.onnx", input_shape=plain.info.input_shape)
    result = evaluate(open_session(path, threads=opts.threads), plain.test,
                      name="student-kd-onnxruntime", reference=reference, model=student,
                      **common)
    result.extra["distillation"] = {"student": f"{name} width {kwargs['width']}", **KD,
                                    "epochs": train.epochs}
    return result, student


def _robustness(data: DataBundle, teacher: torch.nn.Module, results: list[EvalResult],
                sessions: list[Session | None], *, models: dict[str, torch.nn.Module],
                quick: bool) -> dict[str, Any]:
    """The robustness block (``torchslim.evaluation.robustness``) of each result with a
    session, on one stratified test subset, against the first (the teacher's ONNX Runtime
    FP32 export, its model being the attack source):
    corruptions, FGSM/PGD made white-box on the teacher (and on a float torch candidate's
    own model), calibration and paired flips on the whole test split. Written into each
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
