"""`torchslim distill ...` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from torchslim._commands._app import BatchSizes, Threads, parse_sizes, command, out_console

StudentOpt = Annotated[str, typer.Option(
    help="Zoo model name (e.g. resnet8), or 'teacher' for the teacher's architecture "
         "scaled by --width-mult.")]
LayerPairs = Annotated[Optional[list[str]], typer.Option(
    help="STUDENT_LAYER:TEACHER_LAYER; repeat for several pairs.")]


@command("distill")
def distill_cmd(teacher: Annotated[Path, typer.Option(help="Teacher checkpoint (.safetensors).")],
                student: StudentOpt = "resnet8",
                width: Annotated[Optional[int], typer.Option(help="Student base width (ResNets).")] = None,
                width_mult: Annotated[Optional[float], typer.Option(help="Scale every width of the student (0.5 halves).")] = None,
                depth_mult: Annotated[float, typer.Option(help="Scale the student's depth (ResNets).")] = 1.0,
                temperature: Annotated[float, typer.Option(help="Softens teacher and student outputs.")] = 4.0,
                alpha: Annotated[float, typer.Option(help="Weight of the KD term; 1 - alpha goes to the labels.")] = 0.9,
                alpha_schedule: Annotated[str, typer.Option(help="constant, warmup or decay.")] = "constant",
                feature: LayerPairs = None,
                feature_weight: float = 1.0,
                attention: LayerPairs = None,
                attention_weight: float = 500.0,
                cache_teacher: Annotated[bool, typer.Option("--cache-teacher", help="Run the teacher once (turns off flip augmentation).")] = False,
                epochs: int = 6, lr: float = 0.1, seed: int = 0, threads: Threads = 2,
                batch_sizes: BatchSizes = "1,32",
                out: Annotated[Path, typer.Option(help="Directory for the student and the report.")] = Path("runs/distill"),
                data: Annotated[Optional[Path], typer.Option(help="Dataset directory.")] = None) -> None:
    """Distil a teacher checkpoint into a smaller student; report teacher vs student."""
    import torch

    from torchslim.data import load_data
    from torchslim.distillation import DistillConfig, build_student, distill, scaled_like
    from torchslim._record import record_of
    from torchslim.report import print_table
    from torchslim.train import TrainConfig, load_checkpoint, save_checkpoint
    from torchslim.zoo import model_spec

    torch.set_num_threads(threads)
    config = DistillConfig(temperature=temperature, alpha=alpha, alpha_schedule=alpha_schedule,
                           features=tuple(feature or ()), feature_weight=feature_weight,
                           attention=tuple(attention or ()), attention_weight=attention_weight,
                           cache_teacher=cache_teacher,
                           train=TrainConfig(epochs=epochs, lr=lr, seed=seed, threads=threads))
    sizes = parse_sizes(batch_sizes)
    teacher_model, meta = load_checkpoint(teacher)
    dataset = meta.get("dataset") or "fashion-mnist"
    bundle = load_data(dataset, root=data, augment=not cache_teacher)
    torch.manual_seed(seed)
    if student == "teacher":
        net = scaled_like(teacher_model, width_mult or 0.5, depth_mult=depth_mult)
    else:
        kwargs: dict[str, Any] = {"width": width} if width is not None else {}
        net = build_student(student, depth_mult=depth_mult, width_mult=width_mult or 1.0,
                            num_classes=bundle.info.num_classes,
                            in_channels=bundle.info.input_shape[0], **kwargs)
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
