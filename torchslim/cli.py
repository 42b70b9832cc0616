"""The ``torchslim`` command: parse, call the library, print. Nothing else lives here."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from torchslim._commands._app import (BatchSizes, MaxRestarts, Nproc, Threads, app, command,
                                      out_console, parse_sizes, setup_logging, state)
from torchslim._commands._options import with_options
from torchslim.errors import ConfigError
from torchslim.pipeline.quantize import QUANTIZE
from torchslim.pipeline.training import TRAIN


@app.callback()
def _global(debug: Annotated[bool, typer.Option(help="Show tracebacks on errors.")] = False,
            quiet: Annotated[bool, typer.Option(help="Only print results and errors.")] = False
            ) -> None:
    state["debug"] = debug
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    setup_logging(level)


@command(writes="out")
def demo(out: Annotated[Path, typer.Option(help="Directory for the report.")] = Path("runs/demo"),
         quick: Annotated[bool, typer.Option(help="Tiny teacher on a data subset (smoke test).")] = False,
         threads: Threads = 2,
         data: Annotated[Optional[Path], typer.Option(help="Fashion-MNIST IDX directory.")] = None
         ) -> None:
    """Train (or reuse) the default teacher, export it, evaluate it on PyTorch and ONNX Runtime."""
    from torchslim.pipeline import DemoOptions, run_demo
    from torchslim.report import print_table

    result = run_demo(DemoOptions(out=out, quick=quick, threads=threads, data_root=data))
    print_table(result["results"], console=out_console)
    paths = result["report"]
    out_console.print(f"report: {paths['html']}\njson:   {paths['json']}")


@command(writes="out")
@with_options(TRAIN)
def train(model: Annotated[str, typer.Option(help="Zoo model name, e.g. resnet20.")] = "resnet14",
          dataset: Annotated[str, typer.Option(help="fashion-mnist or digits.")] = "fashion-mnist",
          *, options: dict[str, Any],
          batch_size: Annotated[int, typer.Option(min=1)] = 128,
          width: Annotated[Optional[int], typer.Option(min=1)] = None, threads: Threads = 2,
          out: Annotated[Path, typer.Option(help="Directory for the checkpoint.")] = Path("runs/train"),
          data: Annotated[Optional[Path], typer.Option(help="Dataset directory.")] = None,
          resume: Annotated[bool, typer.Option("--resume", help="Continue the run in OUT, even with changed settings (e.g. more epochs).")] = False,
          overwrite: Annotated[bool, typer.Option("--overwrite", help="Discard the run in OUT and start again.")] = False,
          nproc: Nproc = 1, max_restarts: MaxRestarts = 0) -> None:
    """Train a zoo model; resumes from OUT/state after an interruption (the same settings),
    refuses an OUT that holds a run with other settings unless --resume or --overwrite."""
    import dataclasses

    import torch

    from torchslim.data import load_data
    from torchslim.pipeline.training import STATE_DIR, prepare_train_output
    from torchslim.train import accuracy, fit, save_checkpoint
    from torchslim.zoo import build_model, model_spec

    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pass one")
    config = dataclasses.replace(TRAIN.plan("cli", **options), threads=threads)
    settings = {"model": model, "dataset": dataset, "width": width, "batch_size": batch_size,
                **{k: v for k, v in options.items()}}
    prepare_train_output(out, settings, resume=resume, overwrite=overwrite)
    bundle = load_data(dataset, root=data, batch_size=batch_size, seed=config.seed)
    kwargs = {"width": width} if width is not None else {}
    torch.manual_seed(config.seed)   # the initial weights are the seed's too
    net = build_model(model, num_classes=bundle.info.num_classes,
                      in_channels=bundle.info.input_shape[0], **kwargs)
    history = fit(net, bundle.train, config=config, val=bundle.val, checkpoint_dir=out / STATE_DIR,
                  checkpoint_meta={"dataset": dataset, "settings": settings})
    test_top1 = accuracy(net, bundle.test)
    path = save_checkpoint(out / f"{model}.safetensors", net, spec=model_spec(net),
                           dataset=dataset, metrics={"test_top1": test_top1, "history": history},
                           settings=settings)
    out_console.print(f"test top-1 {test_top1:.4f}\ncheckpoint: {path}")


@command("evaluate", writes="out")
def evaluate_cmd(path: Annotated[Path, typer.Argument(help="Checkpoint (.safetensors) or .onnx file.")],
                 dataset: str = "fashion-mnist",
                 reference: Annotated[Optional[Path], typer.Option(help="Baseline checkpoint for agreement.")] = None,
                 model: Annotated[Optional[str], typer.Option(help="Load the checkpoint as this zoo architecture.")] = None,
                 threads: Threads = 2, batch_sizes: BatchSizes = "1,32",
                 out: Annotated[Path, typer.Option(help="Directory for report.json/html.")] = Path("runs/evaluate"),
                 data: Annotated[Optional[Path], typer.Option(help="Dataset directory.")] = None,
                 robustness: Annotated[bool, typer.Option("--robustness", help="Also measure corruptions, attacks (made on the reference's torch model, else the candidate's), calibration and flips vs the reference; report.json's extra.robustness.")] = False,
                 robustness_n: Annotated[Optional[int], typer.Option("--robustness-n", min=1, help="Test images in the stratified robustness sample (default 500).")] = None) -> None:
    """Evaluate a checkpoint or an ONNX artifact on the test split and write a report."""
    from torchslim.data import load_data
    from torchslim.evaluation import evaluate
    from torchslim.report import print_table, write_report

    sizes = parse_sizes(batch_sizes)
    if robustness_n is not None and not robustness:
        raise ConfigError(f"--robustness-n {robustness_n} sizes the robustness sample; pass "
                          "--robustness too")
    bundle = load_data(dataset, root=data)
    candidate_session, candidate_model = _open(path, model, threads)
    _check_fits(candidate_session, bundle, path)
    common: dict[str, Any] = {"batch_sizes": sizes, "class_names": list(bundle.info.class_names)}
    baseline, ref_session, ref_model = None, None, None
    if reference is not None:
        ref_session, ref_model = _open(reference, None, threads)
        _check_fits(ref_session, bundle, reference)
        baseline = evaluate(ref_session, bundle.test,
                            name=f"reference-{reference.stem}-{ref_session.name}",
                            model=ref_model, **common)
    result = evaluate(candidate_session, bundle.test, name=f"{path.stem}-{candidate_session.name}",
                      reference=baseline, model=candidate_model, **common)
    if robustness:
        _add_robustness(bundle, robustness_n, (result, candidate_session, candidate_model),
                        None if baseline is None else (baseline, ref_session, ref_model))
    results = [r for r in (baseline, result) if r is not None]
    paths = write_report(out, baseline=results[0], candidates=results[1:],
                         dataset={"name": dataset, "split": "test", "n": result.n},
                         class_names=list(bundle.info.class_names))
    print_table(results, console=out_console)
    out_console.print(f"report: {paths['html']}")


@command(writes="out")
@with_options(QUANTIZE)
def quantize(checkpoint: Annotated[Path, typer.Argument(help="Checkpoint (.safetensors) to quantize.")],
             options: dict[str, Any],
             runtime: Annotated[str, typer.Option(help="onnxruntime or openvino.")] = "onnxruntime",
             sensitivity: Annotated[bool, typer.Option("--sensitivity", help="Add the per-layer sensitivity table to the report.")] = False,
             placement: Annotated[bool, typer.Option("--placement/--no-placement", help="Time each candidate node variant (space-to-depth stem, float node) on the runtime and keep those that are faster; the decisions are in the report.")] = True,
             threads: Threads = 2, batch_sizes: BatchSizes = "1,32",
             out: Annotated[Path, typer.Option(help="Directory for the artifact and report.")] = Path("runs/quantize"),
             data: Annotated[Optional[Path], typer.Option(help="Dataset directory.")] = None,
             nproc: Nproc = 1, max_restarts: MaxRestarts = 0) -> None:
    """Quantize a checkpoint to an INT8 artifact and measure it on the chosen runtime."""
    from torchslim.pipeline.quantize import QuantizeJob, run_quantize
    from torchslim.report import print_table

    job = QuantizeJob(checkpoint=checkpoint, plan=QUANTIZE.plan("cli", **options), out=out,
                      runtime=runtime, threads=threads, sensitivity=sensitivity,
                      batch_sizes=parse_sizes(batch_sizes), data_root=data, placement=placement)
    result = run_quantize(job)
    print_table(result["results"], console=out_console)
    out_console.print(f"artifact: {result['artifact']}\nreport:   {result['report']['html']}")


@command(writes="out")
@with_options(QUANTIZE, only=("bits", "observer"))
def sensitivity(checkpoint: Annotated[Path, typer.Argument(help="Checkpoint (.safetensors).")],
                options: dict[str, Any],
                batches: Annotated[int, typer.Option(min=1, help="Calibration and scoring batches.")] = 8,
                threads: Threads = 2,
                out: Annotated[Path, typer.Option(help="Directory for sensitivity.json.")] = Path("runs/sensitivity"),
                data: Annotated[Optional[Path], typer.Option(help="Dataset directory.")] = None) -> None:
    """Quantize one layer at a time and rank layers by accuracy drop and output SQNR."""
    import torch
    from rich.table import Table

    from torchslim import _io
    from torchslim.data import load_data
    from torchslim.pipeline.quantize import sensitivity_report
    from torchslim.train import load_checkpoint

    torch.set_num_threads(threads)
    plan = QUANTIZE.plan("cli", **options, calib_batches=batches)
    net, meta = load_checkpoint(checkpoint)
    bundle = load_data(meta.get("dataset") or "fashion-mnist", root=data)
    block = sensitivity_report(net, bundle, plan, num_batches=batches)
    path = _io.write_json(out / "sensitivity.json", {"checkpoint": str(checkpoint), **block})
    table = Table(title=f"per-layer sensitivity ({plan.label}, validation split)")
    for col in ("layer", "top-1 drop (pts)", "output SQNR (dB)", "params"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for r in block["layers"]:
        table.add_row(r["name"], f"{r['metric_drop']:+.2f}", f"{r['sqnr_db']:.1f}",
                      f"{r['params']:,}")
    out_console.print(table)
    out_console.print(f"json: {path}")


@command(writes="out")
def report(reports: Annotated[list[Path], typer.Argument(help="report.json files to merge.")],
           out: Annotated[Path, typer.Option(help="Directory for the merged report.")] = Path("runs/report")
           ) -> None:
    """Merge report.json files (first one's baseline) into one JSON/HTML report."""
    from torchslim.report import load_results, print_table, write_report

    loaded = [load_results(p) for p in reports]
    unique = list({r.name: r for _, results in loaded for r in results}.values())
    first = loaded[0][0]
    baseline = next(r for r in unique if r.name == first["baseline"])  # load_results checked it
    others = [r for r in unique if r.name != first["baseline"]]
    paths = write_report(out, baseline=baseline, candidates=others, dataset=first["dataset"])
    print_table([baseline, *others], console=out_console)
    out_console.print(f"report: {paths['html']}")


def _add_robustness(bundle: Any, n: int | None, candidate: tuple[Any, Any, Any],
                    reference: tuple[Any, Any, Any] | None) -> None:
    """Each result's ``extra["robustness"]``, the candidate's against the reference's block:
    one suite on the test split (attacks made on the reference's torch model, or without a
    reference on the candidate's), calibration and flips on the whole split's logits."""
    import numpy as np

    from torchslim.evaluation.robustness import RobustnessConfig, RobustnessSuite

    info, names = bundle.info, list(bundle.info.class_names)
    source = reference if reference is not None else candidate
    attack_model = source[2]
    if attack_model is None:
        out_console.print("robustness: no attacks measured, the attacks are made on a torch "
                          "model; pass a checkpoint as " + ("--reference" if reference
                                                            else "PATH or --reference"))
    suite = RobustnessSuite(bundle.test, mean=info.mean, std=info.std,
                            config=RobustnessConfig(**({} if n is None else {"n": n})),
                            attack_model=attack_model, source=source[0].name)
    labels = np.concatenate([np.asarray(y).reshape(-1) for _, y in bundle.test])
    base_block = None
    if reference is not None:
        ref_result, ref_session, ref_model = reference
        base_block = suite.evaluate(ref_session, model=ref_model, class_names=names,
                                    clean=(ref_result.logits, labels))
        ref_result.extra["robustness"] = base_block
    result, session, model = candidate
    result.extra["robustness"] = suite.evaluate(session, baseline=base_block, model=model,
                                                class_names=names, clean=(result.logits, labels))


def _check_fits(session: Any, bundle: Any, path: Path) -> None:
    """One test image through ``session`` before the long evaluation: an artifact made for
    other inputs or another number of classes is one clear line, not a runtime's error."""
    import numpy as np

    x, _ = next(iter(bundle.test))
    logits = np.asarray(session.run(x[:1].numpy()))
    classes, info = logits.shape[-1] if logits.ndim == 2 else None, bundle.info
    if classes != info.num_classes:
        got = f"{classes} classes" if classes is not None else f"shape {logits.shape}"
        raise ConfigError(f"{path} outputs {got} but {info.name} has {info.num_classes}; "
                          "evaluate it on the dataset it was trained for (--dataset), or "
                          f"pass a model with {info.num_classes} outputs")


def _open(path: Path, model_name: str | None, threads: int) -> tuple[Any, Any]:
    """(session, torch model or None) for a checkpoint or an artifact file."""
    from torchslim.runtime import TorchSession
    from torchslim.runtime import open as open_session
    from torchslim.train import load_weights_, read_checkpoint
    from torchslim.zoo import build_model

    if model_name is None:
        session = open_session(path, threads=threads)
        return session, getattr(session, "model", None)
    # a checkpoint loaded as another zoo architecture than the one it records
    _, meta = read_checkpoint(path)
    spec = meta.get("architecture")
    recorded = spec.get("kwargs") if isinstance(spec, dict) else None
    kwargs = {k: v for k, v in (recorded if isinstance(recorded, dict) else {}).items()
              if k in ("num_classes", "in_channels")}
    net = build_model(model_name, **kwargs)
    load_weights_(net, path)
    return TorchSession(net, threads=threads), net


# Commands defined in their own modules register themselves on import.
from torchslim._commands import distill, llm, prune, run  # noqa: E402,F401
from torchslim._commands import registry  # noqa: E402,F401
from torchslim._commands import serve  # noqa: E402,F401
from torchslim._commands import compare  # noqa: E402,F401


def main() -> None:
    app()


if __name__ == "__main__":
    main()
