"""torchslim structured pruning against Torch-Pruning and torch.nn.utils.prune (issue 4).

    python bench/prune_peers.py                        # 2x and 3x, 3 fine-tuning epochs each
    python bench/prune_peers.py --quick                # a smoke run on a data subset

The default teacher (cached, else trained) is pruned to 1/2 and 1/3 of its MACs by each
method, then every pruned model gets the SAME fine-tuning (epochs, lr, schedule, seed).
Top-1 is on the Fashion-MNIST test split, computed with ONNX Runtime on the exported
artifact. All artifacts are timed in one interleaved ONNX Runtime loop; ``speedup_b32`` is
the unpruned teacher's batch-32 time over the row's. MACs and parameters are counted on
the rewritten model (dense counts for the unstructured row, whose zeros save nothing on a
dense runtime; its ``nonzero_params`` says what was removed).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (Candidate, file_bytes, predict, setup_logging, step, time_interleaved,
                     to_row, write_results)
from torch import nn

from torchslim._io import write_json
from torchslim.data import DataBundle, load_data
from torchslim.evaluation.model_stats import count_macs, count_nonzero, count_params
from torchslim.exporters import export_onnx
from torchslim.pipeline.teacher import QUICK_TEACHER, TeacherRecipe, get_teacher
from torchslim.prune import (ChannelPruneConfig, RemovedBlock, group_sensitivity,
                             prune_channels_, sensitivity_ratios)
from torchslim.runtime import open as open_session
from torchslim.train import TrainConfig, fit

MODEL = "fashion-teacher"
IMPORTANCES = ("l1", "l2", "bn", "taylor")
SHAPE = (1, 28, 28)


def finetune_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, lr=args.lr, schedule="cosine", seed=0,
                       threads=args.train_threads or args.threads,
                       max_steps_per_epoch=args.max_steps)


def torchslim_method(importance: str, keep: float, args: argparse.Namespace,
                     data: DataBundle, round_to: int | None = None,
                     blocks: int | tuple[str, ...] = 0) -> Any:
    def run(model: nn.Module) -> nn.Module:
        cfg = ChannelPruneConfig(target_macs=keep, importance=importance,
                                 round_to=round_to or args.round_to, blocks=blocks)
        prune_channels_(model, cfg, example_inputs=torch.zeros(2, *SHAPE), data=data.train)
        return model
    return run


def sensitivity_method(keep: float, args: argparse.Namespace, data: DataBundle,
                       table: dict[str, Any]) -> Any:
    def run(model: nn.Module) -> nn.Module:
        x = torch.zeros(2, *SHAPE)
        if "table" not in table:
            table["table"] = group_sensitivity(model, x, _subset(data.val, args.sens_images))
        ratios = sensitivity_ratios(model, table["table"], example_inputs=x, target_macs=keep,
                                    round_to=args.round_to)
        prune_channels_(model, ChannelPruneConfig(ratios=ratios, round_to=args.round_to),
                        example_inputs=x)
        return model
    return run


def torch_pruning_method(keep: float) -> Any:
    """Torch-Pruning's MetaPruner with its magnitude (L2 group) importance; its uniform
    ``pruning_ratio`` is bisected so that the MACs match ours."""
    def run(model: nn.Module) -> nn.Module:
        import torch_pruning as tp
        x = torch.zeros(1, *SHAPE)
        base = count_macs(model, SHAPE)

        def pruned(ratio: float) -> nn.Module:
            m = copy.deepcopy(model)
            tp.pruner.MetaPruner(m, x, importance=tp.importance.MagnitudeImportance(p=2),
                                 pruning_ratio=ratio, ignored_layers=[m.fc]).step()
            return m
        lo, hi = 0.0, 0.95
        for _ in range(14):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if count_macs(pruned(mid), SHAPE) / base > keep else (lo, mid)
        return pruned(hi)
    return run


def unstructured_method(keep: float) -> Any:
    """torch.nn.utils.prune global L1 at the same share of weights; masks stay during
    fine-tuning (its reparametrisation) and are made permanent before export."""
    def run(model: nn.Module) -> nn.Module:
        import torch.nn.utils.prune as tprune
        params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=1 - keep)
        return model
    return run


def finalize_unstructured(model: nn.Module) -> None:
    import torch.nn.utils.prune as tprune
    for m in model.modules():
        if hasattr(m, "weight_mask"):
            tprune.remove(m, "weight")


def _subset(loader: Any, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out, seen = [], 0
    for x, y in loader:
        out.append((x, y))
        seen += len(y)
        if seen >= n:
            break
    return out


def build_row(name: str, reduction: int, prune: Any, teacher: nn.Module, data: DataBundle,
              args: argparse.Namespace, workdir: Path, images: np.ndarray,
              labels: np.ndarray) -> tuple[Candidate, dict[str, Any]]:
    """Prune, fine-tune, export and score one method; a finished row found in ``workdir``
    (artifact + its JSON) is reused, so an interrupted run continues where it stopped."""
    c = Candidate(MODEL, name, "onnxruntime")
    path, record = workdir / f"{name}-{reduction}x.onnx", workdir / f"{name}-{reduction}x.json"
    try:
        if path.is_file() and record.is_file():
            done = json.loads(record.read_text())
            c.session = open_session(path, threads=args.threads)
            c.bytes, c.seconds, c.top1 = done.pop("bytes"), done.pop("seconds"), done.pop("top1")
            return c, done
        extra: dict[str, Any] = {"mac_reduction": reduction}
        with step(f"{name} at {reduction}x"):
            t0 = time.perf_counter()
            model = prune(copy.deepcopy(teacher).train())
            pruned_s = time.perf_counter() - t0
            fit(model, data.train, config=finetune_config(args))
            if name == "torch-nn-prune-unstructured":
                finalize_unstructured(model)
            model.eval()
            export_onnx(model, path, input_shape=SHAPE)
            c.session = open_session(path, threads=args.threads)
            c.bytes, c.seconds = file_bytes(path), round(time.perf_counter() - t0, 1)
            c.top1 = float((predict(c.session, images).argmax(1) == labels).mean())
            extra.update(macs=count_macs(model, SHAPE), params=count_params(model),
                         removed_blocks=[n for n, m in model.named_modules()
                                         if isinstance(m, RemovedBlock)],
                         nonzero_params=count_nonzero(model), prune_seconds=round(pruned_s, 2))
            write_json(record, {**extra, "bytes": c.bytes, "seconds": c.seconds, "top1": c.top1})
        return c, extra
    except Exception as e:  # a failing method is a row with its error, never a crash
        c.fail(e)
        return c, {"mac_reduction": reduction}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/prune_peers.json"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reductions", default="2,3", help="MAC reductions, e.g. 2,3")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs, same for all")
    p.add_argument("--lr", type=float, default=0.02, help="fine-tuning peak lr (cosine)")
    p.add_argument("--round-to", type=int, default=8, help="torchslim channel multiple")
    p.add_argument("--sens-images", type=int, default=2000)
    p.add_argument("--methods", default=None, help="comma-separated subset of methods")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="cap fine-tuning steps/epoch")
    p.add_argument("--train-threads", type=int, default=None,
                   help="torch threads for fine-tuning (default: --threads)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep artifacts here; finished rows found there are reused")
    p.add_argument("--quick", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 15)
    if args.quick:
        args.max_steps, args.epochs, args.sens_images = args.max_steps or 5, 1, 256
        args.round_to = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    torch.set_num_threads(args.threads)
    data = load_data("fashion-mnist", train_limit=2000 if args.quick else None,
                     test_limit=500 if args.quick else None)
    teacher, _, _ = get_teacher(QUICK_TEACHER if args.quick else TeacherRecipe(), data)
    images = np.concatenate([x.numpy() for x, _ in data.test]).astype(np.float32)
    labels = np.concatenate([y.numpy() for _, y in data.test])
    sens_table: dict[str, Any] = {}
    candidates: list[tuple[Candidate, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="prune_peers.") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        base = Candidate(MODEL, "fp32", "onnxruntime")
        path = export_onnx(teacher.eval(), workdir / "fp32.onnx", input_shape=SHAPE)
        base.session, base.bytes = open_session(path, threads=args.threads), file_bytes(path)
        base.top1 = float((predict(base.session, images).argmax(1) == labels).mean())
        candidates.append((base, {"mac_reduction": 1, "macs": count_macs(teacher, SHAPE),
                                  "params": count_params(teacher),
                                  "nonzero_params": count_nonzero(teacher)}))
        wanted = set(args.methods.split(",")) if args.methods else None
        for reduction in (int(r) for r in args.reductions.split(",")):
            keep = 1 / reduction
            methods = {**{f"torchslim-{imp}": torchslim_method(imp, keep, args, data)
                          for imp in IMPORTANCES},
                       "torchslim-sensitivity": sensitivity_method(keep, args, data, sens_table),
                       "torch-pruning-magnitude": torch_pruning_method(keep),
                       "torch-nn-prune-unstructured": unstructured_method(keep)}
            if reduction == 2:  # channel counts in ONNX Runtime's AVX-512 NCHWc block of 16
                methods["torchslim-l2-round16"] = torchslim_method("l2", keep, args, data, 16)
                # and one residual block fewer: the one whose bypass costs least validation
                # loss, or the weaker block of the first stage, where ONNX Runtime spends
                # most of its time (bench/prune_layout.py --profile) and channels cannot go
                methods["torchslim-l2-depth-round16"] = torchslim_method("l2", keep, args, data,
                                                                         16, blocks=1)
                methods["torchslim-l2-layer1.1-round16"] = torchslim_method(
                    "l2", keep, args, data, 16, blocks=("layer1.1",))
            for name, fn in methods.items():
                if wanted and name not in wanted:
                    continue
                candidates.append(build_row(name, reduction, fn, teacher, data, args, workdir,
                                            images, labels))
                write_results(args.out, "prune_peers", args.threads, _rows(candidates, base),
                              settings=_settings(args, len(labels)))
        torch.set_num_threads(args.threads)
        with step("timing every artifact, interleaved"):
            time_interleaved([c for c, _ in candidates], images[:32], repeats=args.repeats)
    rows = _rows(candidates, base)
    write_results(args.out, "prune_peers", args.threads, rows, settings=_settings(args, len(labels)))
    _print(rows, args)
    print(f"wrote {args.out}")
    return 0


def _rows(candidates: list[tuple[Candidate, dict[str, Any]]], base: Candidate) -> list[dict[str, Any]]:
    rows = []
    for c, extra in candidates:
        row = to_row(c, base)
        row.update(extra)
        rows.append(row)
    return rows


def _settings(args: argparse.Namespace, test_images: int) -> dict[str, Any]:
    return {"finetune_epochs": args.epochs, "train_threads": args.train_threads or args.threads, "finetune_lr": args.lr, "schedule": "cosine",
            "round_to": args.round_to, "sensitivity_images": args.sens_images,
            "test_images": test_images, "repeats": args.repeats, "quick": args.quick,
            "max_steps_per_epoch": args.max_steps}


def _print(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"prune_peers ({args.threads} threads, ONNX Runtime, "
                        f"{args.epochs} fine-tuning epochs each)")
    for col in ("method", "x MACs", "MACs", "params", "top1", "p50 b1 ms", "p50 b32 ms",
                "speed-up b32", "error"):
        table.add_column(col)
    fmt = lambda v, s: "-" if v is None else format(v, s)  # noqa: E731
    for r in rows:
        table.add_row(r["method"], str(r.get("mac_reduction")), fmt(r.get("macs"), ","),
                      fmt(r.get("params"), ","), fmt(r["top1"], ".4f"), fmt(r["p50_ms_b1"], ".3f"),
                      fmt(r["p50_ms_b32"], ".2f"), fmt(r["speedup_b32"], ".2f"),
                      (r["error"] or "")[:60])
    Console(width=160).print(table)


if __name__ == "__main__":
    sys.exit(main())
