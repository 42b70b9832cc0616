"""Entry points: ``quantize(model, config)`` dispatched on the config's type, and ``qat``
(quantization-aware training, which takes a ``QuantConfig`` too).

Each returns a NEW quantized model and leaves the float model alone; the new model's record
(``torchslim.record_of(model).quantization``) holds the config, so ``torchslim.export``
writes the matching artifact: static PTQ and QAT give an fx GraphModule of Quant* layers
and frozen activation FakeQuantize modules (a QDQ ONNX graph), dynamic quantization
integer MatMuls with run-time activation grids, weight-only int weights behind
DequantizeLinear.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from torchslim.capture.inputs import first_inputs
from torchslim.errors import ConfigError
from torchslim.quant.calibrate import calibrate_
from torchslim.quant.config import DynamicQuantConfig, QuantConfig, WeightOnlyConfig
from torchslim.quant.distributed import across_ranks
from torchslim.quant.dynamic import quantize_dynamic
from torchslim.quant.prepare import prepare
from torchslim.quant.fold import fold_simulated_bn_
from torchslim.quant.qat import FreezeBatchNorm, FreezeObservers, from_lsq_, to_lsq_
from torchslim.quant.weight_only import quantize_weight_only
from torchslim.transformers.linears import conv1d_layers, conv1d_to_linear_
from torchslim.train import Callback, TrainConfig, fit

__all__ = ["quantize", "qat", "QUANTIZERS"]

logger = logging.getLogger(__name__)


def _first_batch(data: Iterable[Any]) -> Any:
    """The model inputs of the first batch (a tensor, a tuple or a dict)."""
    for x in first_inputs(data, 1):
        return x
    raise ConfigError("calibration data yielded no batches; pass a non-empty loader")


def quantize(model: nn.Module, config: Any = QuantConfig(),
             calibration: Iterable[Any] | None = None, *, num_batches: int = 32,
             example_inputs: Any = None) -> nn.Module:
    """A quantized copy of ``model``, as ``config``'s type says (``QUANTIZERS``):

    * ``QuantConfig``: static post-training quantization (``prepare`` + ``calibrate_`` on
      ``num_batches`` batches of ``calibration``, which yields ``x`` or ``(x, y)``;
      ``example_inputs`` defaults to its first batch);
    * ``DynamicQuantConfig``: ``quantize_dynamic`` (activation grids at run time);
    * ``WeightOnlyConfig``: ``quantize_weight_only``.

    Dynamic and weight-only quantization need no data: ``calibration`` is not used.
    """
    handler = QUANTIZERS.get(type(config))
    if handler is None:
        known = ", ".join(t.__name__ for t in QUANTIZERS)
        raise ConfigError(f"config must be one of {known}, got {type(config).__name__} "
                          "(quantization-aware training: torchslim.qat)")
    return handler(_with_linears(model), config, calibration, num_batches=num_batches,
                   example_inputs=example_inputs)


def _with_linears(model: nn.Module) -> nn.Module:
    """``model``, or a copy with GPT-2's ``Conv1D`` projections as the ``nn.Linear`` layers
    they compute, so that the quantizers, which match Linear, see them."""
    if not conv1d_layers(model):
        return model
    model = copy.deepcopy(model)
    n = conv1d_to_linear_(model)
    logger.info("%d transformers Conv1D projections quantized as the nn.Linear they compute", n)
    return model


def _static(model: nn.Module, config: QuantConfig, calibration: Iterable[Any] | None, *,
            num_batches: int, example_inputs: Any) -> nn.Module:
    if calibration is None:
        raise ConfigError("static quantization (QuantConfig) needs calibration=<batches>; "
                          "DynamicQuantConfig and WeightOnlyConfig need no data")
    if example_inputs is None:
        example_inputs = _first_batch(calibration)
    # under torchrun: rank 0's config, and this rank's share of every calibration batch
    config, calibration = across_ranks(config, calibration)
    prepared = prepare(model, config, example_inputs=example_inputs)
    return calibrate_(prepared, calibration, num_batches=num_batches)


def _dynamic(model: nn.Module, config: DynamicQuantConfig, calibration: Any,
             **_: Any) -> nn.Module:
    return quantize_dynamic(model, config)


def _weight_only(model: nn.Module, config: WeightOnlyConfig, calibration: Any,
                 **_: Any) -> nn.Module:
    return quantize_weight_only(model, config)


# config type -> handler(model, config, calibration, *, num_batches, example_inputs)
QUANTIZERS: dict[type, Callable[..., nn.Module]] = {
    QuantConfig: _static, DynamicQuantConfig: _dynamic, WeightOnlyConfig: _weight_only}


def qat(model: nn.Module, train_data: Iterable[Any], *, config: QuantConfig = QuantConfig(),
        train_config: TrainConfig = TrainConfig(epochs=2, lr=1e-3, schedule="cosine"),
        val: Iterable[Any] | None = None, calibration: Iterable[Any] | None = None,
        num_calib_batches: int = 16, freeze_observers_epoch: int | None = 1,
        lsq: bool = False, freeze_bn_epoch: int | None = None) -> nn.Module:
    """Quantization-aware fine-tuning of a copy of ``model``.

    The model is calibrated on ``calibration`` (or the first training batches), then
    trained with ``fit``; observers are frozen from 0-based epoch ``freeze_observers_epoch``
    (and at the end in any case). BatchNorm is folded first (frozen statistics throughout)
    unless ``freeze_bn_epoch`` is given: then folding is simulated, BN uses batch
    statistics until that epoch, and is folded at the end. A folded network has no
    normalisation left, so keep the learning rate small (the default 1e-3; at 1e-2 the
    folded default teacher once diverged to NaN within 14 steps). With ``lsq=True`` the step
    sizes are learned (LSQ) and written back as fixed qparams.

    Under ``torchrun`` (or with ``train_config.distributed``) every rank passes the same
    data: calibration and training run data-parallel on each rank's share, and the
    quantizers' statistics are combined over ranks (``torchslim.quant.distributed``).
    """
    for name, epoch in (("freeze_observers_epoch", freeze_observers_epoch),
                        ("freeze_bn_epoch", freeze_bn_epoch)):
        if epoch is not None and (not isinstance(epoch, int) or epoch < 0):
            raise ConfigError(f"{name}={epoch!r} must be an integer >= 0 or None")
    calib = calibration if calibration is not None else train_data
    example = _first_batch(calib)
    # under torchrun: rank 0's config, and this rank's share of every calibration batch
    config, calib = across_ranks(config, calib, train_config.distributed)
    prepared = prepare(_with_linears(model), config, example_inputs=example,
                       simulate_bn=freeze_bn_epoch is not None)
    calibrate_(prepared, calib, num_batches=num_calib_batches)
    if lsq:
        to_lsq_(prepared)
    callbacks: list[Callback] = [FreezeObservers(freeze_observers_epoch)]
    if freeze_bn_epoch is not None:
        callbacks.append(FreezeBatchNorm(freeze_bn_epoch))
    fit(prepared, train_data, config=train_config, val=val, callbacks=callbacks)
    if lsq:
        from_lsq_(prepared)
    if freeze_bn_epoch is not None:
        fold_simulated_bn_(prepared)
    prepared.eval()
    return prepared
