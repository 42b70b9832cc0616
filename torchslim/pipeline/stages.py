"""Stage kinds a recipe can chain: a registry from ``kind`` to the function that runs it.

A stage function takes the current ``State`` (a float model and the artifact measured on
the target runtime), the stage's options (``torchslim.pipeline.recipe``), the run's
``StageContext`` and a fresh directory, and returns the new state. It never changes the
state it is given: the runner keeps that one to roll back to. The algorithms are the
ones the single-purpose jobs use (``PruneJob``, ``QuantizeJob``, ``distill``, ``fit``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim._record import record_of
from torchslim._registry import Registry
from torchslim.data import DataBundle
from torchslim.errors import ConfigError
from torchslim.exporters import export_onnx
from torchslim.pipeline.quantize import METHODS, QuantizeJob, quantize_model, sensitivity_report
from torchslim.pipeline.recipe import (STAGE_SCHEMAS, DistillOptions, ExportOptions,
                                       FinetuneOptions, PruneOptions, QuantizeOptions,
                                       StageOptions, Target)
from torchslim.train import TrainConfig, fit

__all__ = ["State", "StageContext", "STAGES", "run_stage", "ARTIFACT"]

logger = logging.getLogger(__name__)

ARTIFACT = "model.onnx"   # each attempt directory's artifact on the target runtime


@dataclass
class State:
    """What flows between stages. ``model`` is float (maybe pruned or distilled); after
    quantize it is the INT8 artifact's float parent."""

    model: nn.Module
    artifact: Path
    precision: str = "fp32"              # "fp32", or "int8" / "w4a8" once quantized
    record: dict[str, Any] = field(default_factory=dict)   # what the stage did
    checkpoint: Path | None = None       # where ``model`` is saved (set by the runner)

    @property
    def quantized(self) -> bool:
        return self.precision != "fp32"


@dataclass(frozen=True, kw_only=True)
class StageContext:
    data: DataBundle
    teacher: nn.Module                   # distill's teacher (the recipe's, or the model)
    target: Target
    seed: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.data.info.input_shape)


StageFn = Callable[[State, Any, StageContext, Path], State]
STAGES: Registry[StageFn] = Registry("stage")


def run_stage(state: State, opts: StageOptions, ctx: StageContext, out: Path) -> State:
    """Run one attempt of a stage into ``out``; the input state is left untouched."""
    out.mkdir(parents=True, exist_ok=True)
    return STAGES.get(opts.kind)(state, opts, ctx, out)


def _float_state(model: nn.Module, ctx: StageContext, out: Path, record: dict[str, Any]) -> State:
    model.eval()
    path = export_onnx(model, out / ARTIFACT, input_shape=ctx.input_shape)
    return State(model=model, artifact=path, precision="fp32", record=record)


def _train_config(ctx: StageContext, *, epochs: int, lr: float, schedule: str = "cosine",
                  max_steps_per_epoch: int | None = None) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=lr, schedule=schedule, seed=ctx.seed,
                       threads=ctx.target.threads, max_steps_per_epoch=max_steps_per_epoch)


@STAGES.register("distill")
def _distill(state: State, opts: DistillOptions, ctx: StageContext, out: Path) -> State:
    from torchslim.distillation import DistillConfig, build_student, distill, scaled_like

    info = ctx.data.info
    if opts.student is not None:
        student = build_student(opts.student, width_mult=opts.width_mult,
                                depth_mult=opts.depth_mult, num_classes=info.num_classes,
                                in_channels=info.input_shape[0])
    elif record_of(ctx.teacher).architecture:
        student = scaled_like(ctx.teacher, opts.width_mult, depth_mult=opts.depth_mult)
    else:
        raise ConfigError("distill: the teacher is not a zoo model, so its architecture "
                          "cannot be scaled; set the stage's student: <zoo name>")
    train = _train_config(ctx, epochs=opts.epochs, lr=opts.lr, schedule="onecycle",
                          max_steps_per_epoch=opts.max_steps_per_epoch)
    config = DistillConfig(temperature=opts.temperature, alpha=opts.alpha, train=train)
    trained = distill(student, ctx.teacher, ctx.data, config)
    info = record_of(trained).distillation
    return _float_state(trained, ctx, out, {"history": list(info.history) if info else []})


@STAGES.register("prune")
def _prune(state: State, opts: PruneOptions, ctx: StageContext, out: Path) -> State:
    from torchslim.pipeline.prune import PruneJob, prune_model

    job = PruneJob(checkpoint=Path("-"), threads=ctx.target.threads, **opts.job_kwargs())
    model = copy.deepcopy(state.model)
    record = prune_model(model, ctx.data, job)
    record.pop("sensitivity", None)   # per-group tables: large, and kept by `torchslim prune`
    record.pop("layers", None)
    return _float_state(model, ctx, out, record)


@STAGES.register("finetune")
def _finetune(state: State, opts: FinetuneOptions, ctx: StageContext, out: Path) -> State:
    model = copy.deepcopy(state.model)
    config = _train_config(ctx, epochs=opts.epochs, lr=opts.lr, schedule=opts.schedule,
                           max_steps_per_epoch=opts.max_steps_per_epoch)
    history = fit(model, ctx.data.train, config=config, val=ctx.data.val)
    return _float_state(model, ctx, out, {"history": history})


@dataclass(frozen=True, kw_only=True)
class _RecipeQuantizeJob(QuantizeJob):
    """A QuantizeJob that also keeps named layers in float (the guard's fallback)."""

    skip: tuple[str, ...] = ()

    def config(self) -> Any:
        return dataclasses.replace(super().config(), skip=self.skip)


@STAGES.register("quantize")
def _quantize(state: State, opts: QuantizeOptions, ctx: StageContext, out: Path) -> State:
    if state.quantized:
        raise ConfigError("quantize: the model is already quantized; use one quantize stage")
    job = _RecipeQuantizeJob(checkpoint=Path("-"), out=out, method=opts.method,
                             observer=opts.observer, bits=opts.bits,
                             calib_batches=opts.calib_batches, qat_epochs=opts.qat_epochs,
                             threads=ctx.target.threads, runtime=ctx.target.runtime,
                             skip=tuple(opts.float_layers))
    sensitive: list[str] = []
    if opts.keep_sensitive:
        table = sensitivity_report(state.model, ctx.data, job, num_batches=4)
        sensitive = [row["name"] for row in table["layers"][:opts.keep_sensitive]]
        job = dataclasses.replace(job, skip=(*job.skip, *sensitive))
    torch.manual_seed(ctx.seed)
    prepared = quantize_model(state.model, ctx.data, job)
    path = METHODS.get(opts.method)[1](prepared, out / ARTIFACT, input_shape=ctx.input_shape)
    precision = "int8" if opts.bits == 8 else f"w{opts.bits}a8"
    info = record_of(prepared).quantization
    record = {"method": opts.method, "weight_bits": opts.bits, "observer": opts.observer,
              "float_layers": list(job.skip), "sensitive_layers_kept": sensitive,
              "quantized_layers": len(info.quantized) if info else 0}
    return State(model=state.model, artifact=path, precision=precision, record=record)


@STAGES.register("export")
def _export(state: State, opts: ExportOptions, ctx: StageContext, out: Path) -> State:
    """The artifact is already on the target runtime; the runner ships it under
    ``opts.artifact``. Nothing to change, so nothing to measure again."""
    return State(model=state.model, artifact=state.artifact, precision=state.precision,
                 record={"artifact": opts.artifact})


missing = sorted(set(STAGE_SCHEMAS.names()) - set(STAGES.names()))
if missing:  # a schema without a runner is a programming error, caught at import
    raise RuntimeError(f"stage kinds without a runner: {missing}")
