"""The main job: teacher -> ONNX FP32 and INT8 (PTQ) -> evaluate on PyTorch and ONNX
Runtime -> report.

Later stages (pruning, distillation) add candidates here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchslim.data import DataBundle, load_data
from torchslim.evaluate import EvalResult, evaluate
from torchslim.export import export_onnx, export_qdq
from torchslim.pipeline.quantize import (CALIB_BATCH, QuantizeJob, fake_quant_agreement,
                                         quantize_model)
from torchslim.pipeline.teacher import QUICK_TEACHER, TeacherRecipe, get_teacher
from torchslim.report import write_report
from torchslim.runtime import OnnxRuntimeSession, TorchSession

logger = logging.getLogger(__name__)


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
    ort_result = evaluate(OnnxRuntimeSession(onnx_path, threads=opts.threads), data.test,
                          name="teacher-fp32-onnxruntime", reference=torch_result,
                          model=teacher, **common)
    torch_result.agreement, torch_result.cosine = 1.0, 1.0
    int8_result = _ptq_candidate(teacher, data, out, opts, torch_result, common)
    results: list[EvalResult] = [torch_result, ort_result, int8_result]
    paths = write_report(out, baseline=torch_result, candidates=results[1:],
                         dataset={"name": recipe.dataset, "split": "test", "n": torch_result.n},
                         class_names=list(data.info.class_names), title="torchslim demo",
                         extra={"teacher": {"cached": cached, "architecture": meta.get("architecture"),
                                            "val_top1": (meta.get("metrics") or {}).get("val_top1")}})
    return {"report": paths, "results": results, "teacher_cached": cached}


def _ptq_candidate(teacher: torch.nn.Module, data: DataBundle, out: Path, opts: DemoOptions,
                   reference: EvalResult, common: dict[str, Any]) -> EvalResult:
    """W8A8 static PTQ (per-channel s8 weights, u8 activations) on ONNX Runtime."""
    job = QuantizeJob(checkpoint=out / "teacher.safetensors", out=out, threads=opts.threads,
                      calib_batches=4 if opts.quick else 16)
    prepared = quantize_model(teacher, data, job)
    path = export_qdq(prepared, out / "teacher-int8.onnx", input_shape=data.info.input_shape)
    session = OnnxRuntimeSession(path, threads=opts.threads)
    result = evaluate(session, data.test, name="teacher-int8-onnxruntime", reference=reference,
                      model=teacher, **common)
    result.extra["fake_quant_agreement"] = fake_quant_agreement(prepared, session, data)
    result.extra["quantization"] = {"method": "ptq", "weights": "s8 per-channel symmetric",
                                    "activations": "u8 per-tensor asymmetric",
                                    "observer": job.observer,
                                    "calibration_images": job.calib_batches * CALIB_BATCH}
    return result
