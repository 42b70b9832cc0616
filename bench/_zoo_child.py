"""One model of the zoo sweep, run in its own process by bench/zoo_sweep.py.

Stages (each one's figures, or its error, go into the record; a later stage that needs a
failed one is skipped): memory check, build, fp32 (ONNX + ORT), ptq (quantize -> QDQ ONNX
-> ORT, cosine against FP32 torch), coverage (the library's record and the ops of ORT's
optimised graph), speed (ORT FP32 vs INT8 at batch 8, interleaved), prune (half the MACs,
export, ORT). The record is saved after every stage, so a process killed by the time or
memory guard still leaves what it had measured.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from _common import one_line
from _zoo import (MEMORY_PER_WEIGHT_BYTE, ModelSpec, centered_cosine, estimate_batchnorm_,
                  param_count, spec_for)

logger = logging.getLogger("zoo_sweep")

GIB = 1 << 30
CALIB_SAMPLES = 8    # real samples the PTQ is calibrated on
EVAL_SAMPLES = 8     # other real samples the outputs are compared on (and timed with)
TIMING_BATCH = 8
INT8_OPS = {"QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm",
            "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention"}


class Record:
    """The model's record, saved (atomically) after every stage for the parent to read."""

    def __init__(self, work: Path, name: str) -> None:
        self.path = work / f"{name}.partial.json"
        self.data: dict[str, Any] = {"model": name}

    def save(self) -> None:
        from torchslim._io import write_json

        write_json(self.path, self.data)

    def section(self, key: str, fn: Callable[[dict[str, Any]], Any]) -> Any:
        """Run stage ``key``: ``fn(figures)`` fills ``self.data[key]``; returns its value,
        or None (with the error recorded) when it raises."""
        figures: dict[str, Any] = self.data.setdefault(key, {})
        self.data["stage"] = key
        self.save()
        t0 = time.perf_counter()
        try:
            return fn(figures)
        except Exception as e:  # a model that fails is a record with the error, never a crash
            from torchslim.errors import TorchslimError

            figures["error"] = one_line(e)
            figures["error_kind"] = "TorchslimError" if isinstance(e, TorchslimError) else "raw"
            logger.warning("%s failed: %s\n%s", key, figures["error"],
                           "".join(traceback.format_exception(e)))
            return None
        finally:
            figures["seconds"] = round(time.perf_counter() - t0, 2)
            self.save()


def _np(x: Any) -> Any:
    if isinstance(x, tuple):
        return tuple(t.numpy() for t in x)
    return x.numpy()


def _take(x: Any, idx: slice | list[int]) -> Any:
    return tuple(t[idx] for t in x) if isinstance(x, tuple) else x[idx]


def _call(model: nn.Module, x: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(*x) if isinstance(x, tuple) else model(x)


def _export(model: nn.Module, path: Path, example: Any) -> Path:
    """``torchslim.export`` with the model's real inputs when it takes ``example_inputs``,
    else with ``input_shape`` (one float tensor only)."""
    import torchslim

    params = inspect.signature(torchslim.export).parameters
    if "example_inputs" in params:
        return torchslim.export(model, path, example_inputs=example)
    if isinstance(example, tuple):
        raise TypeError("torchslim.export takes input_shape only: it cannot write a model "
                        "with several or integer inputs")
    return torchslim.export(model, path, input_shape=tuple(example.shape[1:]))


def _session(path: Path, threads: int) -> Any:
    from torchslim.runtime import OnnxRuntimeSession

    return OnnxRuntimeSession(path, threads=threads)


def _compare(out: np.ndarray, ref: np.ndarray, classifier: bool) -> dict[str, Any]:
    from torchslim.evaluation import agreement, mean_cosine

    a, b = ref.reshape(len(ref), -1), out.reshape(len(out), -1)
    figures = {"cosine": round(mean_cosine(a, b), 6),
               "cosine_centered": round(centered_cosine(ref, out), 6),
               "max_abs_diff": float(np.abs(a - b).max())}
    if classifier:
        figures["agreement"] = round(agreement(a, b), 4)
    return figures


def ort_ops(path: Path, threads: int) -> dict[str, Any]:
    """Op counts of the graph ONNX Runtime really runs (all optimisations on): integer
    Conv/MatMul/Gemm kernels against float ones, and the Q/DQ left."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.intra_op_num_threads = threads
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    int8 = sum(n for op, n in ops.items() if op in INT8_OPS)
    floats = {op: n for op, n in ops.items() if op not in INT8_OPS
              and any(k in op for k in ("Conv", "MatMul", "Gemm"))}
    total = int8 + sum(floats.values())
    return {"int8_compute_ops": int8, "float_compute_ops": floats,
            "int8_fraction": round(int8 / total, 4) if total else None,
            "quantize_linear": ops.get("QuantizeLinear", 0),
            "dequantize_linear": ops.get("DequantizeLinear", 0)}


def _coverage(quantized: nn.Module) -> Any:
    """The library's typed coverage record, when it keeps one (else None)."""
    import torchslim

    coverage = getattr(torchslim.record_of(quantized), "coverage", None)
    if coverage is None:
        return None
    if hasattr(coverage, "to_dict"):
        return coverage.to_dict()
    return dataclasses.asdict(coverage) if dataclasses.is_dataclass(coverage) else str(coverage)


def _speed(fp32: Any, int8: Any, samples: Any, budget_s: float) -> dict[str, Any]:
    from torchslim.evaluation import time_interleaved
    from torchslim.evaluation.latency import tile_batch

    batch = tile_batch(samples, TIMING_BATCH)
    fp32.run(batch)
    t0 = time.perf_counter()
    fp32.run(batch)
    per_call = time.perf_counter() - t0
    calls, warmup = 3, 2
    rounds = int(max(3, min(20, budget_s / (2 * (calls + warmup) * per_call + 0.4))))
    timings = time_interleaved([fp32, int8], samples, batch_sizes=(TIMING_BATCH,),
                               rounds=rounds, calls=calls, warmup=warmup)
    ratio = timings.ratio(0, 1, TIMING_BATCH)
    return {"rounds": rounds, "p50_ms_fp32": timings.p50_ms(0, TIMING_BATCH),
            "p50_ms_int8": timings.p50_ms(1, TIMING_BATCH),
            "speedup": None if ratio is None else round(ratio.median, 3),
            "range": None if ratio is None else [round(ratio.low, 3), round(ratio.high, 3)]}


def _fingerprint(model: nn.Module) -> dict[str, tuple]:
    return {k: (tuple(v.shape), float(v.double().sum()), float(v.double().abs().sum()))
            for k, v in model.state_dict().items() if v.is_floating_point()}


def _prune(model: nn.Module, example: Any, tmp: Path, threads: int,
           figures: dict[str, Any]) -> None:
    from torchslim.prune import ChannelPruneConfig, prune_channels_

    before = _fingerprint(model)
    try:
        result = prune_channels_(model, ChannelPruneConfig(target_macs=0.5),
                                 example_inputs=example)
    except Exception:
        figures["ok"] = False
        figures["model_untouched"] = _fingerprint(model) == before
        raise
    figures.update(ok=True, mac_ratio=round(result.mac_ratio, 4), macs_before=result.macs_before,
                   macs_after=result.macs_after, params_after=result.params_after,
                   protected={k: v[:500] for k, v in result.protected.items()}, export_ok=False)
    path = _export(model, tmp / "pruned.onnx", example)
    out = _session(path, threads).run(_np(example))
    expected = _call(model, example).float().numpy()
    figures["bytes"] = path.stat().st_size
    figures["ort_max_abs_diff"] = float(np.abs(np.asarray(out) - expected).max())
    figures["export_ok"] = True


def _memory_guard(spec: ModelSpec, limit_bytes: float, figures: dict[str, Any]) -> bool:
    params = param_count(spec)
    need = params * 4 * MEMORY_PER_WEIGHT_BYTE + GIB
    figures.update(params=params, estimated_bytes=int(need), limit_bytes=int(limit_bytes))
    return need <= limit_bytes


def run_child(args: Any) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    rec = Record(args.work, args.child)
    spec = spec_for(args.child)
    rec.data.update(family=spec.family, kind=spec.kind, threads=args.threads)
    limit = args.memory_gib * GIB
    fits = rec.section("memory", lambda f: _memory_guard(spec, limit, f))
    if fits is False:  # None: the estimate itself failed, so the model is tried anyway
        m = rec.data["memory"]
        rec.data["error"] = (f"skipped: needs about {m['estimated_bytes'] / GIB:.1f} GiB "
                             f"({m['params'] / 1e6:.0f} M parameters), more than the "
                             f"{limit / GIB:.1f} GiB limit")
        rec.data["stage"] = "done"
        rec.save()
        return
    with tempfile.TemporaryDirectory(prefix=f"zoo-{args.child}-") as tmp:
        _stages(rec, spec, Path(tmp), args)
    rec.data["stage"] = "done"
    rec.save()


def _stages(rec: Record, spec: ModelSpec, tmp: Path, args: Any) -> None:
    import torchslim

    built = rec.section("build", lambda f: (spec.build(), spec.samples(CALIB_SAMPLES + EVAL_SAMPLES)))
    if built is None:
        rec.data["error"] = rec.data["build"]["error"]
        return
    model, samples = built
    calib = _take(samples, slice(0, None, 2))     # every other sample calibrates ...
    evals = _take(samples, slice(1, None, 2))     # ... the others are compared and timed on
    rec.data["build"]["batchnorm_estimated"] = estimate_batchnorm_(model, calib)
    ref = _call(model, evals).float().numpy()
    classifier = spec.family == "torchvision"

    def fp32(f: dict[str, Any]) -> Any:
        session = _session(_export(model, tmp / "fp32.onnx", evals), args.threads)
        f.update(ort_ok=True, **_compare(np.asarray(session.run(_np(evals))), ref, classifier))
        return session

    def ptq(f: dict[str, Any]) -> Any:
        batches = [(_take(calib, slice(i, i + 4)), None) for i in range(0, CALIB_SAMPLES, 4)]
        t0 = time.perf_counter()
        q = torchslim.quantize(copy.deepcopy(model), torchslim.QuantConfig(),
                               calibration=batches, example_inputs=_take(calib, slice(0, 2)))
        f["quantize_seconds"] = round(time.perf_counter() - t0, 2)
        path = _export(q, tmp / "int8.onnx", evals)
        f["bytes"] = path.stat().st_size
        session = _session(path, args.threads)
        f.update(ort_ok=True, **_compare(np.asarray(session.run(_np(evals))), ref, classifier))
        return q, path, session

    fp32_session = rec.section("fp32", fp32)
    quantized = rec.section("ptq", ptq)
    if quantized is not None:
        q, path, int8_session = quantized
        rec.section("coverage", lambda f: f.update(record=_coverage(q)))
        rec.section("ort_ops", lambda f: f.update(ort_ops(path, args.threads)))
        if fp32_session is not None:
            rec.section("speed", lambda f: f.update(_speed(fp32_session, int8_session,
                                                            _np(evals), args.timing_budget)))
        del q, int8_session
    rec.section("prune", lambda f: _prune(model, _take(evals, slice(0, 2)), tmp, args.threads, f))
