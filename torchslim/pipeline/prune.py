"""The prune job: checkpoint -> structured (or masked) pruning with recovery fine-tuning ->
pruned checkpoint + ONNX artifact -> report measured on the runtime.

The unpruned and pruned models are exported the same way and measured on the same
runtime, threads and test split, so the report's speed-up is a measured one.
"""

from __future__ import annotations

import copy
import logging
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.data import DataBundle, calibration_subset, load_data
from torchslim.errors import ConfigError
from torchslim.evaluation import evaluate
from torchslim.evaluation.model_stats import count_macs, count_params
from torchslim.exporters import export_onnx
from torchslim.pipeline.options import Option, OptionTable, option
from torchslim.prune import (ChannelPruneConfig, SparsityConfig, group_sensitivity,
                             layer_sparsity, prune_gradually_,
                             sensitivity_ratios, sparsify_)
from torchslim.prune.structured import layer_shapes, remove_blocks_first_, shape_changes
from torchslim.report import write_report
from torchslim.runtime import TorchSession
from torchslim.runtime import open as open_session
from torchslim.train import TrainConfig, fit, load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PrunePlan:
    """What a prune job (``torchslim prune``) or a recipe's prune stage does."""

    config: ChannelPruneConfig | SparsityConfig
    steps: int = 1                       # structured: prune gradually, in this many steps
    sensitivity: bool = False            # structured: per-group ratios from a sensitivity scan
    finetune: TrainConfig | None = None  # recovery fine-tuning after each step

    def __post_init__(self) -> None:
        if not isinstance(self.config, (ChannelPruneConfig, SparsityConfig)):
            raise ConfigError(f"config must be a ChannelPruneConfig or SparsityConfig, not "
                              f"{type(self.config).__name__}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps={self.steps!r} must be an integer >= 1")

    @property
    def structured(self) -> bool:
        return isinstance(self.config, ChannelPruneConfig)


def _finetune(epochs: int, kwargs: dict[str, Any]) -> TrainConfig | None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"finetune_epochs={epochs!r} must be an integer >= 0 (0: none)")
    return TrainConfig(**kwargs, schedule="cosine") if epochs else None


def _prune_plan(table: OptionTable, v: dict[str, Any]) -> PrunePlan:
    if v["structured"]:
        channels = table.kwargs(ChannelPruneConfig, v)
        if channels["target_params"] is not None:  # a parameter target replaces the MAC one
            channels["target_macs"] = None
        config: ChannelPruneConfig | SparsityConfig = ChannelPruneConfig(**channels)
    else:
        config = SparsityConfig(**table.kwargs(SparsityConfig, v))
    return PrunePlan(config=config, finetune=_finetune(v["finetune_epochs"],
                                                       table.kwargs(TrainConfig, v)),
                     **table.kwargs(PrunePlan, v))


def _blocks(value: Any) -> int | tuple[str, ...]:
    """``--remove-blocks``: "2" is a count, "layer1.1,layer2.1" names the blocks."""
    if not isinstance(value, str):
        return value if isinstance(value, int) else tuple(value)
    text = value.strip()
    return int(text) if text.isdigit() else tuple(n.strip() for n in text.split(",") if n.strip())


# `torchslim prune` and a recipe's prune stage: every option, and the field it sets
PRUNE = OptionTable("prune", (
    Option("structured", {}, type=bool, default=True, flag="--structured/--unstructured",
           help="Remove channels (a smaller, faster model), or zero weights (masks)."),
    option("target_macs", ChannelPruneConfig, default=0.5,
           help="Structured: fraction of the MACs to keep (0.5 = 2x fewer)."),
    option("target_params", ChannelPruneConfig,
           help="Structured: fraction of the parameters to keep (replaces --target-macs)."),
    option("importance", ChannelPruneConfig, help="l1, l2, bn (BatchNorm scale) or taylor."),
    option("scope", ChannelPruneConfig, help="global (rank channels across layers) or uniform."),
    option("round_to", ChannelPruneConfig, default=8,
           help="Kept channel counts are multiples of this (1: any)."),
    option("protected", ChannelPruneConfig, SparsityConfig, flag="--protect",
           help="Layer whose output channels stay (repeatable)."),
    option("blocks", ChannelPruneConfig, parse=_blocks, flag="--remove-blocks", cli_type=str,
           cli_default="0", help="Structured: residual blocks to remove first, a count (least "
           "important by validation loss) or names, e.g. layer1.1,layer2.1."),
    option("sensitivity", PrunePlan, flag="--sensitivity",
           help="Per-layer ratios from a sensitivity scan on the validation split."),
    option("steps", PrunePlan,
           help="Gradual pruning: steps (cubic schedule), fine-tuning after each."),
    option("sparsity", SparsityConfig, help="Unstructured: share of weights to zero."),
    option("pattern", SparsityConfig, help="Unstructured: 'unstructured' or N:M such as 2:4."),
    option("finetune_epochs", TrainConfig, field="epochs", default=2, type=int,
           help="Recovery fine-tuning epochs after each step."),
    option("lr", TrainConfig, default=0.02, help="Fine-tuning peak learning rate (cosine decay)."),
), build=_prune_plan)


@dataclass(frozen=True, kw_only=True)
class PruneJob:
    """``torchslim prune``: the plan, on a checkpoint, measured on ONNX Runtime."""

    checkpoint: Path
    plan: PrunePlan                      # PRUNE.plan(target_macs=0.5, ...)
    out: Path = Path("runs/prune")
    threads: int = 2
    batch_sizes: tuple[int, ...] = (1, 32)
    data_root: Path | None = None


def prune_model(model: nn.Module, data: DataBundle, plan: PrunePlan, *,
                threads: int | None = None) -> dict[str, Any]:
    """Prune ``model`` in place as ``plan`` says, fine-tuning (on ``threads``) as it goes;
    returns the record that goes into the report's ``pruning`` block."""
    x = torch.zeros(2, *data.info.input_shape)
    finetune = None if plan.finetune is None else dataclasses.replace(plan.finetune,
                                                                      threads=threads)
    if not isinstance(plan.config, ChannelPruneConfig):
        sparsify_(model, plan.config, data=data.train)
        if finetune is not None:
            fit(model, data.train, config=finetune, val=data.val)
        return {"kind": plan.config.pattern_name, "sparsity": layer_sparsity(model)}
    before = copy.deepcopy(model)
    config = plan.config
    record: dict[str, Any] = {"kind": "structured", "config": _jsonable(asdict(config))}
    subset = calibration_subset(data.val, min(2000, len(data.val.dataset)), batch_size=250) \
        if config.blocks or plan.sensitivity else None
    # whole blocks first, scored by the validation loss when each is bypassed
    removed, config = remove_blocks_first_(model, config, example_inputs=x, data=subset)
    if removed:
        record["removed_blocks"] = removed
    steps = plan.steps
    if plan.sensitivity:
        table = group_sensitivity(model, x, subset, importance=config.importance,
                                  protected=config.protected)
        ratios = sensitivity_ratios(model, table, example_inputs=x, importance=config.importance,
                                    target_macs=config.target_macs or 0.5,
                                    protected=config.protected, round_to=config.round_to)
        config = dataclasses.replace(config, ratio=None, target_macs=None, target_params=None,
                                     ratios=ratios)
        record["sensitivity"] = {g: {str(r): a for r, a in row.items()} for g, row in table.items()}
        steps = 1
    record["steps"] = prune_gradually_(model, config, example_inputs=x, train=data.train,
                                       val=data.val, steps=steps, finetune=finetune)
    record.update(measure_pruned(before, model, x))
    return record


def measure_pruned(before: nn.Module, after: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Layer shapes and counts before/after (``x``: an input batch of the right shape),
    without pruning anything again."""
    shape = tuple(x.shape[1:])
    return {"macs_before": count_macs(before, shape), "macs_after": count_macs(after, shape),
            "params_before": count_params(before), "params_after": count_params(after),
            "layers": shape_changes(layer_shapes(before), layer_shapes(after))}


def run_prune(job: PruneJob) -> dict[str, Any]:
    torch.set_num_threads(job.threads)
    model, meta = load_checkpoint(job.checkpoint)
    data = load_data(meta.get("dataset") or "fashion-mnist", root=job.data_root)
    original = copy.deepcopy(model).eval()
    record = prune_model(model, data, job.plan, threads=job.threads)
    model.eval()
    stem = Path(job.checkpoint).stem
    ckpt = save_checkpoint(job.out / f"{stem}-pruned.safetensors", model,
                           spec=meta.get("architecture"), dataset=meta.get("dataset"),
                           pruning={k: v for k, v in record.items() if k != "sensitivity"})
    shape = data.info.input_shape
    fp32_path = export_onnx(original, job.out / f"{stem}-fp32.onnx", input_shape=shape)
    pruned_path = export_onnx(model, job.out / f"{stem}-pruned.onnx", input_shape=shape)
    common: dict[str, Any] = {"batch_sizes": job.batch_sizes,
                              "class_names": list(data.info.class_names)}
    base = evaluate(TorchSession(original, threads=job.threads), data.test,
                    name=f"{stem}-fp32-torch", **common)
    fp32 = evaluate(open_session(fp32_path, threads=job.threads), data.test, reference=base,
                    model=original, name=f"{stem}-fp32-onnxruntime", **common)
    pruned = evaluate(open_session(pruned_path, threads=job.threads), data.test,
                      reference=base, model=model, name=f"{stem}-pruned-onnxruntime", **common)
    base.agreement, base.cosine = 1.0, 1.0
    paths = write_report(job.out, baseline=base, candidates=[fp32, pruned],
                         dataset={"name": data.info.name, "split": "test", "n": base.n},
                         class_names=list(data.info.class_names), title="torchslim prune",
                         extra={"pruning": record})
    return {"report": paths, "results": [base, fp32, pruned], "checkpoint": ckpt,
            "artifact": pruned_path, "pruning": record}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
