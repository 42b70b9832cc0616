"""Which channel layouts make a pruned model fast on ONNX Runtime (issue 4)?

    python bench/prune_layout.py                 # default teacher, ~1 minute after caching

At a fixed MAC budget (half the default teacher's), the speed-up on ONNX Runtime depends
on the channel counts: its x86 FP32 convolutions use a blocked NCHWc layout whose block is
16 channels on AVX-512, and a convolution whose output channels are not a multiple of the
block falls back to a slower path. This bench builds several 2x-MAC layouts of the same
trained teacher (weights from l2 importance, no fine-tuning: speed does not depend on it),
exports each to ONNX and times all of them, FP32 and INT8 (static PTQ, QDQ), in one
interleaved ONNX Runtime loop with the unpruned teacher. ``--profile`` adds the per-stage
kernel time from ONNX Runtime's profiler, to show where the time goes.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (Candidate, file_bytes, print_table, setup_logging, step,
                     time_interleaved, to_row, write_results)
from torch import nn

from torchslim.data import calibration_subset, load_data
from torchslim.evaluation.model_stats import count_macs
from torchslim.exporters import export_onnx, export_qdq
from torchslim.pipeline.teacher import TeacherRecipe, get_teacher
from torchslim.prune import ChannelPruneConfig, prune_channels_
from torchslim.quant.api import quantize
from torchslim.quant.config import QuantConfig
from torchslim.runtime import open as open_session

SHAPE = (1, 28, 28)
# the default teacher's (ResNet-14 w16) channel groups and their sizes
GROUPS = ("conv1", "layer1.0.conv1", "layer1.1.conv1", "layer2.0.shortcut.0",
          "layer2.0.conv1", "layer2.1.conv1", "layer3.0.shortcut.0", "layer3.0.conv1",
          "layer3.1.conv1")
SIZES = (16, 16, 16, 32, 32, 32, 64, 64, 64)
# hand-made layouts near half the MACs: kept channels per group, in GROUPS order
# (stage-1 residual, its two block mids, stage-2 residual, mids, stage-3 residual, mids)
LAYOUTS = {
    "stem8-mid16": (8, 16, 16, 32, 16, 16, 64, 32, 32),
    "stage1-mid8": (16, 8, 8, 32, 16, 16, 48, 32, 32),
    "stage1-8": (8, 8, 8, 32, 32, 32, 64, 32, 32),
}


def _pruned(teacher: nn.Module, cfg: ChannelPruneConfig) -> nn.Module:
    model = copy.deepcopy(teacher)
    prune_channels_(model, cfg, example_inputs=torch.zeros(2, *SHAPE))
    return model.eval()


def layouts(teacher: nn.Module) -> dict[str, nn.Module]:
    out = {f"global-round{r}": _pruned(teacher, ChannelPruneConfig(target_macs=0.5, round_to=r))
           for r in (8, 16)}
    for name, keep in LAYOUTS.items():
        ratios = {g: 1 - k / s for g, k, s in zip(GROUPS, keep, SIZES)}
        out[name] = _pruned(teacher, ChannelPruneConfig(ratios=ratios))
    return out


def stage_profile(path: Path, batch: np.ndarray, threads: int, runs: int = 20) -> dict[str, float]:
    """Mean kernel microseconds per run, summed by the top-level module of each node."""
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.enable_profiling, opts.profile_file_prefix = True, str(Path(tmp) / "p")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: batch}
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    stages: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            top = e["name"].lstrip("/").split("/")[0] or "other"
            stages[top if top.startswith(("layer", "fc")) else "stem+other"] += e["dur"] / runs
    return {k: round(v, 1) for k, v in sorted(stages.items())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/prune_layout.json"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--profile", action="store_true", help="per-stage ONNX Runtime kernel time")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    torch.set_num_threads(args.threads)
    data = load_data("fashion-mnist", train_limit=2048)
    teacher, _, _ = get_teacher(TeacherRecipe(), data)
    teacher.eval()
    calib = calibration_subset(data.train, 512)
    images = np.concatenate([x.numpy() for x, _ in data.test][:2])[:32].astype(np.float32)
    base_macs = count_macs(teacher, SHAPE)
    cands: list[tuple[Candidate, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="prune_layout.") as tmp:
        models = {"unpruned": teacher, **layouts(teacher)}
        with step("exporting FP32 and INT8 artifacts"):
            for name, model in models.items():
                shapes = {n: m.out_channels for n, m in model.named_modules()
                          if isinstance(m, nn.Conv2d)}
                extra = {"mac_ratio": round(count_macs(model, SHAPE) / base_macs, 3),
                         "out_channels": shapes}
                for precision in ("fp32", "int8"):
                    path = Path(tmp) / f"{name}-{precision}.onnx"
                    if precision == "fp32":
                        export_onnx(model, path, input_shape=SHAPE)
                    else:
                        export_qdq(quantize(model, QuantConfig(), calibration=calib), path,
                                   input_shape=SHAPE)
                    c = Candidate("fashion-teacher", f"{name}-{precision}", "onnxruntime",
                                  session=open_session(path, threads=args.threads),
                                  bytes=file_bytes(path))
                    row_extra = {**extra, "precision": precision}
                    if args.profile:
                        row_extra["stage_us_b32"] = stage_profile(
                            path, np.repeat(images[:32], 1, 0), args.threads)
                    cands.append((c, row_extra))
        with step("timing every layout, interleaved"):
            time_interleaved([c for c, _ in cands], images, repeats=args.repeats)
    base = {prec: next(c for c, e in cands if c.method == f"unpruned-{prec}")
            for prec in ("fp32", "int8")}
    rows = []
    for c, extra in cands:
        row = {**to_row(c, base[extra["precision"]]), **extra}
        row["speedup_b32_vs_fp32"] = (round(base["fp32"].p50_ms[32] / c.p50_ms[32], 3)
                                      if c.p50_ms.get(32) else None)
        rows.append(row)
    write_results(args.out, "prune_layout", args.threads, rows,
                  settings={"repeats": args.repeats, "target_macs": 0.5,
                            "speedup_b32": "over the unpruned model of the same precision"})
    print_table(rows, f"prune_layout ({args.threads} threads, ONNX Runtime, batch 1 / 32)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
