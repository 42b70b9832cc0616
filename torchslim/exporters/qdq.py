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
:func:`ort_fused_ops` shows what it actually runs. HardSigmoid and HardSwish, which it has no
integer kernel for, are written as the Add and Mul it has (``_qdq_gates``).

Weights of 2 to 7 bits are stored as int8 values inside the narrower range (ONNX Runtime
has no int4 convolution kernels), so such a file is about 1/4 of FP32, not 1/8.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from torchslim._record import record_of
from torchslim.capture.inputs import DynamicDims
from torchslim.errors import ConfigError, UnsupportedModelError
from torchslim.exporters._onnx_graph import drop_requantize_pairs_, rewrite_weights_
from torchslim.exporters._qdq_gates import hard_gates_to_integer_
from torchslim.exporters.onnx import OPSET, export_proto, write_checked
from torchslim.exporters.weights import (bake_weights_, check_materialized, check_quantized_as,
                                         copy_model)
from torchslim.quant.affine import QuantSpec
from torchslim.quant.config import QuantConfig
from torchslim.quant.fake_quant import FakeQuantize, LearnableFakeQuantize
from torchslim.quant.reduce_range import resolve_reduce_range

try:  # registers torch.ops.quantized_decomposed (PT2E's quantize / dequantize ops)
    import torch.ao.quantization.fx._decomposed  # noqa: F401
    _DECOMPOSED: Any = torch.ops.quantized_decomposed
except (ImportError, AttributeError):  # without them the TorchScript exporter writes QDQ
    _DECOMPOSED = None

logger = logging.getLogger(__name__)

__all__ = ["export_qdq", "ort_fused_ops"]

_QUANTIZERS = (FakeQuantize, LearnableFakeQuantize)


def export_qdq(prepared: nn.Module, path: str | os.PathLike[str], *, example_inputs: Any = None,
               input_shape: tuple[int, ...] | None = None,
               dynamic_dims: DynamicDims | None = None,
               output_names: Sequence[str] | None = None, opset: int = OPSET,
               exporter: str = "auto") -> Path:
    """Write ``prepared`` (a calibrated, frozen fake-quant model) as an INT8 QDQ ONNX file.

    Inputs as in ``export_onnx``: ``example_inputs`` (a tensor, tuple or dict, any dtypes)
    or the ``input_shape`` shorthand; dim 0 of every input is the dynamic "batch",
    ``dynamic_dims`` names more. ``prepared`` is left untouched. Learned (LSQ) step sizes
    export as ordinary scales with zero point 0.
    """
    if opset < 13:
        raise ConfigError(f"opset={opset} is too old for per-channel QDQ; use opset >= 13")
    check_quantized_as(prepared, QuantConfig, "export_qdq")
    _note_full_range(prepared)
    model = copy_model(prepared).eval().cpu()
    baked = bake_weights_(model)
    _replace_activation_quantizers_(model)
    if not baked:
        raise UnsupportedModelError(
            f"{type(prepared).__name__} has no quantized Conv/Linear (no module with a "
            "weight_fake_quant); prepare it with torchslim.quant first")
    proto, used = export_proto(model, example_inputs, input_shape=input_shape,
                               dynamic_dims=dynamic_dims, output_names=output_names, opset=opset,
                               exporter=exporter, before=lambda name: _use_ops_of_(model, name))
    found, biases = rewrite_weights_(proto, baked)
    pairs = drop_requantize_pairs_(proto.graph)
    gates = hard_gates_to_integer_(proto.graph)
    missing = [b.module for b in baked if b.module not in found]
    if missing:
        logger.warning("weights of %s were not found as Conv/Gemm/MatMul initializers in "
                       "the exported graph; they stay float (fake-quantized values)",
                       ", ".join(missing))
    out = write_checked(proto, path)
    logger.info("exported %s (%s exporter): %d int8 weights, %d int32 biases, %d requantize "
                "pairs dropped, %d hard gates on integers, %d bytes", out, used, len(found),
                biases, pairs, gates, out.stat().st_size)
    _warn_float_on_runtime(out, len(found))
    return out


def _warn_float_on_runtime(path: Path, weights: int) -> None:
    """Say so when ONNX Runtime runs int8 weights in float (never silently slower)."""
    try:
        floats = float_weighted_ops(path)
    except ImportError:   # no ONNX Runtime here: nothing to check against
        return
    if floats:
        shown = ", ".join(floats[:5]) + (f" and {len(floats) - 5} more" if len(floats) > 5 else "")
        logger.warning("%d of the %d int8 weights of %s run in float on ONNX Runtime (%s): "
                       "their inputs are not quantized, so no integer kernel takes them; "
                       "capture the model whole (see the capture route in the log) or keep "
                       "those layers in float", len(floats), weights, path.name, shown)


def _note_full_range(prepared: nn.Module) -> None:
    """Say so when 8-bit weights meet a CPU whose u8s8 kernels saturate."""
    info = record_of(prepared).quantization
    if info is None or info.reduce_range is not False:
        return
    reduce, _ = resolve_reduce_range("auto")
    if reduce:
        logger.warning("%s has full-range 8-bit weights, but ONNX Runtime's u8s8 kernels on "
                       "this x86 CPU (no VNNI) saturate int16 pair sums: the artifact will "
                       "differ from the fake-quant model here; quantize with "
                       "QuantConfig(reduce_range='auto') for an exact artifact",
                       type(prepared).__name__)


def ort_fused_ops(path: str | os.PathLike[str], *, level: str = "all") -> Counter[str]:
    """Op types in the graph ONNX Runtime runs after its optimizations (``level`` "all" or
    "extended"): e.g. ``QLinearConv`` where a QDQ convolution was fused, ``Conv`` (or
    ``FusedConv``) where it stayed in float."""
    return Counter(node.op_type for node in _ort_graph(path, level).node)


def _ort_graph(path: str | os.PathLike[str], level: str = "all") -> onnx.GraphProto:
    """The graph ONNX Runtime runs after its optimizations at ``level``."""
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
        return onnx.load(str(optimized), load_external_data=False).graph


def float_weighted_ops(path: str | os.PathLike[str]) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes that ONNX Runtime runs in float on an int8
    weight (a DequantizeLinear of an initializer feeds them): their input was not
    quantized, so the runtime could not fuse them into an integer kernel."""
    graph = _ort_graph(path)
    constants = {i.name for i in graph.initializer}
    dequantized = {n.output[0] for n in graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in constants}
    return [n.name or n.output[0] for n in graph.node
            if any(k in n.op_type for k in ("Conv", "Gemm", "MatMul"))
            and not n.op_type.startswith(("QLinear", "QGemm", "DynamicQuantize"))
            and "Integer" not in n.op_type and any(i in dequantized for i in n.input)]


class _QDQ(nn.Module):
    """Export form of an activation quantizer: exports as QuantizeLinear/DequantizeLinear.

    For the dynamo exporter it calls the ``quantized_decomposed`` quantize / dequantize
    ops (which its op library writes as Q / DQ), for the TorchScript exporter
    ``torch.fake_quantize_*`` (whose ONNX symbolic does). Both only write the full 8-bit
    ranges, so a narrower grid (e.g. 4-bit activations) is clamped first; the int8 range
    [-127, 127] of symmetric activations uses the full [-128, 127] range (one extra level,
    no Clip node that would keep ONNX Runtime from fusing)."""

    def __init__(self, scale: Tensor, zero_point: Tensor, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec
        self.per_channel = spec.granularity == "per_channel"
        shape = (-1,) if self.per_channel else ()  # (C,) or a scalar
        self.register_buffer("scale", scale.detach().float().reshape(shape))
        self.register_buffer("zero_point", zero_point.detach().to(torch.int32).reshape(shape))
        self.lo, self.hi = (0, 255) if not spec.signed else (-128, 127)
        self.dtype = torch.int8 if spec.signed else torch.uint8
        # python numbers: torch.export cannot read a tensor's value while tracing
        self.scale_value = float(scale.reshape(-1)[0]) if not self.per_channel else 0.0
        self.zero_point_value = int(zero_point.reshape(-1)[0]) if not self.per_channel else 0
        self.clamp = spec.bits < 8
        self.exporter = "torchscript"

    def forward(self, x: Tensor) -> Tensor:
        if self.clamp:
            lo = (self.spec.qmin - self.zero_point) * self.scale
            hi = (self.spec.qmax - self.zero_point) * self.scale
            x = torch.maximum(torch.minimum(x, self._bcast(hi, x)), self._bcast(lo, x))
        if self.exporter == "dynamo" and _DECOMPOSED is not None:
            return self._decomposed(x)
        if self.per_channel:
            return torch.fake_quantize_per_channel_affine(
                x, self.scale, self.zero_point, self.spec.axis % x.dim(), self.lo, self.hi)
        return torch.fake_quantize_per_tensor_affine(
            x, float(self.scale), int(self.zero_point), self.lo, self.hi)

    def _decomposed(self, x: Tensor) -> Tensor:
        args = (self.lo, self.hi, self.dtype)
        if self.per_channel:
            axis = self.spec.axis % x.dim()
            q = _DECOMPOSED.quantize_per_channel.default(x, self.scale, self.zero_point, axis, *args)
            return _DECOMPOSED.dequantize_per_channel.default(q, self.scale, self.zero_point,
                                                              axis, *args)
        scale, zp = self.scale_value, self.zero_point_value
        q = _DECOMPOSED.quantize_per_tensor.default(x, scale, zp, *args)
        return _DECOMPOSED.dequantize_per_tensor.default(q, scale, zp, *args)

    def _bcast(self, v: Tensor, x: Tensor) -> Tensor:
        if not self.per_channel:
            return v
        shape = [1] * x.dim()
        shape[self.spec.axis % x.dim()] = -1
        return v.reshape(shape)


def _use_ops_of_(model: nn.Module, exporter: str) -> None:
    """Make every activation quantizer export through ``exporter``'s ops."""
    for module in model.modules():
        if isinstance(module, _QDQ):
            module.exporter = exporter


def _replace_activation_quantizers_(model: nn.Module) -> None:
    """Swap every activation quantizer for a frozen :class:`_QDQ` (or drop it when off)."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, _QUANTIZERS) or not name:
            continue
        if isinstance(module, LearnableFakeQuantize):
            check_materialized(name, module)
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
