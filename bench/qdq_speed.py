"""torchslim's QDQ export against ONNX Runtime's own quantizer, on ONNX Runtime.

torchvision ResNet-18 (random weights) at 3x224x224, 2 threads: FP32 ONNX, torchslim PTQ
exported with ``export_qdq``, and ``onnxruntime.quantization.quantize_static`` (u8
activations / s8 per-channel weights, MinMax) as QDQ and as QOperator, all calibrated on
the same images and timed in one interleaved loop at batch 1 and 32.

    python bench/qdq_speed.py            # writes bench/results/qdq_speed.json
    python bench/qdq_speed.py --quick    # fewer rounds

Each row also says which ops ONNX Runtime ran (``fused_ops``: the optimized graph's op
counts), the agreement of its predictions with the fake-quant PyTorch model (torchslim)
or with the FP32 PyTorch model (the others), the fastest round (``min_ms_b*``) and the
median of the speed-ups over FP32 taken within each round (``paired_speedup_b*``).
"""

from __future__ import annotations

import argparse
import operator
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from _common import (Candidate, build, print_table, setup_logging, step, time_interleaved,
                     to_row, write_results)

from torchslim.exporters import export_onnx
from torchslim.exporters.qdq import export_qdq, ort_fused_ops
from torchslim.runtime.onnxruntime import OnnxRuntimeSession

MODEL = "resnet18"
INPUT_SHAPE = (3, 224, 224)
SUMMARY_OPS = ("QLinearConv", "Conv", "FusedConv", "QLinearAdd", "Add",
               "QLinearGlobalAveragePool", "QGemm", "Gemm", "QuantizeLinear", "DequantizeLinear")


def calibration_images(n: int, seed: int = 0) -> np.ndarray:
    """``n`` smooth random images (ImageNet-normalised scale), the same for every method."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, 28, 28, generator=g)
    x = nn.functional.interpolate(low, size=INPUT_SHAPE[1:], mode="bilinear", align_corners=False)
    return (x + 0.3 * torch.randn(x.shape, generator=g)).numpy().astype(np.float32)


def float_model() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


# --- torchslim ---------------------------------------------------------------------


def prepare_torchslim(model: nn.Module, images: np.ndarray, placement: str
                      ) -> tuple[nn.Module, str]:
    """``quantize(model, QuantConfig(), calibration=...)`` (u8 per-tensor activations, s8
    per-channel weights, MinMax); ``placement="private"`` (or "auto" while the library's
    preparation is not importable) uses this script's own placement pass instead."""
    loader = [torch.from_numpy(images[i:i + 8]) for i in range(0, len(images), 8)]
    if placement != "private":
        try:
            from torchslim.quant.api import quantize
            from torchslim.quant.config import QuantConfig
        except ImportError:
            if placement == "library":
                raise
        else:
            return quantize(model, QuantConfig(), calibration=loader), "torchslim.quant.quantize"
    return _private_prepare(model, loader), "bench-private placement pass"


def _private_prepare(model: nn.Module, loader: list[torch.Tensor]) -> nn.Module:
    """Fold BN, swap Conv/Linear for Quant* modules and place activation quantizers as the
    preparation contract says: input, after each conv (after its ReLU), after each add
    (after its ReLU), after average pooling; not on the logits."""
    from torch import fx
    from torch.fx.experimental.optimization import fuse

    from torchslim.quant import FakeQuantize, QuantSpec
    from torchslim.quant.modules import QUANT_MODULES, to_quant_module

    act = QuantSpec(bits=8, signed=False, symmetric=False)
    wspec = QuantSpec(bits=8, granularity="per_channel", axis=0)
    gm = fuse(model)  # fx trace + Conv/BN folding
    for name, m in list(gm.named_modules()):
        if type(m) in QUANT_MODULES:
            parent, _, attr = name.rpartition(".")
            setattr(gm.get_submodule(parent), attr, to_quant_module(m, FakeQuantize(wspec)))
    modules = dict(gm.named_modules())

    def is_relu(n: fx.Node) -> bool:
        return ((n.op == "call_module" and isinstance(modules.get(n.target), nn.ReLU))
                or (n.op == "call_function" and n.target in (torch.relu, nn.functional.relu)))

    def needs_fq(n: fx.Node) -> bool:
        if n.op == "call_module":
            return isinstance(modules.get(n.target), (nn.Conv2d, nn.AdaptiveAvgPool2d))
        return n.op == "placeholder" or (
            n.op == "call_function" and n.target in (torch.add, operator.add, operator.iadd))

    count = 0
    for node in list(gm.graph.nodes):
        if not needs_fq(node):
            continue
        at = node
        users = list(at.users)
        if len(users) == 1 and is_relu(users[0]):
            at = users[0]
        name = f"act_fq_{count}"
        count += 1
        gm.add_submodule(name, FakeQuantize(act))
        with gm.graph.inserting_after(at):
            fq = gm.graph.call_module(name, (at,))
        at.replace_all_uses_with(fq)
        fq.args = (at,)
    gm.graph.lint()
    gm.recompile()
    fqs = [m for m in gm.modules() if isinstance(m, FakeQuantize)]
    for m in fqs:
        m.enable_fake_quant(False)
    with torch.no_grad():
        for xb in loader:
            gm(xb)
    for m in fqs:
        m.enable_observer(False)
        m.enable_fake_quant(True)
    return gm


# --- onnxruntime.quantization ------------------------------------------------------


def ort_quantize(fp32: Path, out: Path, images: np.ndarray, fmt: str) -> Path:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod,
                                          QuantFormat, QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": images[i:i + 8]} for i in range(0, len(images), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    # ORT's recommended pre-processing (shape inference + graph cleanup); without it the
    # torch export's Constant-node biases are left in float.
    pre = out.with_name(out.stem + "_pre.onnx")
    if not pre.exists():
        quant_pre_process(str(fp32), str(pre))
    quantize_static(str(pre), str(out), Reader(),
                    quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True, calibrate_method=CalibrationMethod.MinMax)
    return out


# --- timing --------------------------------------------------------------------------


def paired_ratio(times: dict[tuple[str, int], list[float]], num: str, den: str,
                 b: int) -> float | None:
    """Median over rounds of ``time(num) / time(den)`` within each round."""
    a, d = times.get((num, b)), times.get((den, b))
    if not a or not d or len(a) != len(d):
        return None
    return round(float(np.median(np.array(a) / np.array(d))), 3)


# --- the run -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/qdq_speed.json")
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calib", type=int, default=32, help="calibration images")
    parser.add_argument("--placement", choices=("auto", "library", "private"), default="auto",
                        help="who places the activation quantizers (auto: the library if present)")
    parser.add_argument("--repeats", type=int, default=None, help="timing rounds")
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    images = calibration_images(args.calib)
    work = Path(tempfile.mkdtemp(prefix="qdq_speed_"))
    model = float_model()
    with torch.no_grad():
        ref_logits = model(torch.from_numpy(images)).numpy()

    fp32_path = work / "fp32.onnx"
    cands = {m: Candidate(MODEL, m, "onnxruntime") for m in
             ("fp32", "torchslim-ptq", "ort-qdq-minmax", "ort-qop-minmax")}
    extra: dict[str, dict[str, Any]] = {m: {} for m in cands}
    fq_logits: np.ndarray | None = None

    def session(path: Path, method: str) -> dict[str, Any]:
        extra[method]["fused_ops"] = dict(ort_fused_ops(path))
        return {"onnxruntime": OnnxRuntimeSession(path, threads=args.threads),
                "bytes": path.stat().st_size}

    build([cands["fp32"]], lambda: session(export_onnx(model, fp32_path, input_shape=INPUT_SHAPE),
                                           "fp32"))

    def torchslim_ptq() -> dict[str, Any]:
        nonlocal fq_logits
        t0 = time.perf_counter()
        prepared, how = prepare_torchslim(float_model(), images, args.placement)
        path = export_qdq(prepared, work / "torchslim.onnx", input_shape=INPUT_SHAPE)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            fq_logits = prepared(torch.from_numpy(images)).numpy()
        return {**session(path, "torchslim-ptq"), "seconds": seconds, "note": f"prepared by {how}"}

    build([cands["torchslim-ptq"]], torchslim_ptq)
    for method, fmt in (("ort-qdq-minmax", "qdq"), ("ort-qop-minmax", "qop")):
        build([cands[method]], lambda method=method, fmt=fmt: session(
            ort_quantize(fp32_path, work / f"{method}.onnx", images, fmt), method))
        cands[method].note = "quant_pre_process + quantize_static(u8 act, s8 per-channel)"

    for c in cands.values():
        if c.session is None:
            continue
        logits = c.session.run(images)
        ref = fq_logits if c.method == "torchslim-ptq" and fq_logits is not None else ref_logits
        c.agreement = float((logits.argmax(1) == ref.argmax(1)).mean())
        extra[c.method]["max_abs_logit_diff"] = round(float(np.abs(logits - ref).max()), 5)
        extra[c.method]["agreement_with"] = ("fake-quant-torch" if ref is fq_logits
                                             else "fp32-torch")

    repeats = args.repeats or (4 if args.quick else 12)
    with step(f"timing {len(cands)} candidates, {repeats} interleaved rounds"):
        by_key = time_interleaved(list(cands.values()), images, batch_sizes=(1, 32),
                                  repeats=repeats)
    times = {(key[1], b): v for (key, b), v in by_key.items()}  # one model: method is unique

    base = cands["fp32"]
    rows = []
    for c in cands.values():
        row = to_row(c, base)
        if base.p50_ms.get(1) and c.p50_ms.get(1):
            row["speedup_b1"] = round(base.p50_ms[1] / c.p50_ms[1], 3)
        for b in (1, 32):
            row[f"min_ms_b{b}"] = (round(min(times[(c.method, b)]), 3)
                                   if (c.method, b) in times else None)
            row[f"paired_speedup_b{b}"] = paired_ratio(times, "fp32", c.method, b)
        fused = extra[c.method].pop("fused_ops", {})
        row.update(extra[c.method])
        row["fused_ops"] = {k: fused[k] for k in SUMMARY_OPS if k in fused}
        rows.append(row)
    ours = cands["torchslim-ptq"].p50_ms.get(32)
    peers = {m: cands[m].p50_ms.get(32) for m in ("ort-qdq-minmax", "ort-qop-minmax")
             if cands[m].p50_ms.get(32)}
    fastest = min(peers, key=peers.__getitem__) if peers else None
    summary = {
        "fastest_ort_b32": fastest,
        # time ratio (< 1: torchslim faster); p50 over p50, and the median of per-round ratios
        "torchslim_over_fastest_ort_b32": round(ours / peers[fastest], 3)
        if ours and fastest else None,
        "torchslim_over_fastest_ort_b32_paired": paired_ratio(times, "torchslim-ptq", fastest, 32)
        if fastest else None,
        "torchslim_over_fp32_speedup_b32_paired": paired_ratio(times, "fp32", "torchslim-ptq", 32),
    }
    rounds_ms = {f"{m}@b{b}": [round(t, 2) for t in v] for (m, b), v in times.items()}
    write_results(args.out, "qdq_speed", args.threads, rows, summary=summary,
                  calibration={"images": len(images), "kind": "smooth random normal"},
                  repeats=repeats, rounds_ms=rounds_ms)
    print_table(rows, f"{MODEL} on ONNX Runtime, {args.threads} threads")
    print({r["method"]: r["fused_ops"] for r in rows})
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
