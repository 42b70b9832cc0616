"""The quantize job: checkpoint -> PTQ or QAT -> INT8 artifact on a runtime -> report.

Every figure in its report comes from the runtime it names: the FP32 baseline and the
INT8 candidate run on the same runtime, with the same threads, on the same test split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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
from torchslim.exporters import export_dynamic, export_onnx, export_qdq, export_weight_only
from torchslim.quant import QuantSpec, quantize_dynamic, quantize_weight_only
from torchslim.quant.api import qat, quantize
from torchslim.quant.config import DynamicQuantConfig, QuantConfig, WeightOnlyConfig
from torchslim.quant.sensitivity import layer_sensitivity
from torchslim.report import write_report
from torchslim.runtime import Session, TorchSession, runtimes_reading
from torchslim.runtime import open as open_session
from torchslim.train import TrainConfig, load_checkpoint

logger = logging.getLogger(__name__)

CALIB_BATCH = 32
# method -> (quantize(model, data, job) -> fake-quant model, exporter(model, path, input_shape=))
METHODS: Registry[tuple[Callable[..., nn.Module], Callable[..., Path]]] = Registry("method")


@dataclass(frozen=True, kw_only=True)
class QuantizeJob:
    checkpoint: Path
    out: Path = Path("runs/quantize")
    method: str = "ptq"              # "ptq", "qat", "dynamic" or "weight-only"
    observer: str = "minmax"         # activation observer
    bits: int = 8                    # weight bits; activations stay 8-bit (u8)
    calib_batches: int = 16          # of 32 training images each
    runtime: str = "onnxruntime"     # where the artifact is measured
    threads: int = 2
    qat_epochs: int = 1
    sensitivity: bool = False        # add the per-layer sensitivity table to the report
    batch_sizes: tuple[int, ...] = (1, 32)
    data_root: Path | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r}; choose one of "
                              f"{', '.join(METHODS.names())}")
        if self.runtime not in runtimes_reading(".onnx"):
            raise ConfigError(f"runtime={self.runtime!r}; choose one of "
                              f"{', '.join(runtimes_reading('.onnx'))}")
        if self.calib_batches < 1:
            raise ConfigError(f"calib_batches={self.calib_batches} must be >= 1")
        if self.qat_epochs < 1:
            raise ConfigError(f"qat_epochs={self.qat_epochs} must be >= 1")

    def config(self) -> QuantConfig:
        return QuantConfig(weight=QuantSpec(bits=self.bits, granularity="per_channel", axis=0),
                           activation_observer=self.observer)


def _calibration(data: DataBundle, job: QuantizeJob) -> Any:
    return calibration_subset(data, job.calib_batches * CALIB_BATCH, batch_size=CALIB_BATCH)


def _ptq(model: nn.Module, data: DataBundle, job: QuantizeJob) -> nn.Module:
    return quantize(model, job.config(), calibration=_calibration(data, job),
                    num_batches=job.calib_batches)


def _qat(model: nn.Module, data: DataBundle, job: QuantizeJob) -> nn.Module:
    return qat(model, data.train, config=job.config(), val=data.val,
               calibration=_calibration(data, job), num_calib_batches=job.calib_batches,
               train_config=TrainConfig(epochs=job.qat_epochs, lr=1e-3, schedule="cosine",
                                        threads=job.threads))


def _dynamic(model: nn.Module, data: DataBundle, job: QuantizeJob) -> nn.Module:
    has_lstm = any(isinstance(m, nn.LSTM) for m in model.modules())
    layers = ("linear", "lstm") if has_lstm else ("linear",)
    return quantize_dynamic(model, DynamicQuantConfig(bits=job.bits, layers=layers))


def _weight_only(model: nn.Module, data: DataBundle, job: QuantizeJob) -> nn.Module:
    return quantize_weight_only(model, WeightOnlyConfig(bits=job.bits, group_size=None))


METHODS.add("ptq", (_ptq, export_qdq))
METHODS.add("qat", (_qat, export_qdq))
METHODS.add("dynamic", (_dynamic, export_dynamic))        # Linear and LSTM layers
METHODS.add("weight-only", (_weight_only, export_weight_only))  # Linear layers only


def quantize_model(model: nn.Module, data: DataBundle, job: QuantizeJob) -> nn.Module:
    """The fake-quant model the job's method produces (calibrated, trained or dynamic)."""
    return METHODS.get(job.method)[0](model, data, job)


def sensitivity_report(model: nn.Module, data: DataBundle, job: QuantizeJob,
                       *, num_batches: int = 8) -> dict[str, Any]:
    """Each layer quantized alone at the job's settings, most sensitive first, scored on the
    validation split (the test split stays untouched for the final figures)."""
    rows = layer_sensitivity(model, job.config(), calibration=_calibration(data, job),
                             data=data.val, num_batches=num_batches)
    return {"weight_bits": job.bits, "observer": job.observer, "split": "val",
            "layers": [r.to_dict() for r in rows]}


def fake_quant_agreement(prepared: nn.Module, session: Session, data: DataBundle) -> float:
    """Share of test images on which the artifact and the fake-quant model agree."""
    same = total = 0
    prepared.eval()
    with torch.inference_mode():
        for x, _ in data.test:
            a = prepared(x).argmax(1).numpy()
            b = session.run(x.numpy()).argmax(1)
            same += int(np.sum(a == b))
            total += len(a)
    return same / max(total, 1)


def run_quantize(job: QuantizeJob) -> dict[str, Any]:
    torch.set_num_threads(job.threads)
    model, meta = load_checkpoint(job.checkpoint)
    data = load_data(meta.get("dataset") or "fashion-mnist", root=job.data_root)
    shape = data.info.input_shape
    stem = Path(job.checkpoint).stem
    prepared = quantize_model(model, data, job)
    precision = f"w{job.bits}" if job.method == "weight-only" else f"w{job.bits}a8"
    fp32_path = export_onnx(model, job.out / f"{stem}-fp32.onnx", input_shape=shape)
    exporter = METHODS.get(job.method)[1]
    int8_path = exporter(prepared, job.out / f"{stem}-{job.method}-{precision}.onnx",
                         input_shape=shape)
    def opener(path: Path, threads: int, precision: str | None = None) -> Session:
        return open_session(path, job.runtime, threads=threads, precision=precision)

    common: dict[str, Any] = {"batch_sizes": job.batch_sizes,
                              "class_names": list(data.info.class_names)}
    base = evaluate(TorchSession(model, threads=job.threads), data.test,
                    name=f"{stem}-fp32-torch", **common)
    fp32 = evaluate(opener(fp32_path, job.threads), data.test, reference=base, model=model,
                    name=f"{stem}-fp32-{job.runtime}", **common)
    int8_session = opener(int8_path, job.threads, "int8" if precision == "w8a8" else precision)
    int8 = evaluate(int8_session, data.test, reference=base, model=model,
                    name=f"{stem}-{job.method}-{precision}-{job.runtime}", **common)
    int8.extra["fake_quant_agreement"] = fake_quant_agreement(prepared, int8_session, data)
    base.agreement, base.cosine = 1.0, 1.0
    extra: dict[str, Any] = {"quantization": _describe(prepared, job)}
    if job.sensitivity:
        extra["sensitivity"] = sensitivity_report(model, data, job)
    paths = write_report(job.out, baseline=base, candidates=[fp32, int8],
                         dataset={"name": data.info.name, "split": "test", "n": base.n},
                         class_names=list(data.info.class_names), title="torchslim quantize",
                         extra=extra)
    return {"report": paths, "results": [base, fp32, int8], "artifact": int8_path}


def _describe(prepared: nn.Module, job: QuantizeJob) -> dict[str, Any]:
    info = record_of(prepared).quantization
    return {"method": job.method, "weight_bits": job.bits, "activation_bits": 8,
            "observer": job.observer, "calibration_images": job.calib_batches * CALIB_BATCH,
            "quantized_layers": list(info.quantized) if info else [],
            "float_layers": [str(x) for x in info.kept_float] if info else []}
