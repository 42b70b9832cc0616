"""INT8 QDQ ONNX from a prepared (fake-quant) model.

The artifact is the "explicit quantization" graph that ONNX Runtime and TensorRT read:

* every activation quantizer becomes ``QuantizeLinear -> DequantizeLinear`` (u8 / s8,
  per-tensor scale and zero point as initializers);
* every Conv / Gemm / MatMul weight is an INT8 initializer followed by a
  ``DequantizeLinear`` (per-channel scales: axis 0 for Conv and Gemm(transB=1) weights,
  axis 1 for MatMul weights stored ``[in, out]``), zero points int8 zeros for symmetric
  weights;
* a bias whose layer reads a dequantized input is INT32 with scale
  ``input_scale * weight_scale`` (per channel) and zero point 0, behind its own
  ``DequantizeLinear``.

That is the pattern ONNX Runtime fuses into its integer kernels (``DQ -> Conv -> Q``
becomes ``QLinearConv``, ``DQ, DQ -> Add -> Q`` becomes ``QLinearAdd``, ...);
:func:`ort_fused_ops` shows what it actually runs.

Weights of 2 to 7 bits are stored as int8 values inside the narrower range (ONNX Runtime
has no int4 convolution kernels), so such a file is about 1/4 of FP32, not 1/8.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from torchslim import _io
from torchslim.exporters._onnx_graph import rewrite_weights_
from torchslim.exporters.onnx import export_onnx
from torchslim.errors import ConfigError, UnsupportedModelError
from torchslim.quant.affine import QuantSpec, dequantize_tensor, quantize_tensor
from torchslim.quant.fake_quant import FakeQuantize, LearnableFakeQuantize

logger = logging.getLogger(__name__)

__all__ = ["export_qdq", "ort_fused_ops"]

OPSET = 17
_QUANTIZERS = (FakeQuantize, LearnableFakeQuantize)


@dataclass(frozen=True)
class BakedWeight:
    """The integer form of one layer's weight, found again in the ONNX graph by value."""

    module: str
    q: np.ndarray  # int8 / uint8, the float weight's shape
    scale: np.ndarray  # float32, (C,) per channel or () per tensor
    zero_point: np.ndarray  # same dtype as q, same shape as scale
    axis: int  # channel axis of the per-channel scale in the torch weight

    def dequantized(self) -> np.ndarray:
        """The float weight the torch model computes with, as in ``affine.dequantize``."""
        shape = [1] * self.q.ndim
        if self.scale.ndim == 1:
            shape[self.axis] = -1
        diff = self.q.astype(np.int32) - self.zero_point.astype(np.int32).reshape(shape)
        return diff.astype(np.float32) * self.scale.reshape(shape)


def export_qdq(prepared: nn.Module, path: str | os.PathLike[str], *,
               input_shape: tuple[int, ...], opset: int = OPSET) -> Path:
    """Write ``prepared`` (a calibrated, frozen fake-quant model) as an INT8 QDQ ONNX file.

    ``input_shape`` excludes the batch axis, which is dynamic. ``prepared`` is left
    untouched. Learned (LSQ) step sizes export as ordinary scales with zero point 0.
    """
    if opset < 13:
        raise ConfigError(f"opset={opset} is too old for per-channel QDQ; use opset >= 13")
    model = _copy_model(prepared).eval().cpu()
    baked = _bake_weights_(model)
    _replace_activation_quantizers_(model)
    if not baked:
        raise UnsupportedModelError(
            f"{type(prepared).__name__} has no quantized Conv/Linear (no module with a "
            "weight_fake_quant); prepare it with torchslim.quant first")
    proto = _export_proto(model, input_shape, opset)
    found, biases = rewrite_weights_(proto, baked)
    missing = [b.module for b in baked if b.module not in found]
    if missing:
        logger.warning("weights of %s were not found as Conv/Gemm/MatMul initializers in "
                       "the exported graph; they stay float (fake-quantized values)",
                       ", ".join(missing))
    out = _write_checked(proto, path)
    logger.info("exported %s: %d int8 weights, %d int32 biases, %d bytes",
                out, len(found), biases, out.stat().st_size)
    return out


def ort_fused_ops(path: str | os.PathLike[str], *, level: str = "all") -> Counter[str]:
    """Op types in the graph ONNX Runtime runs after its optimizations (``level`` "all" or
    "extended"): e.g. ``QLinearConv`` where a QDQ convolution was fused, ``Conv`` (or
    ``FusedConv``) where it stayed in float."""
    import onnxruntime as ort

    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
    if level not in levels:
        raise ConfigError(f"level={level!r} must be one of {', '.join(levels)}")
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[level]
        options.optimized_model_filepath = str(optimized)
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(optimized), load_external_data=False).graph
    return Counter(node.op_type for node in graph.node)


# --- torch side ---------------------------------------------------------------------


def _copy_model(model: nn.Module) -> nn.Module:
    """A deep copy whose parameters and buffers we may change; metadata that cannot be
    copied (e.g. a mapping proxy inside a stored config) is shared, never modified."""
    try:
        return copy.deepcopy(model)
    except (TypeError, copy.Error):
        memo: dict[int, object] = {}
        for module in model.modules():
            for key, value in vars(module).items():
                if key in ("_modules", "_parameters", "_buffers") or isinstance(value, Tensor):
                    continue
                try:
                    copy.deepcopy(value)
                except (TypeError, copy.Error):
                    memo[id(value)] = value
        return copy.deepcopy(model, memo)


def _bake_weights_(model: nn.Module) -> list[BakedWeight]:
    """Replace each quantized weight by its fake-quantized value and switch the weight
    quantizer off; return the integer weights to write into the graph."""
    baked = []
    for name, module in list(model.named_modules()):
        fq = getattr(module, "weight_fake_quant", None)
        weight = getattr(module, "weight", None)
        if fq is None or not isinstance(weight, Tensor):
            continue
        scale, zero_point, spec = _weight_qparams(name, fq, weight.detach())
        if spec is None:
            continue  # quantizer switched off: the layer stays float
        q = quantize_tensor(weight.detach().float(), scale, zero_point, spec)  # int8 / uint8
        module.weight = nn.Parameter(dequantize_tensor(q, scale, zero_point, spec), requires_grad=False)
        module.weight_fake_quant = nn.Identity()
        if spec.granularity == "per_group":
            logger.warning("%s: per-group weights are exported as float (fake-quantized "
                           "values); ONNX Runtime has no per-group convolution kernels", name)
            continue
        per_channel = spec.granularity == "per_channel"
        qparam_shape = (-1,) if per_channel else ()  # (C,) or a scalar
        baked.append(BakedWeight(
            module=name, q=q.numpy(), scale=scale.float().reshape(qparam_shape).numpy(),
            zero_point=zero_point.reshape(qparam_shape).numpy().astype(q.numpy().dtype),
            axis=spec.axis % q.dim() if per_channel else 0))
    return baked


def _weight_qparams(name: str, fq: nn.Module, weight: Tensor
                    ) -> tuple[Tensor, Tensor, QuantSpec | None]:
    """``(scale, zero_point, spec)`` the torch forward would use now; spec None when the
    weight is not fake-quantized."""
    if isinstance(fq, LearnableFakeQuantize):
        _check_materialized(name + ".weight_fake_quant", fq)
        scale = fq.scale.detach().float()
        return scale, torch.zeros_like(scale, dtype=torch.int32), fq.spec
    if not isinstance(fq, FakeQuantize):
        raise UnsupportedModelError(f"{name}.weight_fake_quant is a {type(fq).__name__}; "
                                    "export understands FakeQuantize and LearnableFakeQuantize")
    if not fq.fake_quant_enabled:
        return torch.empty(0), torch.empty(0), None
    if fq.observer_enabled:
        # What the torch forward does on every call: observe the weight, then use the grid.
        fq = copy.deepcopy(fq)
        fq.observer(weight)
        fq._stale = True
        fq.enable_observer(False)
    if fq.scale.numel() == 0:
        raise ConfigError(f"{name}.weight_fake_quant has no scale; calibrate first")
    return fq.scale.detach().float(), fq.zero_point.detach().to(torch.int32), fq.spec


def _check_materialized(name: str, fq: LearnableFakeQuantize) -> None:
    if isinstance(fq.scale, nn.parameter.UninitializedParameter):
        raise ConfigError(f"{name} (LSQ) has no step size yet; calibrate first "
                          "(run one batch through the model)")


class _QDQ(nn.Module):
    """Export form of an activation quantizer: traces to QuantizeLinear/DequantizeLinear.

    torch's ONNX symbolic only accepts the full 8-bit ranges, so a narrower grid (e.g.
    4-bit activations) is clamped first; the int8 range [-127, 127] of symmetric
    activations uses the full [-128, 127] range (one extra level, no Clip node that would
    keep ONNX Runtime from fusing)."""

    def __init__(self, scale: Tensor, zero_point: Tensor, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec
        self.per_channel = spec.granularity == "per_channel"
        shape = (-1,) if self.per_channel else ()  # (C,) or a scalar
        self.register_buffer("scale", scale.detach().float().reshape(shape))
        self.register_buffer("zero_point", zero_point.detach().to(torch.int32).reshape(shape))
        self.lo, self.hi = (0, 255) if not spec.signed else (-128, 127)
        self.clamp = spec.bits < 8

    def forward(self, x: Tensor) -> Tensor:
        if self.clamp:
            lo = (self.spec.qmin - self.zero_point) * self.scale
            hi = (self.spec.qmax - self.zero_point) * self.scale
            x = torch.maximum(torch.minimum(x, self._bcast(hi, x)), self._bcast(lo, x))
        if self.per_channel:
            return torch.fake_quantize_per_channel_affine(
                x, self.scale, self.zero_point, self.spec.axis % x.dim(), self.lo, self.hi)
        return torch.fake_quantize_per_tensor_affine(
            x, float(self.scale), int(self.zero_point), self.lo, self.hi)

    def _bcast(self, v: Tensor, x: Tensor) -> Tensor:
        if not self.per_channel:
            return v
        shape = [1] * x.dim()
        shape[self.spec.axis % x.dim()] = -1
        return v.reshape(shape)


def _replace_activation_quantizers_(model: nn.Module) -> None:
    """Swap every activation quantizer for a frozen :class:`_QDQ` (or drop it when off)."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, _QUANTIZERS) or not name:
            continue
        if isinstance(module, LearnableFakeQuantize):
            _check_materialized(name, module)
            scale = module.scale.detach().float()
            new: nn.Module = _QDQ(scale, torch.zeros_like(scale, dtype=torch.int32), module.spec)
        elif not module.fake_quant_enabled and not module.observer_enabled:
            new = nn.Identity()  # deliberately kept in float
        else:
            if module.observer_enabled or module.scale.numel() == 0:
                raise ConfigError(
                    f"activation quantizer {name!r} is not calibrated and frozen "
                    f"(observer_enabled={module.observer_enabled}, "
                    f"scale={'set' if module.scale.numel() else 'empty'}); calibrate first "
                    "(torchslim.quant.calibrate_ freezes the observers) or call "
                    ".enable_observer(False) after your own calibration batches")
            if module.spec.granularity == "per_group":
                raise UnsupportedModelError(f"{name}: per-group activation quantization has "
                                            "no QDQ form; use per_tensor activations")
            new = _QDQ(module.scale, module.zero_point, module.spec)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, new)


def _export_proto(model: nn.Module, input_shape: tuple[int, ...], opset: int) -> onnx.ModelProto:
    """The graph torch.onnx writes for ``model`` (through ``export_onnx``), loaded for the
    integer rewrites to edit."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = export_onnx(model, Path(tmp) / "raw.onnx", input_shape=input_shape, opset=opset)
        return onnx.load(str(raw))


def _write_checked(proto: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    onnx.checker.check_model(proto)
    return _io.write_bytes(path, proto.SerializeToString())