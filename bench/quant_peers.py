"""torchslim PTQ/QAT against the INT8 quantizers people already use (issue 3, section 9).

    python bench/quant_peers.py                       # all four models, 2 threads
    python bench/quant_peers.py --quick               # one small model, a few images

For each model every method below gets a row (``error`` set when it fails). Accuracy is
top-1 on the Fashion-MNIST test split, computed on the row's own runtime; agreement is
with the PyTorch FP32 logits. All artifacts of one model are timed in one interleaved
loop, and ``speedup_b32`` is over ``fp32`` on the same runtime. Everyone calibrates on the
same images and runs on the same thread count.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (CallableSession, Candidate, build, file_bytes, ir_bytes, predict,
                     print_table, setup_logging, step, time_interleaved, to_row, torch_bytes,
                     write_results)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchslim.data import DataBundle, calibration_subset, load_data
from torchslim.evaluation.latency import tile_batch
from torchslim.evaluation.metrics import agreement, topk_accuracy
from torchslim.exporters import export_onnx, export_openvino
from torchslim.pipeline.teacher import QUICK_TEACHER, TeacherRecipe, get_teacher
from torchslim.runtime import OnnxRuntimeSession, OpenVinoSession, TorchSession
from torchslim.train import TrainConfig
from torchslim.zoo import build_model

FASHION_MODELS = ("fashion-teacher", "fashion-mbv2")
TV_MODELS = {"resnet18": "tv:resnet18", "mobilenet_v2": "tv:mobilenet_v2"}
TV_INPUT = (3, 224, 224)
MBV2_RECIPE = TeacherRecipe(model="mobilenetv2", model_kwargs={},
                            train=TrainConfig(epochs=2, lr=0.1))
QUICK_MBV2_RECIPE = TeacherRecipe(model="mobilenetv2", model_kwargs={},
                                  train=TrainConfig(epochs=1, lr=0.05), train_limit=2000)
TORCH_BYTES_NOTE = ("bytes: torch.save size (in memory) of the state dict, or for an exported "
                    "graph of the constants it reads; a torch-runtime row has no artifact file")


@dataclass
class Context:
    """One model under test and everything each method needs to quantize it."""

    name: str
    model: nn.Module
    input_shape: tuple[int, ...]
    calib: np.ndarray            # (N, *input_shape) float32: the same images for every method
    workdir: Path
    threads: int
    data: DataBundle | None      # Fashion-MNIST models only (QAT trains on it)
    qat_epochs: int = 2
    qat_steps: int | None = None  # cap on training steps per QAT epoch (None: whole epoch)

    @property
    def onnx(self) -> Path:
        return self.workdir / "fp32.onnx"

    @property
    def xml(self) -> Path:
        return self.workdir / "fp32.xml"

    def calib_loader(self, batch_size: int = 32) -> DataLoader:
        x = torch.from_numpy(self.calib)
        return DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)),
                          batch_size=batch_size, shuffle=False)

    def calib_batches(self, batch_size: int = 32) -> list[np.ndarray]:
        return [self.calib[i:i + batch_size] for i in range(0, len(self.calib), batch_size)]


# ---------------------------------------------------------------- fp32 baselines

def fp32_torch(ctx: Context) -> dict[str, Any]:
    model = copy.deepcopy(ctx.model).eval()
    return {"torch": TorchSession(model, threads=ctx.threads), "bytes": torch_bytes(model),
            "seconds": None, "note": TORCH_BYTES_NOTE}


def fp32_onnx(ctx: Context) -> dict[str, Any]:
    export_onnx(ctx.model, ctx.onnx, input_shape=ctx.input_shape)
    export_openvino(ctx.onnx, ctx.xml)
    return {"onnxruntime": OnnxRuntimeSession(ctx.onnx, threads=ctx.threads),
            "openvino": OpenVinoSession(ctx.xml, threads=ctx.threads),
            "bytes:onnxruntime": file_bytes(ctx.onnx), "bytes:openvino": ir_bytes(ctx.xml),
            "seconds": None, "note:openvino": "IR converted from the same ONNX file"}


# ---------------------------------------------------------------- torchslim

def _qdq_sessions(ctx: Context, prepared: nn.Module, stem: str, seconds: float,
                  openvino: bool) -> dict[str, Any]:
    """The QDQ export, then runtime-aware placement for each runtime (timed on that runtime,
    batch 32): ``seconds`` includes it, the notes say what it kept."""
    from torchslim.exporters.placement import place_for_runtime
    from torchslim.exporters.qdq import export_qdq

    t0 = time.perf_counter()
    path = export_qdq(prepared, ctx.workdir / f"{stem}.onnx", input_shape=ctx.input_shape)
    placed = place_for_runtime(path, ctx.workdir / f"{stem}_ort.onnx", runtime="onnxruntime",
                               threads=ctx.threads)
    out: dict[str, Any] = {"onnxruntime": OnnxRuntimeSession(placed.path, threads=ctx.threads),
                           "bytes:onnxruntime": file_bytes(placed.path),
                           "note:onnxruntime": _placement_note(placed),
                           "details:onnxruntime": {"placement": placed.to_dict()}}
    if openvino:
        placed_ov = place_for_runtime(path, ctx.workdir / f"{stem}_ov.onnx", runtime="openvino",
                                      threads=ctx.threads)
        xml = export_openvino(placed_ov.path, ctx.workdir / f"{stem}.xml")
        out.update({"openvino": OpenVinoSession(xml, threads=ctx.threads),
                    "bytes:openvino": ir_bytes(xml),
                    "note:openvino": "IR converted from the QDQ ONNX; "
                                     + _placement_note(placed_ov),
                    "details:openvino": {"placement": placed_ov.to_dict()}})
    out["seconds"] = seconds + time.perf_counter() - t0
    return out


def _placement_note(placed: Any) -> str:
    if not placed.kept:
        return f"placement: {placed.note}"
    kept = ", ".join(f"{node} as {variant}" for node, variant in placed.kept)
    return f"placement kept {kept} ({placed.speedup:.3f}x at batch {placed.batch})"


def torchslim_ptq(ctx: Context) -> dict[str, Any]:
    from torchslim.quant.api import quantize
    from torchslim.quant.config import QuantConfig

    t0 = time.perf_counter()
    calibration = ctx.calib_loader()
    prepared = quantize(ctx.model, QuantConfig(), calibration=calibration,
                        num_batches=len(calibration))
    return _qdq_sessions(ctx, prepared, "torchslim_ptq", time.perf_counter() - t0, openvino=True)


def _qat_train_config(ctx: Context) -> TrainConfig:
    # qat()'s own default schedule (2 epochs, cosine from lr 1e-3), on the bench's threads
    return TrainConfig(epochs=ctx.qat_epochs, lr=1e-3, schedule="cosine", threads=ctx.threads,
                       max_steps_per_epoch=ctx.qat_steps)


def _torchslim_qat(ctx: Context, weight_bits: int, stem: str) -> dict[str, Any]:
    from torchslim.quant.api import qat
    from torchslim.quant.config import QuantConfig

    assert ctx.data is not None
    config = QuantConfig() if weight_bits == 8 else \
        QuantConfig.from_dict({"weight": {"bits": weight_bits}})
    calibration = ctx.calib_loader()
    t0 = time.perf_counter()
    trained = qat(ctx.model, ctx.data.train, config=config, train_config=_qat_train_config(ctx),
                  calibration=calibration, num_calib_batches=len(calibration))
    out = _qdq_sessions(ctx, trained.eval(), stem, time.perf_counter() - t0, openvino=False)
    tc = _qat_train_config(ctx)
    out["note:onnxruntime"] = (f"seconds include QAT fine-tuning: {tc.epochs} epochs, lr "
                               f"{tc.lr} {tc.schedule}, steps/epoch cap "
                               f"{tc.max_steps_per_epoch}; {out['note:onnxruntime']}")
    return out


def torchslim_qat_w8(ctx: Context) -> dict[str, Any]:
    return _torchslim_qat(ctx, 8, "torchslim_qat")


def torchslim_qat_w4a8(ctx: Context) -> dict[str, Any]:
    return _torchslim_qat(ctx, 4, "torchslim_qat_w4a8")


# ---------------------------------------------------------------- ONNX Runtime quantize_static

def _ort_reader(ctx: Context) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(ctx.calib_batches())

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {"input": batch}

    return Reader()


def _ort_static(ctx: Context, stem: str, *, qdq: bool, entropy: bool) -> dict[str, Any]:
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    t0 = time.perf_counter()
    pre = ctx.workdir / f"{stem}_pre.onnx"
    quant_pre_process(str(ctx.onnx), str(pre))
    out = ctx.workdir / f"{stem}.onnx"
    method = CalibrationMethod.Entropy if entropy else CalibrationMethod.MinMax
    kwargs: dict[str, Any] = {"calibration_data_reader": _ort_reader(ctx)}
    note = "quant_pre_process, then u8 activations / s8 per-channel weights"
    if entropy:
        # quantize_static forwards no histogram options to its calibrator, and with the
        # default 128 bins / 128 quantized bins entropy has one candidate: the MinMax range.
        # So calibrate with ORT's own EntropyCalibrater at TensorRT's 2048/128 bins and
        # hand the ranges to quantize_static through its calibration cache.
        cache = ctx.workdir / f"{stem}_ranges.json"
        with tempfile.TemporaryDirectory() as tmp:
            calibrator = create_calibrator(
                pre, None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=method,
                extra_options={"num_bins": 2048, "num_quantized_bins": 128})
            calibrator.collect_data(_ort_reader(ctx))
            with contextlib.redirect_stdout(io.StringIO()):  # it prints a banner per tensor
                ranges = calibrator.compute_data()
            save_tensors_data(ranges, cache)
        kwargs = {"calibration_cache_path": cache}
        note += "; entropy over 2048-bin histograms, 128 quantized bins"
    quantize_static(str(pre), str(out), quant_format=QuantFormat.QDQ if qdq
                    else QuantFormat.QOperator, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=method, **kwargs)
    return {"onnxruntime": OnnxRuntimeSession(out, threads=ctx.threads),
            "bytes": file_bytes(out), "seconds": time.perf_counter() - t0, "note": note}


def ort_qdq_minmax(ctx: Context) -> dict[str, Any]:
    return _ort_static(ctx, "ort_qdq_minmax", qdq=True, entropy=False)


def ort_qdq_entropy(ctx: Context) -> dict[str, Any]:
    return _ort_static(ctx, "ort_qdq_entropy", qdq=True, entropy=True)


def ort_qop_minmax(ctx: Context) -> dict[str, Any]:
    return _ort_static(ctx, "ort_qop_minmax", qdq=False, entropy=False)


# ---------------------------------------------------------------- NNCF -> OpenVINO

def nncf_openvino(ctx: Context) -> dict[str, Any]:
    import nncf
    import openvino as ov

    t0 = time.perf_counter()
    model = ov.Core().read_model(str(ctx.xml))
    # one image per item: NNCF's statistics assume batch 1
    dataset = nncf.Dataset([ctx.calib[i:i + 1] for i in range(len(ctx.calib))])
    quantized = nncf.quantize(model, dataset, subset_size=len(ctx.calib))
    xml = ctx.workdir / "nncf.xml"
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    return {"openvino": OpenVinoSession(xml, threads=ctx.threads), "bytes": ir_bytes(xml),
            "seconds": time.perf_counter() - t0,
            "note": "nncf.quantize defaults (preset performance) on the fp32 IR"}


# ---------------------------------------------------------------- PyTorch peers

def _calibrate(module: Callable[[torch.Tensor], Any], ctx: Context) -> None:
    with torch.no_grad():
        for batch in ctx.calib_batches():
            module(torch.from_numpy(batch))


def _compile_warm(session: CallableSession, ctx: Context) -> float:
    """Compile for the two batch sizes the bench uses, through the session itself (its
    tensors' dispatch keys are part of dynamo's guards); returns the seconds it took."""
    t0 = time.perf_counter()
    for b in (1, 32):
        session.run(tile_batch(ctx.calib, b))
    return time.perf_counter() - t0


def torchao_pt2e(ctx: Context) -> dict[str, Any]:
    import torch._inductor.config as inductor_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    torch.set_num_threads(ctx.threads)
    t0 = time.perf_counter()
    model = copy.deepcopy(ctx.model).eval()
    example = (torch.from_numpy(ctx.calib[:32]),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # strict=True: non-strict export trips X86InductorQuantizer on ResNet-18 (DESIGN.md)
    exported = torch.export.export(model, example, dynamic_shapes=({0: batch},), strict=True)
    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported.module(), quantizer)
    _calibrate(prepared, ctx)
    converted = convert_pt2e(prepared)
    seconds = time.perf_counter() - t0
    inductor_config.freezing = True  # the int8 weights are constant-folded into the kernels
    # dynamic=False: one static graph per batch size (1 and 32, all the bench uses); the
    # dynamic-batch graph trips a stride assertion in inductor's int8 conv lowering
    session = CallableSession(torch.compile(converted, dynamic=False), threads=ctx.threads,
                              precision="int8")
    compile_s = _compile_warm(session, ctx)
    return {"torch": session,
            "bytes": torch_bytes(converted), "seconds": seconds,
            "note": f"torch.compile (freezing) took {compile_s:.1f} s more; {TORCH_BYTES_NOTE}"}


def torch_fx_x86(ctx: Context) -> dict[str, Any]:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    t0 = time.perf_counter()
    model = copy.deepcopy(ctx.model).eval()
    example = (torch.from_numpy(ctx.calib[:1]),)
    prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), example_inputs=example)
    _calibrate(prepared, ctx)
    converted = convert_fx(prepared)
    return {"torch": TorchSession(converted, threads=ctx.threads, precision="int8"),
            "bytes": torch_bytes(converted), "seconds": time.perf_counter() - t0,
            "note": TORCH_BYTES_NOTE}


# (method, runtimes, build function, Fashion-MNIST models only); rows appear in this order
METHODS: list[tuple[str, tuple[str, ...], Callable[[Context], dict[str, Any]], bool]] = [
    ("fp32", ("torch",), fp32_torch, False),
    ("fp32", ("onnxruntime", "openvino"), fp32_onnx, False),
    ("torchslim-ptq", ("onnxruntime", "openvino"), torchslim_ptq, False),
    ("torchslim-qat", ("onnxruntime",), torchslim_qat_w8, True),
    ("torchslim-qat-w4a8", ("onnxruntime",), torchslim_qat_w4a8, True),
    ("ort-qdq-minmax", ("onnxruntime",), ort_qdq_minmax, False),
    ("ort-qdq-entropy", ("onnxruntime",), ort_qdq_entropy, False),
    ("ort-qop-minmax", ("onnxruntime",), ort_qop_minmax, False),
    ("nncf", ("openvino",), nncf_openvino, False),
    ("torchao-pt2e", ("torch",), torchao_pt2e, False),
    ("torch-fx-x86", ("torch",), torch_fx_x86, False),
]


# ---------------------------------------------------------------- models and the run

def stack_images(loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in loader))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def load_model(name: str, data: DataBundle | Exception | None, quick: bool) -> nn.Module:
    if name in TV_MODELS:
        torch.manual_seed(0)
        return build_model(TV_MODELS[name], input_size=224, in_channels=3,
                           num_classes=1000).eval()
    if not isinstance(data, DataBundle):  # the dataset failed to load: say why in each row
        raise data or ValueError("no Fashion-MNIST data loaded")
    if name == "fashion-teacher":
        recipe = QUICK_TEACHER if quick else TeacherRecipe()
    else:  # fashion-mbv2: the zoo MobileNetV2 trained briefly, cached like the teacher
        recipe = QUICK_MBV2_RECIPE if quick else MBV2_RECIPE
    with step(f"getting {name} (trained once, then cached)"):
        model, _, _ = get_teacher(recipe, data)
    return model.eval()


def candidates_for(name: str) -> list[tuple[list[Candidate], Callable[[Context], dict]]]:
    fashion = name in FASHION_MODELS
    return [([Candidate(name, method, rt) for rt in runtimes], fn)
            for method, runtimes, fn, fashion_only in METHODS if fashion or not fashion_only]


def score(candidates: list[Candidate], images: np.ndarray, labels: np.ndarray) -> None:
    """top-1 on each candidate's own runtime; agreement with the torch fp32 logits."""
    reference = None
    for c in candidates:
        if c.session is None:
            continue
        try:
            with step(f"scoring {c.model}/{c.method}/{c.runtime} on {len(labels)} test images"):
                logits = predict(c.session, images)
        except Exception as e:
            c.fail(e)
            continue
        if reference is None and (c.method, c.runtime) == ("fp32", "torch"):
            reference = logits
        c.top1 = topk_accuracy(logits, labels, 1)
        c.agreement = agreement(reference, logits) if reference is not None else None


def run_model(name: str, args: argparse.Namespace, data: DataBundle | Exception | None,
              workdir: Path) -> list[dict[str, Any]]:
    fashion = name in FASHION_MODELS
    groups = candidates_for(name)
    everyone = [c for cands, _ in groups for c in cands]
    try:
        model = load_model(name, data, args.quick)
    except Exception as e:  # no model: every row of it carries the reason
        for c in everyone:
            c.fail(e)
        return [to_row(c, None) for c in everyone]
    if fashion and isinstance(data, DataBundle):  # data is loaded when any model needs it
        calib, _ = stack_images(calibration_subset(data, args.calib))
        images, labels = stack_images(data.test)
        samples = images[:32]
    else:  # random weights: latency and size only; synthetic images, the same for all
        rng = np.random.default_rng(0)
        calib = rng.standard_normal((args.calib, *TV_INPUT), dtype=np.float32)
        samples = rng.standard_normal((32, *TV_INPUT), dtype=np.float32)
    ctx = Context(name=name, model=model, input_shape=tuple(calib.shape[1:]), calib=calib,
                  workdir=workdir / name, threads=args.threads,
                  data=data if isinstance(data, DataBundle) else None,
                  qat_epochs=args.qat_epochs,
                  qat_steps=args.qat_steps)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    for cands, fn in groups:
        build(cands, lambda fn=fn: fn(ctx))
    if fashion:
        score(everyone, images, labels)
    with step(f"timing {sum(c.session is not None for c in everyone)} artifacts of {name} "
              f"interleaved, {args.repeats} rounds"):
        time_interleaved(everyone, samples, repeats=args.repeats)
    baselines = {c.runtime: c for c in everyone if c.method == "fp32"}
    rows = [to_row(c, baselines.get(c.runtime)) for c in everyone]
    for c in everyone:
        c.session = None
    torch._dynamo.reset()
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/quant_peers.json"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default=None,
                   help="comma-separated; default: fashion-teacher,fashion-mbv2,resnet18,"
                        "mobilenet_v2 (--quick: fashion-teacher)")
    p.add_argument("--calib", type=int, default=None,
                   help="calibration images, the same for every method (default 256; quick 32)")
    p.add_argument("--repeats", type=int, default=None,
                   help="interleaved timing rounds (default 20; quick 3)")
    p.add_argument("--test-limit", type=int, default=None,
                   help="Fashion-MNIST test images scored (default all 10000; quick 500)")
    p.add_argument("--qat-epochs", type=int, default=2,
                   help="QAT fine-tuning epochs on the training split (torchslim's default 2)")
    p.add_argument("--qat-steps", type=int, default=None,
                   help="cap on training steps (batches of 128) per QAT epoch; default: the "
                        "whole training split")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where artifacts are written (default: a temporary directory)")
    p.add_argument("--quick", action="store_true",
                   help="small teacher, few images and rounds: checks that every row appears")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.models = args.models or ("fashion-teacher" if args.quick
                                  else "fashion-teacher,fashion-mbv2,resnet18,mobilenet_v2")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - set(FASHION_MODELS) - set(TV_MODELS))
    if unknown:
        p.error(f"unknown models {unknown}; choose from "
                f"{', '.join((*FASHION_MODELS, *TV_MODELS))}")
    args.calib = args.calib or (32 if args.quick else 256)
    args.repeats = args.repeats or (3 if args.quick else 20)
    args.test_limit = args.test_limit or (500 if args.quick else None)
    args.qat_steps = args.qat_steps or (10 if args.quick else None)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    torch.set_num_threads(args.threads)
    data: DataBundle | Exception | None = None
    if any(m in FASHION_MODELS for m in args.models):
        train_limit = QUICK_TEACHER.train_limit if args.quick else None
        try:
            data = load_data("fashion-mnist", train_limit=train_limit,
                             test_limit=args.test_limit)
        except Exception as e:  # e.g. the dataset is not installed: rows with the reason
            data = e
    rows: list[dict[str, Any]] = []
    settings = {"calibration_images": args.calib, "repeats": args.repeats,
                "test_images": len(data.test.dataset) if isinstance(data, DataBundle) else None,
                "qat_epochs": args.qat_epochs, "qat_steps_per_epoch": args.qat_steps,
                "quick": args.quick, "batch_sizes": [1, 32]}
    with tempfile.TemporaryDirectory(prefix="quant_peers.") as tmp:
        workdir = args.workdir or Path(tmp)
        for name in args.models:
            with step(f"model {name}"):
                rows += run_model(name, args, data, workdir)
            write_results(args.out, "quant_peers", args.threads, rows, settings=settings)
    print_table(rows, f"quant_peers ({args.threads} threads; speed-up over fp32 on the "
                      "same runtime)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
