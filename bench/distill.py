"""Distillation methods against the same student trained on labels only (issue 5).

    python bench/distill.py                        # Fashion-MNIST, 3 seeds per method
    python bench/distill.py --quick                # digits, tiny models: every row appears

Every method trains the SAME student architecture (ResNet-8, width 8: 19.8 K parameters,
about 1/9 of the default teacher's 175 K) for the same epochs, learning-rate schedule
and seeds; only the loss differs. The training images are not augmented, so the teachers'
logits are computed once per run (``cache_teacher``). Top-1 is on the Fashion-MNIST test
split (PyTorch); T and alpha were chosen on the validation split (``val_top1_*``).
``top1_std`` is the sample standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _common import one_line, setup_logging, step, write_results
from torch import nn

from torchslim import record_of
from torchslim.data import DataBundle, load_data
from torchslim.distillation import DistillConfig, distill, distill_chain
from torchslim.pipeline.teacher import TeacherRecipe, get_teacher
from torchslim.train import TrainConfig, accuracy, fit, load_checkpoint
from torchslim.zoo import build_model

METHODS = ("teacher", "labels-only", "kd", "kd-feature", "multi-teacher", "teacher-assistant")
# the second teacher, of another architecture: the MobileNetV2 that bench/quant_peers.py trains
MBV2_RECIPE = TeacherRecipe(model="mobilenetv2", model_kwargs={},
                            train=TrainConfig(epochs=2, lr=0.1))
QUICK_TEACHERS = (TeacherRecipe(model="resnet8", model_kwargs={"width": 16}, dataset="digits",
                                train=TrainConfig(epochs=8, lr=0.05)),
                  TeacherRecipe(model="mobilenetv2", model_kwargs={"width_mult": 0.5},
                                dataset="digits", train=TrainConfig(epochs=8, lr=0.05)))


@dataclass
class Setup:
    data: DataBundle
    teachers: list[nn.Module]          # [main teacher, second teacher]
    student: tuple[str, dict[str, Any]]
    assistant: tuple[str, dict[str, Any]]
    args: argparse.Namespace

    def build(self, spec: tuple[str, dict[str, Any]], seed: int) -> nn.Module:
        torch.manual_seed(seed)        # the same initial student for every method
        info = self.data.info
        return build_model(spec[0], num_classes=info.num_classes,
                           in_channels=info.input_shape[0], **spec[1])

    def train_config(self, seed: int) -> TrainConfig:
        a = self.args
        return TrainConfig(epochs=a.epochs, lr=a.lr, seed=seed, threads=a.threads,
                           channels_last=False)   # NHWC is slower for 8-channel convs

    def distill_config(self, seed: int, **options: Any) -> DistillConfig:
        return DistillConfig(temperature=self.args.temperature, alpha=self.args.alpha,
                             train=self.train_config(seed), **options)


def _labels_only(s: Setup, seed: int) -> nn.Module:
    student = s.build(s.student, seed)
    fit(student, s.data.train, config=s.train_config(seed), val=s.data.val)
    return student


def _kd(s: Setup, seed: int) -> nn.Module:
    return distill(s.build(s.student, seed), s.teachers[0], s.data,
                   s.distill_config(seed, cache_teacher=True))


def _kd_feature(s: Setup, seed: int) -> nn.Module:
    # student layer3 (32 channels, 7x7) -> teacher layer3 (64 channels, 7x7): 1x1 adapter
    return distill(s.build(s.student, seed), s.teachers[0], s.data,
                   s.distill_config(seed, features=[("layer3", "layer3")],
                                    feature_weight=s.args.feature_weight))


def _multi_teacher(s: Setup, seed: int) -> nn.Module:
    return distill(s.build(s.student, seed), s.teachers, s.data,
                   s.distill_config(seed, cache_teacher=True, teacher_weights="learned"))


def _teacher_assistant(s: Setup, seed: int) -> nn.Module:
    chain = [s.build(s.assistant, seed), s.build(s.student, seed)]
    return distill_chain(s.teachers[0], chain, s.data,
                         s.distill_config(seed, cache_teacher=True))[-1]


TRAINERS: dict[str, Callable[[Setup, int], nn.Module]] = {
    "labels-only": _labels_only, "kd": _kd, "kd-feature": _kd_feature,
    "multi-teacher": _multi_teacher, "teacher-assistant": _teacher_assistant}


def _teacher_weights(model: nn.Module) -> list[float] | None:
    """The soft-target weights distillation used (None for a model trained on labels)."""
    info = record_of(model).distillation
    return None if info is None else list(info.teacher_weights)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _row(method: str, runs: list[dict[str, Any]], params: int | None,
         error: str | None = None, **extra: Any) -> dict[str, Any]:
    top1 = [r["top1"] for r in runs]
    val = [r["val_top1"] for r in runs]
    return {"model": "fashion-student", "method": method, "runtime": "torch",
            "top1_mean": round(statistics.fmean(top1), 5) if top1 else None,
            "top1_std": round(statistics.stdev(top1), 5) if len(top1) > 1 else 0.0 if top1 else None,
            "seeds": [r["seed"] for r in runs], "params": params,
            "top1_per_seed": top1, "val_top1_mean": round(statistics.fmean(val), 5) if val else None,
            "seconds_mean": round(statistics.fmean(r["seconds"] for r in runs), 1) if runs else None,
            "teacher_weights": runs[-1]["teacher_weights"] if runs else None,
            "error": error, **extra}


def load_setup(args: argparse.Namespace) -> Setup:
    if args.quick:
        data = load_data("digits", augment=False, batch_size=64)
        teachers = [get_teacher(r, data, cache=args.cache)[0] for r in QUICK_TEACHERS]
        return Setup(data, teachers, ("resnet8", {"width": 4}), ("resnet8", {"width": 8}), args)
    data = load_data("fashion-mnist", augment=False, seed=0)   # the teachers' own split
    wanted = [(args.teacher, TeacherRecipe())]
    if "multi-teacher" in args.methods:  # the second teacher costs a training run when not cached
        wanted.append((args.second_teacher, MBV2_RECIPE))
    teachers = [load_checkpoint(path)[0] if path else get_teacher(recipe, data, cache=args.cache)[0]
                for path, recipe in wanted]
    return Setup(data, teachers, (args.student, {"width": args.student_width}),
                 ("resnet8", {"width": args.assistant_width}), args)


def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    with step("loading data and teachers"):
        s = load_setup(args)
    teacher_top1 = accuracy(s.teachers[0], s.data.test)
    teacher_row = {"model": "fashion-student", "method": "teacher", "runtime": "torch",
                   "top1_mean": round(teacher_top1, 5), "top1_std": 0.0, "seeds": [],
                   "params": _params(s.teachers[0]), "top1_per_seed": [teacher_top1],
                   "val_top1_mean": round(accuracy(s.teachers[0], s.data.val), 5),
                   "error": None}
    if len(s.teachers) > 1:
        teacher_row.update(second_teacher_top1=round(accuracy(s.teachers[1], s.data.test), 5),
                           second_teacher_params=_params(s.teachers[1]))
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
    errors: dict[str, str] = {}
    params = _params(s.build(s.student, 0))
    for seed in args.seeds:                        # seed-major: partial runs cover every method
        for method in args.methods:
            if method in errors:
                continue
            with step(f"{method}, seed {seed}"):
                t0 = time.perf_counter()
                try:
                    model = TRAINERS[method](s, seed)
                except Exception as e:  # a method that fails is a row with its error
                    errors[method] = one_line(e)
                    continue
                runs[method].append({"seed": seed, "top1": accuracy(model, s.data.test),
                                     "val_top1": accuracy(model, s.data.val),
                                     "seconds": time.perf_counter() - t0,
                                     "teacher_weights": _teacher_weights(model)})
            rows = [teacher_row] + [_row(m, runs[m], params, errors.get(m)) for m in args.methods]
            write_results(args.out, "distill", args.threads, rows, settings=_settings(args, s))
    rows = [teacher_row] + [_row(m, runs[m], params, errors.get(m)) for m in args.methods]
    return rows, _settings(args, s)


def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    """KD at each (T, alpha) of ``--grid``, scored on the VALIDATION split only: how T and
    alpha are chosen without looking at the test set."""
    with step("loading data and teachers"):
        s = load_setup(args)
    points: list[dict[str, Any]] = []
    for temperature, alpha in args.grid:
        for seed in args.seeds:
            with step(f"kd T={temperature} alpha={alpha}, seed {seed}"):
                cfg = DistillConfig(temperature=temperature, alpha=alpha, cache_teacher=True,
                                    train=s.train_config(seed))
                model = distill(s.build(s.student, seed), s.teachers[0], s.data, cfg)
            points.append({"temperature": temperature, "alpha": alpha, "seed": seed,
                           "val_top1": accuracy(model, s.data.val)})
            write_results(args.out, "distill", args.threads, [], sweep=points,
                          settings=_settings(args, s))
    return points


def _settings(args: argparse.Namespace, s: Setup) -> dict[str, Any]:
    return {"dataset": s.data.info.name, "split": "test", "n": len(s.data.test.dataset),
            "student": {"name": s.student[0], **s.student[1]},
            "assistant": {"name": s.assistant[0], **s.assistant[1]},
            "epochs": args.epochs, "lr": args.lr, "schedule": "onecycle", "augment": False,
            "temperature": args.temperature, "alpha": args.alpha,
            "feature_pairs": [["layer3", "layer3"]], "feature_weight": args.feature_weight,
            "multi_teacher_weights": "learned (validation split)", "quick": args.quick}


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for name in ("method", "top-1 mean", "std", "seeds", "params", "val top-1", "s/run", "error"):
        table.add_column(name, justify="left" if name in ("method", "error") else "right")
    for r in rows:
        pct = (lambda v: "-" if v is None else f"{100 * v:.2f} %")
        table.add_row(r["method"], pct(r["top1_mean"]),
                      "-" if r["top1_std"] is None else f"{100 * r['top1_std']:.2f}",
                      str(len(r["seeds"])), f"{r['params']:,}", pct(r.get("val_top1_mean")),
                      "-" if r.get("seconds_mean") is None else f"{r['seconds_mean']:.0f}",
                      (r["error"] or "")[:70])
    Console(width=160).print(table)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/distill.json"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=",".join(TRAINERS))
    p.add_argument("--epochs", type=int, default=None, help="default 3 (quick: 2)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--temperature", type=float, default=2.0,
                   help="chosen on the validation split (--grid); README")
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--feature-weight", type=float, default=1.0)
    p.add_argument("--student", default="resnet8", help="zoo ResNet of the student")
    p.add_argument("--student-width", type=int, default=8)
    p.add_argument("--assistant-width", type=int, default=12)
    p.add_argument("--cache", type=Path, default=None,
                   help="teacher cache (default: $TORCHSLIM_CACHE or ~/.cache/torchslim)")
    p.add_argument("--teacher", type=Path, default=None,
                   help="teacher checkpoint (default: the cached default teacher, trained if absent)")
    p.add_argument("--second-teacher", type=Path, default=None,
                   help="second teacher checkpoint for multi-teacher (default: the cached "
                        "MobileNetV2 of bench/quant_peers.py, trained if absent)")
    p.add_argument("--grid", default=None,
                   help="T:alpha,T:alpha,...: instead of the methods, run KD at each point and "
                        "report validation top-1 only (how T and alpha are chosen)")
    p.add_argument("--quick", action="store_true", help="digits and tiny models (smoke test)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(TRAINERS))
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {', '.join(TRAINERS)}")
    args.epochs = args.epochs or (2 if args.quick else 3)
    args.grid = [tuple(float(v) for v in point.split(":")) for point in args.grid.split(",")
                 if point.strip()] if args.grid else None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    torch.set_num_threads(args.threads)
    if args.grid:
        for point in sweep(args):
            print(f"T={point['temperature']:g} alpha={point['alpha']:g} seed {point['seed']}: "
                  f"val top-1 {100 * point['val_top1']:.2f} %")
        print(f"wrote {args.out}")
        return 0
    rows, settings = run(args)
    write_results(args.out, "distill", args.threads, rows, settings=settings)
    print_table(rows, f"distill: {rows[1]['model'] if len(rows) > 1 else ''} top-1 on the "
                      f"test split, {len(args.seeds)} seeds, {args.epochs} epochs, "
                      f"{args.threads} threads")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
