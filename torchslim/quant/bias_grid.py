"""Conv / Linear biases on the int32 grid that integer runtimes hold them on.

An integer Conv / Gemm adds its bias to the int32 accumulator, so every int8 runtime
stores it as ``round(b / (s_in * s_w))`` in int32 with scale ``s_in * s_w`` (per output
channel for per-channel weights): ONNX Runtime in QLinearConv and QGemm, and, through its
``WeightBiasQuantization`` pass, in every Conv / Gemm whose input and weight are
dequantized, even one that then runs in float (4-bit activations); OpenVINO and TensorRT
alike. A fake-quant layer that kept the float bias differed from every such artifact by up
to half a step per channel: invisible with 8-bit activations, 1.6 % of the argmaxes with
4-bit ones (issue 14). So a layer that knows the quantizer feeding its input
(``GridBias.input_quantizer``) computes with ``grid_bias(b, s_in, s_w)``, and the QDQ
exporter writes that very bias as int32.

``link_input_quantizers_`` finds each layer's input quantizer with one forward pass:
directly, or through ops that keep the quantizer's grid (max-pool, reshapes, transposes,
slicing, dropout, zero padding). ``prepare`` calls it; a hand-built fake-quant model calls
it once its quantizers are in place. Linking a layer whose exported input ends up not
dequantized is harmless: the exporter writes the same on-grid bias in float.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parameter import UninitializedParameter
from torch.overrides import TorchFunctionMode

from torchslim.capture.inputs import as_example_inputs
from torchslim.quant.fake_quant import FakeQuantize, LearnableFakeQuantize

__all__ = ["GridBias", "grid_bias", "active_scale", "link_input_quantizers_", "relink_"]

logger = logging.getLogger(__name__)

_INT32_MIN = float(-2 ** 31)
_INT32_MAX = float(2 ** 31 - 128)  # the largest float32 below 2**31 - 1

# base names (ATen overload suffix and leading underscores dropped) of the ops whose
# output lies on their input's grid: they move, select or copy values
_GRID_OPS = frozenset({
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices",
    "max_pool2d_with_indices", "max_pool3d_with_indices", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "flatten", "unflatten", "view", "reshape", "unsafe_view",
    "contiguous", "squeeze", "unsqueeze", "transpose", "permute", "t", "expand", "clone",
    "detach", "alias", "slice", "select", "getitem", "narrow", "chunk", "split", "unbind",
    "flip", "dropout", "feature_dropout", "alpha_dropout", "dropout1d", "dropout2d",
    "dropout3d"})
_PAD_OPS = frozenset({"pad", "constant_pad_nd"})


def grid_bias(bias: Tensor, input_scale: Tensor, weight_scale: Tensor) -> Tensor:
    """``bias`` rounded to the int32 grid ``input_scale * weight_scale`` and clamped to the
    int32 range, computed in float32 as the exporter computes its int32 scale; the gradient
    passes straight through to ``bias``."""
    step = (input_scale.detach().float().reshape(())
            * weight_scale.detach().float().reshape(-1))  # (C,) per channel, (1,) per tensor
    q = torch.round(bias.detach().float() / step).clamp(_INT32_MIN, _INT32_MAX)  # (C,)
    # exactly q * step forward (bias - bias.detach() is 0), identity gradient for bias
    return (q * step).to(bias.dtype) + (bias - bias.detach())


def active_scale(quantizer: nn.Module | None) -> Tensor | None:
    """The scale ``quantizer`` fake-quantizes with right now, or None when it does not
    (switched off, not calibrated, per-group, or not a quantizer at all)."""
    if isinstance(quantizer, FakeQuantize):
        usable = quantizer.fake_quant_enabled and quantizer.scale.numel() > 0
        scale = quantizer.scale if usable else None
    elif isinstance(quantizer, LearnableFakeQuantize):
        scale = None if isinstance(quantizer.scale, UninitializedParameter) else quantizer.scale
    else:
        return None
    if scale is None or quantizer.spec.granularity == "per_group":
        return None
    return scale


class GridBias:
    """What a quantized Conv / Linear needs to compute with the bias an integer runtime
    holds: the activation quantizer feeding its input.

    The link is a plain reference, not a submodule (the quantizer already lives in the
    model; registering it twice would duplicate its state-dict entries); ``deepcopy``
    and pickling keep it pointing at the copy's own quantizer.
    """

    _input_quantizer: nn.Module | None = None
    weight_fake_quant: nn.Module
    weight: Tensor

    @property
    def input_quantizer(self) -> nn.Module | None:
        return self._input_quantizer

    def link_input_(self, quantizer: nn.Module | None) -> None:
        object.__setattr__(self, "_input_quantizer", quantizer)

    def bias_on_grid(self, bias: Tensor | None) -> Tensor | None:
        """``bias`` as the integer kernel adds it: on the grid ``s_in * s_w`` while both
        the input and the weight quantizer fake-quantize per tensor / per output channel;
        call after the weight quantizer ran, so its scale is current."""
        if bias is None:
            return None
        s_in = active_scale(self._input_quantizer)
        s_w = active_scale(self.weight_fake_quant)
        if s_in is None or s_w is None or s_in.numel() != 1:
            return bias
        spec = self.weight_fake_quant.spec  # type: ignore[attr-defined]
        per_channel = spec.granularity == "per_channel"
        if per_channel and (spec.axis % self.weight.dim() != 0 or s_w.numel() != bias.numel()):
            return bias  # channels on another axis than the bias: no per-channel int32 scale
        return grid_bias(bias, s_in, s_w)


def _raw_name(func: Any) -> str:
    return str(getattr(func, "__name__", "")).split(".")[0]  # "view.default" -> "view"


def _in_place(raw: str) -> bool:
    """``relu_``, ``add_``, ``__iadd__``: ops that overwrite their first argument."""
    return raw.startswith("__i") or (raw.endswith("_") and not raw.endswith("__"))


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _zero_pad(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a pad call pads with zeros (0.0 is on every grid: it is the zero point)."""
    if name == "constant_pad_nd":
        value = args[2] if len(args) > 2 else kwargs.get("value", 0)
        return not value
    mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
    value = args[3] if len(args) > 3 else kwargs.get("value")
    return mode == "constant" and not value


class _GridTracker(TorchFunctionMode):
    """Follows which quantizer's grid each tensor lies on through grid-keeping ops."""

    def __init__(self) -> None:
        super().__init__()
        self.grid: dict[int, tuple[Tensor, str]] = {}  # id(tensor) -> (tensor, quantizer)

    def source(self, x: Any) -> str | None:
        hit = self.grid.get(id(x)) if isinstance(x, Tensor) else None
        return hit[1] if hit is not None and hit[0] is x else None

    def mark(self, x: Tensor, quantizer: str) -> None:
        self.grid[id(x)] = (x, quantizer)  # the tensor is held, so its id stays unique

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        raw = _raw_name(func)
        name = raw.strip("_")  # "__getitem__" -> "getitem", "_unsafe_view" -> "unsafe_view"
        first_arg = args[0] if args else None
        first = self.source(first_arg)
        keeps = name in _GRID_OPS or (name in _PAD_OPS and _zero_pad(name, args, kwargs))
        for t in _tensors(out):
            if keeps and first is not None:
                self.mark(t, first)
            elif t is first_arg and not _in_place(raw):
                continue  # the input itself, unchanged (``x.float()`` of a float ``x``)
            elif self.source(t) is not None:
                del self.grid[id(t)]  # overwritten in place by an op that leaves the grid
        return out


@torch.no_grad()
def link_input_quantizers_(model: nn.Module, example_inputs: Any) -> dict[str, str]:
    """Link each ``GridBias`` layer of ``model`` to the activation quantizer its input comes
    from, found by one forward pass on ``example_inputs`` (a tensor, tuple or dict) in
    eval mode with the observers and fake quantization paused (the links do not depend on
    the values, and an uncalibrated quantizer has no grid yet); returns ``{layer: quantizer}``. A layer with a
    float input, or called on inputs from several quantizers, keeps (or gets) no link."""
    inputs = as_example_inputs(example_inputs, model=model)
    names = {m: n for n, m in model.named_modules()}
    quantizers = [m for m in names if isinstance(m, (FakeQuantize, LearnableFakeQuantize))]
    layers = [m for m in names if isinstance(m, GridBias)]
    tracker, seen = _GridTracker(), {id(m): set() for m in layers}

    def after_quantizer(module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        if isinstance(out, Tensor):
            out = out.view_as(out) if args and out is args[0] else out  # off: a fresh alias
            tracker.mark(out, names[module])
        return out

    def before_layer(module: nn.Module, args: tuple[Any, ...]) -> None:
        seen[id(module)].add(tracker.source(args[0]) if args else None)

    modes = {m: m.training for m in names}
    observing = {m: (m.observer_enabled, m.fake_quant_enabled) for m in quantizers
                 if isinstance(m, FakeQuantize)}
    handles = [q.register_forward_hook(after_quantizer) for q in quantizers]
    handles += [m.register_forward_pre_hook(before_layer) for m in layers]  # type: ignore[attr-defined]
    try:
        model.eval()
        for m in observing:
            m.observer_enabled = False  # the example batch must not move any grid
            m.fake_quant_enabled = False
        with tracker:
            inputs.call(model)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
        for m, (observe, fake) in observing.items():
            m.observer_enabled, m.fake_quant_enabled = observe, fake
    by_name = {n: m for m, n in names.items()}
    links = {}
    for layer in layers:
        sources = seen[id(layer)]
        source = next(iter(sources)) if len(sources) == 1 else None
        layer.link_input_(by_name[source] if source is not None else None)
        if source is not None:
            links[names[layer]] = source  # type: ignore[index]
        elif len(sources) > 1:
            logger.info("%s reads inputs on several grids; its bias stays float", names[layer])  # type: ignore[index]
    return links


def relink_(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Point the layers that read ``old``'s grid at ``new`` (a quantizer swapped in its
    place, e.g. LSQ's)."""
    for module in model.modules():
        if isinstance(module, GridBias) and module.input_quantizer is old:
            module.link_input_(new)
