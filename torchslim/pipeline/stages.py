"""Stage kinds a recipe can chain: a registry from ``kind`` to the function that runs it.

A stage function takes the current ``State`` (a float model and the artifact measured on
the target runtime), the stage's options (``torchslim.pipeline.recipe``), the run's
``StageContext`` and a fresh directory, and returns the new state. It never changes the
state it is given: the runner keeps that one to roll back to. A stage's options build its
plan (``opts.plan()``: the configs of its command's option table), and the algorithms are
the ones the single-purpose jobs use (``prune_model``, ``quantize_model``, ``distill``,
``fit``).
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
from torchslim.exporters import export, export_onnx
from torchslim.pipeline.prune import prune_model
from torchslim.pipeline.quantize import QuantizePlan, quantize_model, sensitivity_report
from torchslim.pipeline.recipe import STAGE_SCHEMAS, ExportOptions, StageOptions, Target
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


def _train(train: TrainConfig, ctx: StageContext) -> TrainConfig:
    """A stage's training schedule, on the run's seed and the target's threads."""
    return dataclasses.replace(train, seed=ctx.seed, threads=ctx.target.threads)


@STAGES.register("distill")
def _distill(state: State, opts: Any, ctx: StageContext, out: Path) -> State:
    from torchslim.distillation import distill, make_student

    plan = opts.plan()
    info = ctx.data.info
    try:
        student = make_student(plan.student, ctx.teacher, num_classes=info.num_classes,
                               in_channels=info.input_shape[0])
    except ConfigError as e:
        raise ConfigError(f"distill: {e}") from None
    config = dataclasses.replace(plan.config, train=_train(plan.config.train, ctx))
    trained = distill(student, ctx.teacher, ctx.data, config)
    done = record_of(trained).distillation
    return _float_state(trained, ctx, out, {"history": list(done.history) if done else []})


@STAGES.register("distill_embeddings")
def _distill_embeddings(state: State, opts: Any, ctx: StageContext, out: Path) -> State:
    """The current transformer (e.g. head-pruned) learns the recipe teacher's pooled
    embeddings on the data's text batches (``TextBatches``: train, and val held out); the
    artifact takes token tensors, with dynamic batch and sequence."""
    from torchslim.distillation import distill_embeddings
    from torchslim.transformers import dynamic_dims, unwrap

    widths = [getattr(getattr(unwrap(m), "config", None), "hidden_size", None)
              for m in (state.model, ctx.teacher)]
    if widths[0] != widths[1]:
        raise ConfigError(f"distill_embeddings: the model's width {widths[0]} is not the "
                          f"teacher's {widths[1]}: its embeddings would need a projection the "
                          "next stages do not see; call torchslim.distillation."
                          "distill_embeddings directly")
    config = opts.plan()
    config = dataclasses.replace(config, train=_train(config.train, ctx))
    result = distill_embeddings(ctx.teacher, state.model, ctx.data.train,
                                val_texts=ctx.data.val, config=config)
    example = next(iter(ctx.data.val))[0]
    path = export_onnx(result.embedder.eval(), out / ARTIFACT, example_inputs=example,
                       dynamic_dims=dynamic_dims(example))
    return State(model=result.student.eval(), artifact=path, record={
        "history": list(result.history), "val_cosine": result.val_cosine,
        "val_cosine_centered": result.val_cosine_centered})


@STAGES.register("prune")
def _prune(state: State, opts: Any, ctx: StageContext, out: Path) -> State:
    model = copy.deepcopy(state.model)
    record = prune_model(model, ctx.data, opts.plan(), threads=ctx.target.threads)
    record.pop("sensitivity", None)   # per-group tables: large, and kept by `torchslim prune`
    record.pop("layers", None)
    return _float_state(model, ctx, out, record)


@STAGES.register("finetune")
def _finetune(state: State, opts: Any, ctx: StageContext, out: Path) -> State:
    model = copy.deepcopy(state.model)
    history = fit(model, ctx.data.train, config=_train(opts.plan(), ctx), val=ctx.data.val)
    return _float_state(model, ctx, out, {"history": history})


@STAGES.register("quantize")
def _quantize(state: State, opts: Any, ctx: StageContext, out: Path) -> State:
    if state.quantized:
        raise ConfigError("quantize: the model is already quantized; use one quantize stage")
    plan: QuantizePlan = opts.plan()
    sensitive: list[str] = []
    if opts.keep_sensitive:   # the guard's fallback: the most sensitive layers stay float
        table = sensitivity_report(state.model, ctx.data, plan, num_batches=4)
        sensitive = [row["name"] for row in table["layers"][:opts.keep_sensitive]]
        skip = (*plan.config.skip, *sensitive)
        plan = dataclasses.replace(plan, config=dataclasses.replace(plan.config, skip=skip))
    torch.manual_seed(ctx.seed)
    prepared = quantize_model(state.model, ctx.data, plan, threads=ctx.target.threads)
    path = export(prepared, out / ARTIFACT, input_shape=ctx.input_shape)
    info = record_of(prepared).quantization
    record = {"method": plan.method, "weight_bits": plan.bits, "observer": plan.observer,
              "float_layers": list(plan.config.skip), "sensitive_layers_kept": sensitive,
              "quantized_layers": len(info.quantized) if info else 0}
    return State(model=state.model, artifact=path, precision=plan.precision, record=record)


@STAGES.register("export")
def _export(state: State, opts: ExportOptions, ctx: StageContext, out: Path) -> State:
    """The artifact is already on the target runtime; the runner ships it under
    ``opts.artifact``. Nothing to change, so nothing to measure again."""
    return State(model=state.model, artifact=state.artifact, precision=state.precision,
                 record={"artifact": opts.artifact})


missing = sorted(set(STAGE_SCHEMAS.names()) - set(STAGES.names()))
if missing:  # a schema without a runner is a programming error, caught at import
    raise RuntimeError(f"stage kinds without a runner: {missing}")
