"""Size of a model: parameters, non-zero parameters, multiply-accumulates, bytes.

MACs are counted from the shapes a real batch-1 forward produces (forward hooks), never
estimated from the architecture, so strides, padding and pruned channels are all exact.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.errors import ConfigError

__all__ = ["count_params", "count_nonzero", "count_macs", "onnx_param_counts",
           "state_dict_bytes", "call_model", "first_sample"]

logger = logging.getLogger(__name__)

# ONNX tensors that hold model weights: float and integer types. INT64 and BOOL
# initializers are shapes, axes and masks, not parameters.
_WEIGHT_DTYPES = {1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 16}  # onnx.TensorProto enum values
# Inputs of quantized ops that are scales and zero points, not weights (by position).
_QPARAM_INPUTS = {
    "QuantizeLinear": {1, 2}, "DequantizeLinear": {1, 2},
    "QLinearConv": {1, 2, 4, 5, 6, 7}, "QLinearMatMul": {1, 2, 4, 5, 6, 7},
    "MatMulInteger": {2, 3}, "ConvInteger": {2, 3},
}


def _unique_params(model: nn.Module) -> list[torch.Tensor]:
    # model.parameters() already skips tied (shared) parameters.
    return [p.detach() for p in model.parameters()]


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (tied weights counted once; buffers excluded)."""
    return int(sum(p.numel() for p in _unique_params(model)))


def count_nonzero(model: nn.Module) -> int:
    """Parameter elements that are not exactly zero: what unstructured pruning removed."""
    return int(sum(int(torch.count_nonzero(p)) for p in _unique_params(model)))


def _macs_hook(counter: list[int]):
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            # weight (C_out, C_in/groups, *k): each output element costs C_in/groups * prod(k).
            spatial = math.prod(output.shape[2:])
            counter[0] += module.weight.numel() * spatial * output.shape[0]
        elif isinstance(module, nn.Linear):
            # Every output element (tokens x out_features) costs in_features MACs.
            counter[0] += output.numel() * module.in_features
    return hook


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)`` for one tensor, ``model(*inputs)`` for a tuple or list,
    ``model(**inputs)`` for a dict (how a Session feeds a torch model)."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def first_sample(inputs: Any) -> Any:
    """The first sample (``[:1]``) of every tensor in a tensor, tuple or dict batch."""
    if isinstance(inputs, Mapping):
        return {k: first_sample(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(first_sample(v) for v in inputs)
    return inputs[:1] if isinstance(inputs, torch.Tensor) and inputs.dim() else inputs


def count_macs(model: nn.Module, input_shape: tuple[int, ...] | None = None, *,
               example_inputs: Any = None) -> int:
    """Multiply-accumulates of Conv1d/2d/3d and Linear layers for one sample.

    ``input_shape`` excludes the batch axis, e.g. ``(1, 28, 28)``: the forward runs on a
    batch-1 float tensor of zeros. Models whose inputs are not one float tensor (token ids,
    several inputs) pass ``example_inputs`` instead, one batch as a tensor, tuple or dict
    of any dtypes; its first sample is run. Eval mode, no gradients; the model's
    train/eval mode is restored.
    """
    if (input_shape is None) == (example_inputs is None):
        raise ConfigError("count_macs needs exactly one of input_shape or example_inputs")
    counter = [0]
    layers = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    handles = [m.register_forward_hook(_macs_hook(counter))
               for m in model.modules() if isinstance(m, layers)]
    was_training = model.training
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        inputs = torch.zeros(1, *input_shape, device=device) if input_shape is not None \
            else first_sample(example_inputs)
        model.eval()
        with torch.no_grad():
            call_model(model, inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return int(counter[0])


def onnx_param_counts(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(params, nonzero)`` over the weight initializers of an ONNX file.

    Int8 weights of a quantized graph count as parameters like float ones; their scales and
    zero points do not, so an FP32 and an INT8 export of one model report the same count.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(Path(path)))
    qparams = {name for node in model.graph.node
               for i, name in enumerate(node.input)
               if i in _QPARAM_INPUTS.get(node.op_type, ())}
    params = nonzero = 0
    for init in model.graph.initializer:
        if init.data_type not in _WEIGHT_DTYPES or init.name in qparams:
            continue
        array = numpy_helper.to_array(init)
        params += int(array.size)
        nonzero += int(np.count_nonzero(array))
    return params, nonzero


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict serialized with safetensors (its size on disk).

    Tensors that share storage (tied weights) are stored once, as ``save_model`` would.
    """
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    seen: dict[int, tuple[int, tuple[int, ...]]] = {}  # storage -> (data_ptr, shape)
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            continue
        value = value.detach().cpu()
        storage = value.untyped_storage().data_ptr() if value.numel() else id(value)
        ident = (value.data_ptr(), tuple(value.shape))
        if seen.get(storage) == ident:
            continue  # a tied weight: the file holds it once
        # A different view of a seen storage gets its own copy (safetensors refuses sharing).
        tensors[key] = value.clone() if storage in seen else value.contiguous()
        seen.setdefault(storage, ident)
    return len(save(tensors))
