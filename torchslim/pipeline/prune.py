"""The prune job: checkpoint -> structured (or masked) pruning with recovery fine-tuning ->
pruned checkpoint + ONNX artifact -> report measured on the runtime.

The unpruned and pruned models are exported the same way and measured on the same
runtime, threads and test split, so the report's speed-up is a measured one.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.data import DataBundle, calibration_subset, load_data
from torchslim.errors import ConfigError
from torchslim.evaluation import evaluate
from torchslim.exporters import export_onnx
from torchslim.evaluation.model_stats import count_macs, count_params
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
class PruneJob:
    checkpoint: Path
    out: Path = Path("runs/prune")
    structured: bool = True
    target_macs: float | None = 0.5      # structured: fraction of the MACs to keep
    target_params: float | None = None
    importance: str = "l2"
    scope: str = "global"
    round_to: int | None = 8
    protected: tuple[str, ...] = ()
    blocks: int | tuple[str, ...] = 0     # structured: residual blocks to remove (count or names)
    sensitivity: bool = False            # per-group ratios from a sensitivity scan
    steps: int = 1                       # gradual: prune in this many steps
    sparsity: float = 0.5                # unstructured: share of weights to zero
    pattern: str = "unstructured"        # or "2:4", "1:4", ... (N:M)
    finetune_epochs: int = 2             # recovery fine-tuning after each step
    lr: float = 0.02
    threads: int = 2
    batch_sizes: tuple[int, ...] = (1, 32)
    data_root: Path | None = None

    def __post_init__(self) -> None:
        if self.finetune_epochs < 0:
            raise ConfigError(f"finetune_epochs={self.finetune_epochs} must be >= 0")
        if self.structured:
            self.channel_config()  # validates
        else:
            self.sparsity_config()

    def channel_config(self) -> ChannelPruneConfig:
        return ChannelPruneConfig(target_macs=None if self.target_params else self.target_macs,
                                  target_params=self.target_params, importance=self.importance,
                                  scope=self.scope, round_to=self.round_to,
                                  protected=self.protected, blocks=self.blocks)

    def sparsity_config(self) -> SparsityConfig:
        if self.pattern == "unstructured":
            return SparsityConfig(sparsity=self.sparsity, protected=self.protected)
        n, _, m = self.pattern.partition(":")
        if not (n.isdigit() and m.isdigit()):
            raise ConfigError(f"pattern={self.pattern!r}; use 'unstructured' or N:M such as '2:4'")
        return SparsityConfig(pattern="n:m", n=int(n), m=int(m), protected=self.protected)

    def finetune(self) -> TrainConfig | None:
        if self.finetune_epochs == 0:
            return None
        return TrainConfig(epochs=self.finetune_epochs, lr=self.lr, schedule="cosine",
                           threads=self.threads)


def prune_model(model: nn.Module, data: DataBundle, job: PruneJob) -> dict[str, Any]:
    """Prune ``model`` in place as ``job`` says, fine-tuning as it goes; returns the record
    that goes into the report's ``pruning`` block."""
    x = torch.zeros(2, *data.info.input_shape)
    if not job.structured:
        sparsify_(model, job.sparsity_config(), data=data.train)
        if job.finetune() is not None:
            fit(model, data.train, config=job.finetune(), val=data.val)
        return {"kind": job.pattern, "sparsity": layer_sparsity(model)}
    before = copy.deepcopy(model)
    config = job.channel_config()
    record: dict[str, Any] = {"kind": "structured", "config": _jsonable(asdict(config))}
    subset = calibration_subset(data.val, min(2000, len(data.val.dataset)), batch_size=250) \
        if job.blocks or job.sensitivity else None
    # whole blocks first, scored by the validation loss when each is bypassed
    removed, config = remove_blocks_first_(model, config, example_inputs=x, data=subset)
    if removed:
        record["removed_blocks"] = removed
    if job.sensitivity:
        table = group_sensitivity(model, x, subset, importance=job.importance, protected=job.protected)
        ratios = sensitivity_ratios(model, table, example_inputs=x, importance=job.importance,
                                    target_macs=config.target_macs or 0.5, protected=job.protected,
                                    round_to=job.round_to)
        cfg = ChannelPruneConfig(ratios=ratios, importance=job.importance, round_to=job.round_to,
                                 protected=job.protected)
        record["sensitivity"] = {g: {str(r): a for r, a in row.items()} for g, row in table.items()}
        record["steps"] = prune_gradually_(model, cfg, example_inputs=x, train=data.train,
                                           val=data.val, steps=1, finetune=job.finetune())
    else:
        record["steps"] = prune_gradually_(model, config, example_inputs=x,
                                           train=data.train, val=data.val, steps=job.steps,
                                           finetune=job.finetune())
    result = _measure(before, model, x)
    record.update(result)
    return record


def _measure(before: nn.Module, after: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Layer shapes and counts before/after, without pruning anything again."""
    shape = tuple(x.shape[1:])
    return {"macs_before": count_macs(before, shape), "macs_after": count_macs(after, shape),
            "params_before": count_params(before), "params_after": count_params(after),
            "layers": shape_changes(layer_shapes(before), layer_shapes(after))}


def run_prune(job: PruneJob) -> dict[str, Any]:
    torch.set_num_threads(job.threads)
    model, meta = load_checkpoint(job.checkpoint)
    data = load_data(meta.get("dataset") or "fashion-mnist", root=job.data_root)
    original = copy.deepcopy(model).eval()
    record = prune_model(model, data, job)
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
