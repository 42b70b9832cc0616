"""The quantize job: checkpoint -> PTQ, QAT, dynamic or weight-only -> artifact on a
runtime -> report.

Every figure in its report comes from the runtime it names: the FP32 baseline and the
INT8 candidate run on the same runtime, with the same threads, on the same test split.
``QUANTIZE`` is the one table of its options (the CLI's flags and a recipe stage's keys).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim._record import record_of
from torchslim._registry import Registry
from torchslim.data import DataBundle, calibration_subset, load_data
from torchslim.errors import ConfigError
from torchslim.evaluation import evaluate
from torchslim.exporters import export, export_onnx
from torchslim.exporters.placement import place_for_runtime
from torchslim.pipeline.options import Option, OptionTable, option
from torchslim.quant.api import qat, quantize
from torchslim.quant.config import DynamicQuantConfig, QuantConfig, WeightOnlyConfig
from torchslim.quant.sensitivity import layer_sensitivity
from torchslim.report import write_report
from torchslim.runtime import Session, TorchSession, runtimes_reading
from torchslim.runtime import open as open_session
from torchslim.train import TrainConfig, load_checkpoint

__all__ = ["QUANTIZE", "METHODS", "QuantizePlan", "QuantizeJob", "quantize_model",
           "sensitivity_report", "fake_quant_agreement", "run_quantize", "CALIB_BATCH"]

logger = logging.getLogger(__name__)

CALIB_BATCH = 32
QAT_SCHEDULE: dict[str, Any] = {"lr": 1e-3, "schedule": "cosine"}  # QAT fine-tunes gently
# method name -> the config type it quantizes with ("qat" trains a QuantConfig model)
METHODS: Registry[type] = Registry("method")
METHODS.add("ptq", QuantConfig)
METHODS.add("qat", QuantConfig)
METHODS.add("dynamic", DynamicQuantConfig)     # Linear and LSTM layers
METHODS.add("weight-only", WeightOnlyConfig)   # Linear layers only
_NAMES = {DynamicQuantConfig: "dynamic", WeightOnlyConfig: "weight-only"}


@dataclass(frozen=True, kw_only=True)
class QuantizePlan:
    """What a quantize job (``torchslim quantize``) or a recipe's quantize stage does."""

    config: QuantConfig | DynamicQuantConfig | WeightOnlyConfig
    qat: TrainConfig | None = None     # quantization-aware training (a QuantConfig only)
    calib_batches: int = 16            # calibration batches of 32 training images

    def __post_init__(self) -> None:
        if type(self.config) not in (QuantConfig, DynamicQuantConfig, WeightOnlyConfig):
            raise ConfigError(f"config must be a QuantConfig, DynamicQuantConfig or "
                              f"WeightOnlyConfig, not {type(self.config).__name__}")
        if self.qat is not None and not isinstance(self.config, QuantConfig):
            raise ConfigError("quantization-aware training needs a QuantConfig")
        if isinstance(self.calib_batches, bool) or not isinstance(self.calib_batches, int) \
                or self.calib_batches < 1:
            raise ConfigError(f"calib_batches={self.calib_batches!r} must be an integer >= 1")

    @property
    def static(self) -> bool:
        return isinstance(self.config, QuantConfig)

    @property
    def method(self) -> str:
        if self.static:
            return "qat" if self.qat is not None else "ptq"
        return _NAMES[type(self.config)]

    @property
    def bits(self) -> int:
        """Weight bits (activations are 8-bit, or float for weight-only)."""
        return self.config.weight.bits if isinstance(self.config, QuantConfig) else self.config.bits

    @property
    def label(self) -> str:
        """``w8a8``, ``w4a8``, or ``w8`` for weight-only: in artifact and candidate names."""
        return f"w{self.bits}" if self.method == "weight-only" else f"w{self.bits}a8"

    @property
    def precision(self) -> str:
        """The artifact's precision as a session reports it (``int8`` for w8a8)."""
        return "int8" if self.label == "w8a8" else self.label

    @property
    def observer(self) -> str | None:
        return self.config.activation_observer if isinstance(self.config, QuantConfig) else None


def _quantize_plan(table: OptionTable, v: dict[str, Any]) -> QuantizePlan:
    config_type = METHODS.get(v["method"])   # UnknownNameError listing the methods
    if v["method"] != "qat" and v["max_steps_per_epoch"] is not None:
        raise ConfigError(f"max_steps_per_epoch={v['max_steps_per_epoch']} caps the epochs of "
                          f"quantization-aware training, and method {v['method']!r} trains "
                          "nothing; drop it, or use method qat")
    qat_train = (TrainConfig(**table.kwargs(TrainConfig, v), **QAT_SCHEDULE)
                 if v["method"] == "qat" else None)
    return QuantizePlan(config=config_type(**table.kwargs(config_type, v)), qat=qat_train,
                        **table.kwargs(QuantizePlan, v))


# `torchslim quantize` (and `sensitivity`) and a recipe's quantize stage
QUANTIZE = OptionTable("quantize", (
    Option("method", {}, type=str, default="ptq",
           help="ptq, qat, dynamic (Linear, LSTM) or weight-only (Linear)."),
    option("observer", QuantConfig, field="activation_observer",
           help="Activation observer: minmax, moving_average, percentile, entropy, mse."),
    option("percentile", QuantConfig, field="activation_percentile",
           help="Percentile observer: clip activations at this percentile of |x| (99.9 clips "
           "harder; default 99.99)."),
    Option("bits", {QuantConfig: "weight.bits", DynamicQuantConfig: "bits",
                    WeightOnlyConfig: "bits"},
           help="Weight bits (2-8); activations are 8-bit."),
    option("rounding", QuantConfig,
           help="Weight rounding (ptq, qat): nearest, or adaround (learned up / down per "
           "weight on the calibration images, layer by layer; worth it at 4 bits)."),
    option("adaround_iterations", QuantConfig, field="adaround.iterations",
           help="AdaRound: Adam steps per layer."),
    option("adaround_reg", QuantConfig, field="adaround.reg_weight",
           help="AdaRound: weight (lambda) of the regulariser that drives each rounding to "
           "up or down."),
    option("calib_batches", QuantizePlan, help="Calibration batches of 32 training images."),
    option("qat_epochs", TrainConfig, field="epochs", default=1, type=int,
           help="Quantization-aware training epochs (method qat)."),
    option("max_steps_per_epoch", TrainConfig, flag=None,
           help="QAT: at most this many training batches per epoch (method qat)."),
    option("float_layers", QuantConfig, field="skip", flag=None,
           help="Layer names or regexes kept in float."),
    option("group_size", WeightOnlyConfig, default=None, flag=None, recipe=False,
           help="weight-only: one scale per output channel"),
), build=_quantize_plan)


@dataclass(frozen=True, kw_only=True)
class QuantizeJob:
    """``torchslim quantize``: the plan, on a checkpoint, measured on a runtime."""

    checkpoint: Path
    plan: QuantizePlan                   # QUANTIZE.plan(method="qat", ...)
    out: Path = Path("runs/quantize")
    runtime: str = "onnxruntime"         # where the artifact is measured
    threads: int = 2
    sensitivity: bool = False            # add the per-layer sensitivity table to the report
    batch_sizes: tuple[int, ...] = (1, 32)
    data_root: Path | None = None
    placement: bool = True               # time node variants on the runtime, keep what pays

    def __post_init__(self) -> None:
        if self.runtime not in runtimes_reading(".onnx"):
            raise ConfigError(f"runtime={self.runtime!r}; choose one of "
                              f"{', '.join(runtimes_reading('.onnx'))}")


def _calibration(data: DataBundle, plan: QuantizePlan) -> Any:
    return calibration_subset(data, plan.calib_batches * CALIB_BATCH, batch_size=CALIB_BATCH)


def _config_for(plan: QuantizePlan, model: nn.Module) -> Any:
    """The plan's config; the dynamic method quantizes the model's LSTMs too, if it has any."""
    config = plan.config
    if isinstance(config, DynamicQuantConfig) and any(type(m) is nn.LSTM for m in model.modules()):
        return dataclasses.replace(config, layers=("linear", "lstm"))
    return config


def quantize_model(model: nn.Module, data: DataBundle, plan: QuantizePlan, *,
                   threads: int | None = None) -> nn.Module:
    """The quantized model ``plan`` makes of ``model`` (calibrated, trained on ``threads``,
    or dynamic); its record names the kind, so ``torchslim.export`` writes its artifact."""
    config = _config_for(plan, model)
    if plan.qat is not None:
        return qat(model, data.train, config=config, val=data.val,
                   calibration=_calibration(data, plan), num_calib_batches=plan.calib_batches,
                   train_config=dataclasses.replace(plan.qat, threads=threads))
    calibration = _calibration(data, plan) if plan.static else None
    return quantize(model, config, calibration, num_batches=plan.calib_batches)


def sensitivity_report(model: nn.Module, data: DataBundle, plan: QuantizePlan,
                       *, num_batches: int = 8) -> dict[str, Any]:
    """Each layer quantized alone at the plan's settings, most sensitive first, scored on the
    validation split (the test split stays untouched for the final figures)."""
    if not plan.static:
        raise ConfigError(f"the sensitivity table quantizes layers statically; method "
                          f"{plan.method!r} has none (use ptq or qat)")
    rows = layer_sensitivity(model, plan.config, calibration=_calibration(data, plan),
                             data=data.val, num_batches=num_batches)
    return {"weight_bits": plan.bits, "observer": plan.observer, "split": "val",
            "layers": [r.to_dict() for r in rows]}


def fake_quant_agreement(prepared: nn.Module, session: Session, data: DataBundle, *,
                         outputs: np.ndarray | None = None) -> float:
    """Share of test images on which the artifact and the fake-quant model agree.
    ``outputs``: the artifact's logits on the test split in order (``evaluate`` collected
    them), so the artifact is not run again."""
    fake, art = [], []
    prepared.eval()
    with torch.inference_mode():
        for x, _ in data.test:
            fake.append(prepared(x).argmax(1).numpy())
            if outputs is None:
                art.append(session.run(x.numpy()).argmax(1))
    if not fake:
        return 0.0
    a = np.concatenate(fake)
    b = np.concatenate(art) if outputs is None else np.asarray(outputs).argmax(1)
    if a.shape != b.shape:
        raise ConfigError(f"outputs holds {len(b)} rows for {len(a)} test images; pass the "
                          "artifact's logits on the same test split")
    return float(np.mean(a == b))


def run_quantize(job: QuantizeJob) -> dict[str, Any]:
    torch.set_num_threads(job.threads)
    plan = job.plan
    model, meta = load_checkpoint(job.checkpoint)
    data = load_data(meta.get("dataset") or "fashion-mnist", root=job.data_root)
    shape = data.info.input_shape
    stem = Path(job.checkpoint).stem
    prepared = quantize_model(model, data, plan, threads=job.threads)
    fp32_path = export_onnx(model, job.out / f"{stem}-fp32.onnx", input_shape=shape)
    int8_path = export(prepared, job.out / f"{stem}-{plan.method}-{plan.label}.onnx",
                       input_shape=shape)
    placed = None
    if job.placement and plan.static:  # QDQ artifacts; dynamic and weight-only have no Q/DQ
        placed = place_for_runtime(int8_path, runtime=job.runtime, batch=max(job.batch_sizes),
                                   threads=job.threads)

    def opener(path: Path, threads: int, precision: str | None = None) -> Session:
        return open_session(path, job.runtime, threads=threads, precision=precision)

    common: dict[str, Any] = {"batch_sizes": job.batch_sizes,
                              "class_names": list(data.info.class_names)}
    base = evaluate(TorchSession(model, threads=job.threads), data.test,
                    name=f"{stem}-fp32-torch", **common)
    fp32 = evaluate(opener(fp32_path, job.threads), data.test, reference=base, model=model,
                    name=f"{stem}-fp32-{job.runtime}", **common)
    int8_session = opener(int8_path, job.threads, plan.precision)
    int8 = evaluate(int8_session, data.test, reference=base, model=model,
                    name=f"{stem}-{plan.method}-{plan.label}-{job.runtime}", **common)
    int8.extra["fake_quant_agreement"] = fake_quant_agreement(prepared, int8_session, data)
    base.agreement, base.cosine = 1.0, 1.0
    extra: dict[str, Any] = {"quantization": _describe(prepared, plan)}
    if placed is not None:
        extra["placement"] = placed.to_dict()
    if job.sensitivity:
        extra["sensitivity"] = sensitivity_report(model, data, plan)
    paths = write_report(job.out, baseline=base, candidates=[fp32, int8],
                         dataset={"name": data.info.name, "split": "test", "n": base.n},
                         class_names=list(data.info.class_names), title="torchslim quantize",
                         extra=extra)
    return {"report": paths, "results": [base, fp32, int8], "artifact": int8_path}


def _describe(prepared: nn.Module, plan: QuantizePlan) -> dict[str, Any]:
    info = record_of(prepared).quantization
    return {"method": plan.method, "weight_bits": plan.bits,
            "activation_bits": None if plan.method == "weight-only" else 8,
            "observer": plan.observer,
            "rounding": plan.config.rounding if isinstance(plan.config, QuantConfig) else None,
            "calibration_images": plan.calib_batches * CALIB_BATCH if plan.static else 0,
            "quantized_layers": list(info.quantized) if info else [],
            "float_layers": [str(x) for x in info.kept_float] if info else []}
