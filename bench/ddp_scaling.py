"""Data-parallel scaling: training samples/s in 1 and 2 processes (1 thread each) under
torchrun with gloo, for QAT of the default teacher and KD of the demo student (issue 18).

    python bench/ddp_scaling.py                          # Fashion-MNIST, 3 rounds
    python bench/ddp_scaling.py --dataset digits --steps 3 --rounds 1   # a smoke check

Each run is a fresh launch (``torchrun --standalone --nproc-per-node N`` for N = 2, a plain
process for N = 1) of this file as a worker; the runs alternate 1, 2, 1, 2, ... so that a
drift of the machine's speed hits both alike, and the median over rounds is reported. A
worker times ``--steps`` optimizer steps after ``--warmup`` untimed ones, at the SAME
global batch (``--batch``, split over the processes), so samples/s compare directly;
start-up, calibration and the teacher's logits cache are not timed.

* ``qat``: the default teacher (ResNet-14 width 16) prepared w8a8 (BN folded), calibrated,
  trained with observers on (they combine their statistics over ranks at every step).
* ``kd``: the demo's KD (T = 2, alpha 0.9, cached teacher logits) of ResNet-8 width 8.

Weights are random unless ``--teacher`` names a checkpoint: a step costs the same either
way. Scaling efficiency = samples/s(2) / (2 x samples/s(1)); on a 2-core machine the two
processes share the cores with everything else, and every step pays gloo round trips
(the gradient all-reduce, synced BatchNorm, the observers' statistics), so expect well
under 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import ROW_KEYS, one_line, setup_logging, write_results

from torchslim.data import load_data
from torchslim.train import Callback, TrainConfig, fit
from torchslim.zoo import build_model

WORKLOADS = {"qat": ("resnet14", {"width": 16}, "qat-w8a8"),
             "kd": ("resnet8", {"width": 8}, "kd-t2")}
PROCESSES = (1, 2)


class StepTimer(Callback):
    """Wall time of the optimizer steps after the first ``warmup``."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.timed = warmup, 0.0, 0.0, 0

    def on_step_end(self, state: Any) -> None:
        if state.step == self.warmup:
            self.start = time.perf_counter()
        elif state.step > self.warmup:
            self.end, self.timed = time.perf_counter(), state.step - self.warmup


# ------------------------------------------------------------------ worker (one rank)
def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    name, kwargs, _ = WORKLOADS[args.workload]
    data = load_data(args.dataset, batch_size=args.batch, train_limit=args.train_limit,
                     augment=args.workload == "qat")
    info = data.info
    torch.manual_seed(0)
    model = build_model(name, num_classes=info.num_classes, in_channels=info.input_shape[0],
                        **kwargs)
    timer = StepTimer(args.warmup)
    train = TrainConfig(epochs=1, max_steps_per_epoch=args.warmup + args.steps, threads=1,
                        lr=1e-3 if args.workload == "qat" else 0.1,
                        schedule="cosine" if args.workload == "qat" else "onecycle",
                        channels_last=args.workload == "qat")
    if args.workload == "qat":
        _qat(model, data, train, timer, args)
    else:
        _kd(model, data, train, timer, args)
    if int(os.environ.get("RANK", 0)) == 0:
        Path(args.result).write_text(json.dumps({"seconds": timer.end - timer.start,
                                                 "steps": timer.timed}))


def _teacher(info: Any, args: argparse.Namespace) -> torch.nn.Module:
    from torchslim.train import load_checkpoint

    if args.teacher:
        return load_checkpoint(args.teacher)[0]
    torch.manual_seed(1)
    return build_model("resnet14", num_classes=info.num_classes,
                       in_channels=info.input_shape[0], width=16).eval()


def _qat(model: Any, data: Any, train: TrainConfig, timer: StepTimer,
         args: argparse.Namespace) -> None:
    """``torchslim.qat``'s steps with a timer among fit's callbacks."""
    from torchslim.quant import QuantConfig, calibrate_, prepare
    from torchslim.quant.distributed import across_ranks
    from torchslim.quant.qat import FreezeObservers

    if args.teacher:
        model = _teacher(data.info, args)
    config, calib = across_ranks(QuantConfig(), data.train)
    x = next(iter(data.train))[0]
    prepared = prepare(model.eval(), config, example_inputs=(x,))
    calibrate_(prepared, calib, num_batches=4)
    fit(prepared, data.train, config=train, callbacks=[FreezeObservers(None), timer])


def _kd(model: Any, data: Any, train: TrainConfig, timer: StepTimer,
        args: argparse.Namespace) -> None:
    """``torchslim.distill``'s steps (the demo's KD) with a timer among fit's callbacks."""
    from torchslim.distillation import DistillConfig
    from torchslim.distillation.distiller import Distiller

    teacher = _teacher(data.info, args)
    config = DistillConfig(temperature=2.0, alpha=0.9, cache_teacher=True, train=train)
    probe = next(iter(data.val))[0][:4]
    distiller = Distiller(model, [teacher], [1.0], config, probe)
    loader = distiller.train_loader(data.train)
    fit(distiller.module, loader, config=train, loss_fn=distiller.loss,
        callbacks=[distiller, timer])


# ------------------------------------------------------------------ driver
def _launch(args: argparse.Namespace, workload: str, nproc: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        me = [str(Path(__file__).resolve()), "--worker", "--workload", workload,
              "--result", str(result), "--dataset", args.dataset, "--batch", str(args.batch),
              "--steps", str(args.steps), "--warmup", str(args.warmup)]
        me += ["--train-limit", str(args.train_limit)] if args.train_limit else []
        me += ["--teacher", args.teacher] if args.teacher else []
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                     f"--nproc-per-node={nproc}"] if nproc > 1 else [sys.executable])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHSLIM_PROGRESS": "0"}
        done = subprocess.run(launcher + me, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError((done.stderr or done.stdout).strip().splitlines()[-1])
        return json.loads(result.read_text())


def _row(workload: str, nproc: int, per_round: list[float], args: argparse.Namespace,
         error: str | None, base: float | None) -> dict[str, Any]:
    name, kwargs, method = WORKLOADS[workload]
    sps = statistics.median(per_round) if per_round else None
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(model=f"{name}-w{kwargs['width']}", method=method,
               runtime="torch" if nproc == 1 else f"torch-ddp-gloo-{nproc}proc", error=error,
               processes=nproc,
               threads_per_process=1, global_batch=args.batch, timed_steps=args.steps,
               samples_per_s=None if sps is None else round(sps, 1),
               samples_per_s_rounds=[round(v, 1) for v in per_round],
               scaling_efficiency=(round(sps / (nproc * base), 3)
                                   if sps is not None and base else None))
    return row


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for workload in args.workloads:
        rounds: dict[int, list[float]] = {n: [] for n in PROCESSES}
        errors: dict[int, str | None] = dict.fromkeys(PROCESSES)
        for r in range(args.rounds):
            for nproc in PROCESSES:  # 1, 2, 1, 2, ...: drift hits both
                if errors[nproc]:
                    continue
                try:
                    out = _launch(args, workload, nproc)
                    rounds[nproc].append(args.batch * out["steps"] / out["seconds"])
                except Exception as e:  # a failed run is a row with its error
                    errors[nproc] = one_line(e)
        base = statistics.median(rounds[1]) if rounds[1] else None
        rows += [_row(workload, n, rounds[n], args, errors[n], base) for n in PROCESSES]
        write_results(args.out, "ddp_scaling", 1, rows, settings=_settings(args))
    return rows


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"dataset": args.dataset, "global_batch": args.batch, "steps": args.steps,
            "warmup": args.warmup, "rounds": args.rounds, "train_limit": args.train_limit,
            "teacher": args.teacher or "random init", "backend": "gloo",
            "command": "python bench/ddp_scaling.py " + " ".join(sys.argv[1:])}


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="data-parallel scaling (gloo, 1 thread per process, same global batch)")
    for col in ("model", "method", "processes", "samples/s", "rounds", "efficiency", "error"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["model"], r["method"], str(r["processes"]), str(r["samples_per_s"]),
                      str(r["samples_per_s_rounds"]), str(r["scaling_efficiency"]),
                      (r["error"] or "")[:60])
    Console(width=160).print(table)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--batch", type=int, default=128, help="global batch (the demo's)")
    p.add_argument("--steps", type=int, default=60, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=4, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--train-limit", type=int, default=8192,
                   help="training images (the KD teacher's logits are cached over them)")
    p.add_argument("--teacher", default=None, help="teacher checkpoint (default: random)")
    p.add_argument("--out", default="bench/results/ddp_scaling.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workload", default="qat", help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main() -> None:
    args = parse()
    if args.worker:
        worker(args)
        return
    setup_logging()
    print_table(run(args))
    print(f"json: {args.out}")


if __name__ == "__main__":
    main()
