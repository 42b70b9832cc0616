"""Per-layer sensitivity and mixed precision.

Sensitivity (Nagel et al. 2021, section 4): quantize ONE layer at a time, the rest in
float, and record the metric drop and the output SQNR against the float model. Instead of
preparing the model once per layer, it is calibrated once and each layer's quantizers
(its weights and the activation quantizer feeding it) are switched on alone: the same
grids, N times faster.

Mixed precision then keeps the most sensitive layers in float or at 8-bit weights, or
raises layers to 8 bits in sensitivity order while a weight-size budget allows.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from torchslim import _progress
from torchslim._registry import Registry
from torchslim.errors import ConfigError
from torchslim.quant.affine import sqnr_db
from torchslim.quant.api import quantize
from torchslim.quant.config import AdaRoundConfig, LayerOverride, QuantConfig
from torchslim.quant.prepare import fake_quantizers, quant_info, set_fake_quant_

__all__ = ["LayerSensitivity", "layer_sensitivity", "mixed_precision_config", "weight_bytes",
           "METRICS"]

logger = logging.getLogger(__name__)

# name -> fn(logits (N, K), labels (N,)) -> score in points (higher is better)
METRICS: Registry[Callable[[Tensor, Tensor], float]] = Registry("sensitivity metric")
METRICS.add("top1", lambda out, y: 100.0 * float((out.argmax(1) == y).float().mean()))


SQNR_CAP_DB = 200.0


@dataclass(frozen=True)
class LayerSensitivity:
    """How much quantizing this layer alone costs."""

    name: str
    metric_drop: float  # float score - score with only this layer quantized, in points
    sqnr_db: float      # model output SQNR vs the float model, this layer quantized alone
    params: int         # weight elements, for size budgets

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # Identical outputs give an infinite SQNR, which JSON cannot hold; float32 noise
        # sits far below 200 dB, so the cap loses nothing.
        d["sqnr_db"] = min(self.sqnr_db, SQNR_CAP_DB)
        return d


def _eval_batches(data: Iterable[Any], num_batches: int) -> list[tuple[Tensor, Tensor]]:
    out = []
    for i, batch in enumerate(data):
        if i >= num_batches:
            break
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ConfigError("layer_sensitivity needs (x, y) batches in `data` to score a metric")
        out.append((batch[0], batch[1]))
    if not out:
        raise ConfigError("layer_sensitivity: `data` yielded no batches")
    return out


@torch.no_grad()
def _run(model: nn.Module, evals: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    logits = torch.cat([model(x) for x, _ in evals])  # (N, K)
    return logits, torch.cat([y for _, y in evals])


def layer_sensitivity(model: nn.Module, config: QuantConfig = QuantConfig(), *,
                      calibration: Iterable[Any], data: Iterable[Any], num_batches: int = 8,
                      metric: str = "top1") -> list[LayerSensitivity]:
    """Quantize each layer of ``config`` alone; most sensitive (largest drop) first.

    Calibrates once on ``num_batches`` of ``calibration`` and scores on ``num_batches``
    of ``data`` (``(x, y)`` batches). Layers the config keeps in float are not listed.
    """
    score = METRICS.get(metric)
    # nearest rounding and the float bias: with fake quantization off, the "float"
    # reference must be the float model (AdaRound and bias correction change the weights)
    plain = dataclasses.replace(config, bias_correction=False, rounding="nearest",
                                adaround=AdaRoundConfig())
    prepared = quantize(model, plain, calibration=calibration, num_batches=num_batches)
    prepared.eval()
    evals = _eval_batches(data, num_batches)
    info = quant_info(prepared)
    quantizers = dict(fake_quantizers(prepared))
    set_fake_quant_(prepared, False)
    ref, labels = _run(prepared, evals)
    ref_score = score(ref, labels)
    results = []
    for name in _progress.track(info.quantized, description="sensitivity",
                                total=len(info.quantized)):
        group = [f"{name}.weight_fake_quant", *info.layer_inputs.get(name, ())]
        for q in group:
            quantizers[q].enable_fake_quant(True)
        out, _ = _run(prepared, evals)
        for q in group:
            quantizers[q].enable_fake_quant(False)
        params = prepared.get_submodule(name).weight.numel()
        results.append(LayerSensitivity(name, ref_score - score(out, labels),
                                        sqnr_db(ref, out), params))
    results.sort(key=lambda r: (-r.metric_drop, r.sqnr_db))
    logger.info("sensitivity of %d layers; most sensitive: %s", len(results),
                results[0].name if results else "-")
    return results


def weight_bytes(sensitivities: Sequence[LayerSensitivity], bits: dict[str, int]) -> float:
    """Weight storage ``sum(params * bits / 8)``; float layers count 32 bits."""
    return sum(s.params * bits[s.name] / 8 for s in sensitivities)


def mixed_precision_config(base_config: QuantConfig, sensitivities: Sequence[LayerSensitivity],
                           *, keep_float: int = 0, keep_8bit: int = 0,
                           size_budget_bytes: int | None = None) -> QuantConfig:
    """``base_config`` with the most sensitive layers kept at higher precision.

    The ``keep_float`` most sensitive layers stay float, the next ``keep_8bit`` get 8-bit
    weights; then, with ``size_budget_bytes``, further layers in sensitivity order are
    raised to 8 bits whenever that still fits the budget (greedy).
    """
    for name, k in (("keep_float", keep_float), ("keep_8bit", keep_8bit)):
        if not isinstance(k, int) or k < 0:
            raise ConfigError(f"{name}={k!r} must be an integer >= 0")
    if keep_float + keep_8bit > len(sensitivities):
        raise ConfigError(f"keep_float + keep_8bit = {keep_float + keep_8bit} exceeds the "
                          f"{len(sensitivities)} layers measured")
    order = sorted(sensitivities, key=lambda r: (-r.metric_drop, r.sqnr_db))
    low = base_config.weight.bits
    bits = {s.name: low for s in order}
    for s in order[:keep_float]:
        bits[s.name] = 32
    for s in order[keep_float:keep_float + keep_8bit]:
        bits[s.name] = max(8, low)
    if size_budget_bytes is not None:
        _fill_budget(order, bits, size_budget_bytes)
    return _config_for(base_config, bits)


def _fill_budget(order: Sequence[LayerSensitivity], bits: dict[str, int], budget: int) -> None:
    size = weight_bytes(order, bits)
    if size > budget:
        raise ConfigError(f"size_budget_bytes={budget} is below the {size:.0f} bytes of the "
                          "lowest-precision assignment; raise the budget or lower the bits")
    for s in order:
        extra = s.params * (8 - bits[s.name]) / 8
        if extra > 0 and size + extra <= budget:
            bits[s.name] = 8
            size += extra
    logger.info("mixed precision: %.0f of %d budget bytes", size, budget)


def _config_for(base: QuantConfig, bits: dict[str, int]) -> QuantConfig:
    skip = tuple(n for n, b in bits.items() if b == 32)
    raised = {n: LayerOverride(weight=dataclasses.replace(base.weight, bits=b))
              for n, b in bits.items() if b != 32 and b != base.weight.bits}
    return dataclasses.replace(base, skip=(*base.skip, *skip),
                               overrides={**base.overrides, **raised})
