"""Quantization building blocks: the affine mapping, observers and fake quantization.

>>> import torch
>>> from torchslim.quant import QuantSpec, calc_qparams_for, fake_quantize, sqnr_db
>>> spec = QuantSpec(bits=8, granularity="per_channel", axis=0)
>>> w = torch.randn(16, 32)
>>> scale, zp = calc_qparams_for(w, spec)  # (16,), (16,)
>>> sqnr_db(w, fake_quantize(w, scale, zp, spec)) > 35
True
"""

from torchslim.quant.affine import (QuantSpec, calc_qparams_for, compute_qparams, dequantize_tensor,
                                    fake_quantize, quantize_tensor, sqnr_db)
from torchslim.quant.fake_quant import FakeQuantize, LearnableFakeQuantize
from torchslim.quant.observers import OBSERVERS, Observer, make_observer
from torchslim.quant.config import (AdaRoundConfig, DynamicQuantConfig, LayerOverride, QuantConfig,
                                    WeightOnlyConfig)
from torchslim.quant.prepare import prepare, set_fake_quant_, set_observers_
from torchslim.quant.calibrate import bias_correct_, calibrate_
from torchslim.quant.adaround import adaround_
from torchslim.quant.api import qat
from torchslim.quant.api import quantize
from torchslim.quant.sensitivity import (LayerSensitivity, layer_sensitivity,
                                         mixed_precision_config)
from torchslim.quant.dynamic import quantize_dynamic
from torchslim.quant.weight_only import quantize_weight_only

__all__ = [
    # the affine mapping
    "QuantSpec", "compute_qparams", "calc_qparams_for", "quantize_tensor", "dequantize_tensor",
    "fake_quantize", "sqnr_db",
    # calibration
    "Observer", "OBSERVERS", "make_observer",
    # quantization-aware training
    "FakeQuantize", "LearnableFakeQuantize",
    # model preparation, PTQ and QAT (``quantize`` is the model op, the same function as
    # ``torchslim.quantize``; the tensor ops are ``quantize_tensor`` / ``dequantize_tensor``)
    "QuantConfig", "LayerOverride", "prepare", "set_observers_", "set_fake_quant_",
    "calibrate_", "bias_correct_", "quantize", "qat",
    # learned rounding for PTQ (QuantConfig(rounding="adaround"))
    "AdaRoundConfig", "adaround_",
    # sensitivity and mixed precision
    "LayerSensitivity", "layer_sensitivity", "mixed_precision_config",
    # dynamic and weight-only PTQ (no calibration data)
    "DynamicQuantConfig", "WeightOnlyConfig", "quantize_dynamic", "quantize_weight_only",
]
