"""Capture with ``torch.export``: every op the forward runs, at the ATen level.

torch.export traces through module subclasses, functional calls and
``nn.MultiheadAttention`` (whose fused eval fast path is switched off while tracing, so
its projections appear as ``aten.linear``). Measured here (torch 2.14): non-strict export
captures torchvision's CNNs and ViT and a transformers BERT; strict export (TorchDynamo)
captures them too but takes about twice as long, so it is the second try. DESIGN.md's
``strict=True`` trap is torchao's X86InductorQuantizer, which torchslim does not use: its
op-pattern quantization reads the non-strict graph the same way.

Every input dim is ``Dim.AUTO``: export keeps a dim symbolic unless the model fixes it,
so the captured graph runs at any batch size or sequence length the model itself accepts.
A batch of one would be specialised (0/1 specialisation), so such an example is repeated
to two rows for the capture.

The result is a plain ``fx.GraphModule`` (not torch.export's unlifted module, whose
``train()`` raises): QAT trains it, and it takes and returns what the model does (the
pytree code generation of the exported graph is kept).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.export import Dim

from torchslim.capture.inputs import ExampleInputs, per_parameter

__all__ = ["export_graph", "quiet_torch", "KEEP_META"]

# node.meta keys kept from the exported graph (the rest holds FakeTensors and stack traces,
# which make deep copies slow or impossible)
KEEP_META = ("nn_module_stack",)


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """Keep torch's own logs and prints of a failed capture off the user's terminal (the
    failure's first line goes into the capture notes instead)."""
    loggers = [logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict)
               if name.startswith("torch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _no_mha_fastpath() -> Iterator[None]:
    """nn.MultiheadAttention's eval fast path is one fused op that hides its projections."""
    mha = torch.backends.mha
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def _auto(value: Any) -> Any:
    """``Dim.AUTO`` on each dim of a tensor but those of size 0 or 1 (export would fix
    them anyway, and say so on the log)."""
    if isinstance(value, Tensor) and value.dim():
        return {d: Dim.AUTO for d in range(value.dim()) if value.shape[d] > 1} or None
    return None


def _dynamic_shapes(model: nn.Module, inputs: ExampleInputs) -> Any:
    """``Dim.AUTO`` on every dim, in the structure of ``model.forward``'s parameters."""
    return per_parameter(model, inputs, lambda _, value: _auto(value))


def _two_rows(inputs: ExampleInputs) -> ExampleInputs:
    """Repeat a batch of one to two rows (every tensor input must have batch one)."""
    tensors = [t for _, t in inputs.tensors()]
    if tensors and all(t.dim() and t.shape[0] == 1 for t in tensors):
        return inputs.map(lambda t: torch.cat([t, t]))
    return inputs


def _plain_graph_module(gm: fx.GraphModule, name: str) -> fx.GraphModule:
    """A plain GraphModule with ``gm``'s graph minus its shape guards, light metadata."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards"):
            graph.erase_node(node)
        for key in list(node.meta):
            if key not in KEEP_META:
                del node.meta[key]
    graph._tracer_cls = None  # torch.export's tracer cannot rebuild the graph on unpickling
    plain = fx.GraphModule(gm, graph, name)
    plain._tracer_extras = {}
    plain.recompile()
    return plain


def export_graph(model: nn.Module, inputs: ExampleInputs, *, strict: bool) -> fx.GraphModule:
    """The ATen graph of ``model`` on ``inputs`` as a GraphModule sharing ``model``'s
    parameters; torch.export's exception when it cannot capture the model."""
    inputs = _two_rows(inputs)
    with _no_mha_fastpath(), quiet_torch():
        program = torch.export.export(model, tuple(inputs.args), dict(inputs.kwargs),
                                      strict=strict, dynamic_shapes=_dynamic_shapes(model, inputs))
    return _plain_graph_module(program.module(), type(model).__name__)
