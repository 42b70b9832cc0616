"""What torchslim did to a module: one typed record, read with ``record_of(module)``.

Every transform writes here, and nowhere else:

* ``zoo.build_model``: ``architecture`` (how ``build_model`` rebuilds it);
* structured and depth pruning: ``reshaped`` (layer shapes differ from the architecture's;
  a removed residual block is a ``RemovedBlock`` placeholder in the module tree);
* ``prune.sparsify_``: ``masked`` on each masked layer (training keeps its zeros);
* quantization: ``quantization`` (the config, whose TYPE names the kind and picks the
  exporter, and what happened to each layer);
* ``distillation.distill``: ``distillation`` (teachers, weights, the per-epoch history).

Checkpoints write it into the sidecar (``to_json``) and read it back (``restore_``);
``torchslim.export`` picks its writer from ``quantization``; the pipeline reports it.

The record is one attribute (``torchslim_record``) in the module's ``__dict__``, so it
survives ``copy.deepcopy``; on an fx ``GraphModule`` it is also registered as a preserved
attribute, which ``GraphModule.__deepcopy__`` keeps. Layer records survive fx tracing (the
graph module holds the same submodules); ``carry_`` copies a root record onto a traced or
rebuilt model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

__all__ = ["ATTR", "Record", "Quantization", "Coverage", "FloatOp", "Distillation",
           "RemovedBlock", "record_of",
           "update_", "carry_", "masked_layers", "removed_blocks", "to_json", "restore_"]

ATTR = "torchslim_record"


class RemovedBlock(nn.Identity):
    """Where depth pruning removed a residual block (``torchslim.prune.remove_blocks_``).
    Checkpoints record it, so that a reloaded model is as shallow as the saved one."""


@dataclass(frozen=True, kw_only=True)
class FloatOp:
    """One op that quantization left in float, and the reason."""

    name: str          # layer or submodule name; an op inside one is "scope (op)"
    kind: str          # op kind: conv, linear, matmul, attention, add, module, ...
    macs: int = 0      # per forward on the example inputs
    params: int = 0
    reason: str = ""
    requested: bool = False  # kept float by the config (skip list, override, policy)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class Coverage:
    """How much of a model runs in INT8: MACs and parameters, and every float op."""

    capture: str = ""                 # the capture route: export, export-strict, fx, submodules
    macs_total: int = 0               # conv, linear, matmul, attention and recurrent MACs
    macs_quantizable: int = 0         # in conv / linear / matmul: what integer kernels run
    macs_quantized: int = 0
    macs_requested_float: int = 0     # quantizable MACs the config keeps float on purpose
    params_total: int = 0
    params_quantized: int = 0
    float_ops: tuple[FloatOp, ...] = ()   # biggest first
    notes: tuple[str, ...] = ()       # why earlier capture routes failed

    @property
    def macs_fraction(self) -> float:
        """Quantized share of the quantizable MACs (1.0 when there are none)."""
        return self.macs_quantized / self.macs_quantizable if self.macs_quantizable else 1.0

    @property
    def enforced_fraction(self) -> float:
        """Quantized share of the quantizable MACs the config did not keep float (what
        ``QuantConfig.min_coverage`` bounds)."""
        base = self.macs_quantizable - self.macs_requested_float
        return self.macs_quantized / base if base > 0 else 1.0

    @property
    def params_fraction(self) -> float:
        return self.params_quantized / self.params_total if self.params_total else 0.0

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["float_ops"] = [op.to_json() for op in self.float_ops]
        out["notes"] = list(self.notes)
        out.update(macs_fraction=self.macs_fraction, params_fraction=self.params_fraction)
        return out


@dataclass(frozen=True, kw_only=True)
class Quantization:
    """How a model was quantized. ``type(config)`` is the kind: ``QuantConfig`` (static
    PTQ or QAT), ``DynamicQuantConfig``, ``WeightOnlyConfig`` or ``LLMQuantConfig``."""

    config: Any
    quantized: tuple[str, ...] = ()                    # layers with integer weights
    kept_float: tuple[tuple[str, str], ...] = ()       # (layer, why it stays float)
    # the config's reduce_range as resolved on the quantizing machine: True = 7-bit
    # weights (x86 without VNNI); None where the kind has no such option
    reduce_range: bool | None = None
    coverage: Coverage | None = None   # static quantization: what runs in INT8 and what not
    # SmoothQuant / AWQ: each scale group folded ("producer -> reader, ..."), found on the
    # captured graph; notes: what a method found nothing to act on
    scale_groups: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    # static (QuantConfig) only: what preparation placed, for calibration and sensitivity
    folded_bn: tuple[str, ...] = ()
    activation_quantizers: Mapping[str, str] = field(default_factory=dict)  # name: rule
    layer_inputs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return type(self.config).__name__

    def to_json(self) -> dict[str, Any]:
        config = (dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config)
                  else repr(self.config))
        return {"kind": self.kind, "config": _jsonable(config),
                "quantized": list(self.quantized),
                "kept_float": [list(pair) for pair in self.kept_float],
                "reduce_range": self.reduce_range,
                "coverage": self.coverage.to_json() if self.coverage is not None else None,
                "scale_groups": list(self.scale_groups), "notes": list(self.notes)}


@dataclass(frozen=True, kw_only=True)
class Distillation:
    """What ``distill`` did: teachers, their weights, the hint adapters, the config (as
    data) and one dict per epoch with every loss term."""

    teachers: int
    teacher_weights: tuple[float, ...]
    adapters: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    history: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Distillation:
        return cls(teachers=int(data["teachers"]),
                   teacher_weights=tuple(float(w) for w in data["teacher_weights"]),
                   adapters=tuple(data.get("adapters", ())), config=dict(data.get("config", {})),
                   history=tuple(data.get("history", ())))


@dataclass(frozen=True, kw_only=True)
class Record:
    """What torchslim did to one module (the model, or a layer for ``masked``)."""

    architecture: Mapping[str, Any] | None = None  # {"name": zoo name, "kwargs": {...}}
    reshaped: bool = False                   # layer shapes differ from the architecture's
    masked: bool = False                     # a layer whose zeros are a pruning mask
    quantization: Quantization | None = None
    distillation: Distillation | None = None


_EMPTY = Record()


def record_of(module: nn.Module) -> Record:
    """The module's record (an empty one when torchslim did nothing to it)."""
    record = module.__dict__.get(ATTR)
    return record if isinstance(record, Record) else _EMPTY


def update_(module: nn.Module, **changes: Any) -> Record:
    """Set fields of ``module``'s record in place (``update_(model, reshaped=True)``)."""
    record = dataclasses.replace(record_of(module), **changes)
    module.__dict__[ATTR] = record
    if isinstance(module, fx.GraphModule):  # GraphModule.__deepcopy__ keeps only these
        module.meta.setdefault("_user_preserved_attributes", {})[ATTR] = record
    return record


def carry_(source: nn.Module, target: nn.Module, **changes: Any) -> Record:
    """Give ``target`` (a traced or rebuilt copy of ``source``) the record of ``source``,
    with ``changes``."""
    return update_(target, **{**_fields(record_of(source)), **changes})


def masked_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every layer whose weight zeros are a pruning mask."""
    return [(name, m) for name, m in model.named_modules()
            if record_of(m).masked and isinstance(getattr(m, "weight", None), torch.Tensor)]


def removed_blocks(model: nn.Module) -> list[str]:
    """Names of the residual blocks depth pruning removed."""
    return [name for name, m in model.named_modules() if isinstance(m, RemovedBlock)]


def to_json(model: nn.Module) -> dict[str, Any]:
    """The record of ``model`` and its layers as JSON data (a checkpoint sidecar's
    ``record``). ``architecture`` is left out: the sidecar holds it at its top level."""
    record = record_of(model)
    out: dict[str, Any] = {"reshaped": record.reshaped,
                           "masked": [name for name, _ in masked_layers(model)],
                           "removed_blocks": removed_blocks(model)}
    if record.quantization is not None:
        out["quantization"] = record.quantization.to_json()
    if record.distillation is not None:
        out["distillation"] = record.distillation.to_json()
    return out


def restore_(model: nn.Module, data: Mapping[str, Any]) -> nn.Module:
    """Put a sidecar's ``record`` back on a rebuilt ``model``: the reshaped flag, the
    masked layers and the distillation. (A quantization record stays data: the rebuilt
    model is float.)"""
    modules = dict(model.named_modules())
    for name in data.get("masked", ()):
        if name in modules:
            update_(modules[name], masked=True)
    changes: dict[str, Any] = {"reshaped": bool(data.get("reshaped", False))}
    if data.get("distillation"):
        changes["distillation"] = Distillation.from_json(data["distillation"])
    update_(model, **changes)
    return model


def _fields(record: Record) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)
