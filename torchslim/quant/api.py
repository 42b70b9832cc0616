"""Entry points: ``quantize`` (static PTQ) and ``qat`` (quantization-aware training).

Both return a NEW prepared model (an fx GraphModule of Quant* layers and activation
FakeQuantize modules with frozen qparams) that the exporter turns into a QDQ ONNX graph;
the float model passed in is left untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from torch import nn

from torchslim.errors import ConfigError
from torchslim.quant.calibrate import batches, calibrate_
from torchslim.quant.config import QuantConfig
from torchslim.quant.prepare import prepare
from torchslim.quant.fold import fold_simulated_bn_
from torchslim.quant.qat import FreezeBatchNorm, FreezeObservers, from_lsq_, to_lsq_
from torchslim.train import Callback, TrainConfig, fit

__all__ = ["quantize", "qat"]

logger = logging.getLogger(__name__)


def _first_batch(data: Iterable[Any]) -> Any:
    for x in batches(data, 1):
        return (x,)
    raise ConfigError("calibration data yielded no batches; pass a non-empty loader")


def quantize(model: nn.Module, config: QuantConfig = QuantConfig(), *,
             calibration: Iterable[Any], num_batches: int = 32,
             example_inputs: Any = None) -> nn.Module:
    """Static post-training quantization: ``prepare`` + ``calibrate_``.

    ``calibration`` yields ``x`` or ``(x, y)`` batches; ``example_inputs`` defaults to the
    first calibration batch.
    """
    if example_inputs is None:
        example_inputs = _first_batch(calibration)
    prepared = prepare(model, config, example_inputs=example_inputs)
    return calibrate_(prepared, calibration, num_batches=num_batches)


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
    """
    for name, epoch in (("freeze_observers_epoch", freeze_observers_epoch),
                        ("freeze_bn_epoch", freeze_bn_epoch)):
        if epoch is not None and (not isinstance(epoch, int) or epoch < 0):
            raise ConfigError(f"{name}={epoch!r} must be an integer >= 0 or None")
    calib = calibration if calibration is not None else train_data
    prepared = prepare(model, config, example_inputs=_first_batch(calib),
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
