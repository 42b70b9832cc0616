"""FP32 ONNX export of a model's real inputs, by the dynamo exporter with the TorchScript
exporter as the fallback.

Inputs are what the model takes (``torchslim.capture.ExampleInputs``: a tensor, a tuple or
a dict, any dtypes); each ONNX input keeps its name (a dict key, a ``forward`` parameter
name, "input" for a lone tensor), its dtype (int64 token ids stay int64) and named dynamic
dims (``{0: "batch"}`` for every input, plus what ``dynamic_dims`` adds, e.g.
``{"input_ids": {0: "batch", 1: "sequence"}}``). Outputs keep their names: "logits" for
a lone tensor, the keys of a dict (or a transformers ``ModelOutput``), "output_<i>" for
a tuple.

``exporter="auto"`` tries ``torch.onnx.export(dynamo=True)`` first (it captures with
torch.export, so it sees what quantization saw, and folds constant pads into Conv) and
falls back to the TorchScript exporter when it fails, logging which one wrote the file
and why. Both graphs then get the same clean-up (``torchslim.exporters._onnx_graph``):
constants as initializers, zero Pads folded into the Conv after them, and a ``ReduceMean``
over all spatial axes written as ``GlobalAveragePool``.
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn

from torchslim import _io
from torchslim.capture.export import quiet_torch
from torchslim.capture.inputs import (DynamicDims, ExampleInputs, as_example_inputs,
                                      check_dynamic_dims, per_parameter)
from torchslim.errors import ConfigError, UnsupportedModelError
from torchslim.exporters._onnx_graph import clean_up_

__all__ = ["OPSET", "EXPORTERS", "Signature", "export_onnx", "export_proto", "write_checked",
           "signature_of"]

logger = logging.getLogger(__name__)

OPSET = 18  # the dynamo exporter's lowest; the TorchScript exporter writes it too
EXPORTERS = ("auto", "dynamo", "torchscript")
LONE_OUTPUT = "logits"


@dataclass(frozen=True)
class Signature:
    """Names and dynamic dims of an artifact's inputs and outputs."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic: dict[str, dict[int, str]]    # input name -> {dim: name}
    output_ranks: tuple[int, ...]


def _key_name(path: tuple[Any, ...]) -> str:
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "_".join(parts) or LONE_OUTPUT


@torch.no_grad()
def signature_of(model: nn.Module, inputs: ExampleInputs, dynamic_dims: DynamicDims | None,
                 output_names: Sequence[str] | None = None) -> Signature:
    """The signature ``model`` will have as ONNX (runs one forward for the outputs)."""
    check_dynamic_dims(inputs, dynamic_dims)
    out = inputs.call(model)
    leaves = [(p, v) for p, v in pytree.tree_flatten_with_path(out)[0] if isinstance(v, Tensor)]
    if output_names is not None:
        names = tuple(output_names)
        if len(names) != len(leaves):
            raise ConfigError(f"output_names has {len(names)} names but the model returns "
                              f"{len(leaves)} tensors")
    elif isinstance(out, Tensor):
        names = (LONE_OUTPUT,)
    elif isinstance(out, (tuple, list)) and all(isinstance(v, Tensor) for v in out):
        names = tuple(f"output_{i}" for i in range(len(out)))
    else:
        names = tuple(_key_name(p) for p, _ in leaves)
    return Signature(inputs=tuple(n for n, _ in inputs.tensors()), outputs=names,
                     dynamic=inputs.dynamic_dims(dynamic_dims),
                     output_ranks=tuple(v.dim() for _, v in leaves))


def _dynamo(model: nn.Module, inputs: ExampleInputs, sig: Signature, opset: int
            ) -> onnx.ModelProto:
    def spec(name: str, value: Any) -> Any:
        return {d: label for d, label in sig.dynamic.get(name, {}).items()} or None \
            if isinstance(value, Tensor) else None

    shapes = per_parameter(model, inputs, spec)
    with quiet_torch():
        program = torch.onnx.export(model, tuple(inputs.args), kwargs=dict(inputs.kwargs) or None,
                                    dynamo=True, opset_version=opset, dynamic_shapes=shapes,
                                    input_names=list(sig.inputs), output_names=list(sig.outputs),
                                    verbose=False)
    return program.model_proto


def _torchscript(model: nn.Module, inputs: ExampleInputs, sig: Signature, opset: int
                 ) -> onnx.ModelProto:
    args: tuple[Any, ...] = tuple(inputs.args)
    if inputs.kwargs:  # the TorchScript exporter wants positional arguments
        bound = inspect.signature(model.forward).bind(*inputs.args, **inputs.kwargs)
        bound.apply_defaults()
        args = tuple(bound.arguments.values())
        names = [n for n, v in bound.arguments.items() if isinstance(v, Tensor)]
        sig = Signature(tuple(names), sig.outputs, sig.dynamic, sig.output_ranks)
    axes: dict[str, dict[int, str]] = {n: dict(d) for n, d in sig.dynamic.items() if d}
    for name, rank in zip(sig.outputs, sig.output_ranks):
        if rank:
            axes[name] = {0: "batch"}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(model, args, str(raw), input_names=list(sig.inputs),
                          output_names=list(sig.outputs), opset_version=opset,
                          dynamic_axes=axes, dynamo=False)
        return onnx.load(str(raw))


_WRITERS: dict[str, Callable[..., onnx.ModelProto]] = {"dynamo": _dynamo,
                                                       "torchscript": _torchscript}


def _first_line(e: BaseException) -> str:
    """The root cause's type and first line (the dynamo exporter wraps torch.export's)."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def export_proto(model: nn.Module, example_inputs: Any = None, *,
                 input_shape: tuple[int, ...] | None = None,
                 dynamic_dims: DynamicDims | None = None,
                 output_names: Sequence[str] | None = None, opset: int = OPSET,
                 exporter: str = "auto",
                 before: Callable[[str], None] | None = None) -> tuple[onnx.ModelProto, str]:
    """``(graph, exporter used)`` of ``model`` (eval mode, CPU), cleaned up, for writers to
    edit. ``before(name)`` runs before each exporter tries (the QDQ writer picks its
    quantize ops for that exporter)."""
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter={exporter!r} must be one of {', '.join(EXPORTERS)}")
    model = model.eval().cpu()
    inputs = as_example_inputs(example_inputs, model=model, input_shape=input_shape)
    inputs = inputs.map(lambda t: t.cpu())
    sig = signature_of(model, inputs, dynamic_dims, output_names)
    order = ("dynamo", "torchscript") if exporter == "auto" else (exporter,)
    failures = []
    for name in order:
        if before is not None:
            before(name)
        try:
            proto = _WRITERS[name](model, inputs, sig, opset)
        except Exception as e:  # each exporter raises its own kinds
            failures.append(f"{name}: {_first_line(e)}")
            logger.warning("the %s ONNX exporter failed on %s (%s)%s", name,
                           type(model).__name__, _first_line(e),
                           "; trying the TorchScript exporter" if name != order[-1] else "")
            continue
        clean_up_(proto)
        logger.info("%s exported by the %s exporter%s", type(model).__name__, name,
                    f" ({failures[0]})" if failures else "")
        return proto, name
    raise UnsupportedModelError(f"cannot export {type(model).__name__} to ONNX: "
                                f"{'; '.join(failures)}")


def export_onnx(model: nn.Module, path: str | os.PathLike[str], *, example_inputs: Any = None,
                input_shape: tuple[int, ...] | None = None,
                dynamic_dims: DynamicDims | None = None,
                output_names: Sequence[str] | None = None, opset: int = OPSET,
                exporter: str = "auto") -> Path:
    """Write ``model`` as FP32 ONNX. ``example_inputs``: a tensor, tuple or dict of the
    model's inputs (any dtypes); ``input_shape`` (batch axis excluded) is the shorthand for
    one float input. Every input's dim 0 is the dynamic "batch"; ``dynamic_dims`` names
    more (``{"input_ids": {0: "batch", 1: "sequence"}}``)."""
    proto, _ = export_proto(model, example_inputs, input_shape=input_shape,
                            dynamic_dims=dynamic_dims, output_names=output_names, opset=opset,
                            exporter=exporter)
    out = write_checked(proto, path)
    logger.info("exported %s (%d bytes)", out, out.stat().st_size)
    return out


def write_checked(proto: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Check ``proto`` with the ONNX checker, then write it atomically to ``path``."""
    onnx.checker.check_model(proto)
    return _io.write_bytes(path, proto.SerializeToString())
