"""`torchslim distill ...`: its options are ``torchslim.pipeline.distill.DISTILL``'s rows (the
recipe's distill stage shares most of them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from torchslim._commands._app import (BatchSizes, MaxRestarts, Nproc, Threads, command,
                                      out_console, parse_sizes)
from torchslim._commands._options import with_options
from torchslim.pipeline.distill import DISTILL

@command("distill", writes="out")
@with_options(DISTILL)
def distill_cmd(teacher: Annotated[Path, typer.Option(help="Teacher checkpoint (.safetensors).")],
                *, options: dict[str, Any], threads: Threads = 2,
                batch_sizes: BatchSizes = "1,32",
                out: Annotated[Path, typer.Option(help="Directory for the student and the report.")] = Path("runs/distill"),
                data: Annotated[Optional[Path], typer.Option(help="Dataset directory.")] = None,
                nproc: Nproc = 1, max_restarts: MaxRestarts = 0) -> None:
    """Distil a teacher checkpoint into a smaller student; report teacher vs student."""
    import dataclasses

    import torch

    from torchslim._record import record_of
    from torchslim.data import load_data
    from torchslim.distillation import distill, make_student
    from torchslim.report import print_table
    from torchslim.train import load_checkpoint, save_checkpoint
    from torchslim.zoo import model_spec

    torch.set_num_threads(threads)
    plan = DISTILL.plan("cli", **options)
    config = dataclasses.replace(plan.config, train=dataclasses.replace(plan.config.train,
                                                                        threads=threads))
    sizes = parse_sizes(batch_sizes)
    teacher_model, meta = load_checkpoint(teacher)
    dataset = meta.get("dataset") or "fashion-mnist"
    bundle = load_data(dataset, root=data, augment=not config.cache_teacher)
    torch.manual_seed(config.train.seed)
    net = make_student(plan.student, teacher_model, num_classes=bundle.info.num_classes,
                       in_channels=bundle.info.input_shape[0])
    trained = distill(net, teacher_model, bundle, config)
    info = record_of(trained).distillation.to_json()
    spec = model_spec(trained)
    # the sidecar's record holds the distillation; the teacher's path is this command's
    path = save_checkpoint(out / f"{spec['name']}-student.safetensors", trained, spec=spec,
                           dataset=dataset, teacher=str(teacher))
    results, paths = _report(teacher_model, trained, bundle, info, out=out, threads=threads,
                             batch_sizes=sizes, names=(teacher.stem, spec["name"]))
    print_table(results, console=out_console)
    out_console.print(f"student: {path}\nreport:  {paths['html']}")


def _report(teacher: Any, student: Any, bundle: Any, info: dict[str, Any], *, out: Path,
            threads: int, batch_sizes: tuple[int, ...], names: tuple[str, str]) -> tuple[list[Any], dict[str, Path]]:
    """Teacher (baseline) and student on the test split, PyTorch runtime, one report."""
    from torchslim.evaluation import evaluate
    from torchslim.report import write_report
    from torchslim.runtime import TorchSession

    common: dict[str, Any] = {"batch_sizes": batch_sizes,
                              "class_names": list(bundle.info.class_names)}
    base = evaluate(TorchSession(teacher, threads=threads), bundle.test,
                    name=f"teacher-{names[0]}-fp32-torch", **common)
    base.agreement, base.cosine = 1.0, 1.0
    cand = evaluate(TorchSession(student, threads=threads), bundle.test, reference=base,
                    name=f"student-{names[1]}-fp32-torch", **common)
    paths = write_report(out, baseline=base, candidates=[cand],
                         dataset={"name": bundle.info.name, "split": "test", "n": base.n},
                         class_names=list(bundle.info.class_names), title="torchslim distill",
                         extra={"distillation": info})
    return [base, cand], paths
