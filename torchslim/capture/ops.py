"""What each node of a captured graph computes, as one small vocabulary of op kinds, and
how many multiply-accumulates it costs.

The same kind comes out of every form an op takes: an ATen op of torch.export
(``aten.conv2d.default``), a torch function or ``torch.nn.functional`` call, a tensor
method, an ``operator`` call, or a ``torch.nn`` module that fx kept as a leaf. Quantization
matches patterns of these kinds (``torchslim.quant.patterns``), so a Conv2d subclass, a
functional ``F.conv2d`` and an exported ``aten.conv2d`` are one and the same "conv".
"""

from __future__ import annotations

import math
import operator
from typing import Any

from torch import fx, nn

from torchslim.capture.values import value_of

__all__ = ["OpKind", "KINDS", "MAC_KINDS", "QUANTIZABLE_KINDS", "op_name", "op_kind",
           "node_macs", "node_module"]

OpKind = str
MAC_KINDS = ("conv", "conv_transpose", "linear", "matmul", "attention", "rnn")
# the kinds with integer kernels (QLinearConv, QGemm / QLinearMatMul): the coverage base
QUANTIZABLE_KINDS = ("conv", "conv_transpose", "linear", "matmul")

# base name of a function / method / ATen op -> kind
_NAMES: dict[str, OpKind] = {}
for _kind, _names in {
    "conv": ("conv1d", "conv2d", "conv3d", "convolution", "_convolution"),
    "conv_transpose": ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
    "linear": ("linear",),
    "matmul": ("matmul", "bmm", "mm", "__matmul__"),
    "attention": ("scaled_dot_product_attention", "multi_head_attention_forward"),
    "rnn": ("lstm", "gru", "rnn_tanh", "rnn_relu"),
    "add": ("add", "add_", "__add__", "__iadd__", "iadd", "__radd__"),
    "mul": ("mul", "mul_", "__mul__", "__imul__", "imul", "__rmul__"),
    "cat": ("cat", "concat", "concatenate"),
    "avg_pool": ("avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
                 "_adaptive_avg_pool2d"),
    "mean": ("mean",),
    "relu": ("relu", "relu_", "relu6", "hardtanh", "hardtanh_"),
    "clamp": ("clamp", "clamp_", "clip", "clip_"),
    "sigmoid": ("sigmoid", "sigmoid_"),
    "hardsigmoid": ("hardsigmoid", "hardsigmoid_"),
    "silu": ("silu", "silu_"),
    "hardswish": ("hardswish", "hardswish_"),
    "pad": ("pad", "constant_pad_nd"),
    "batch_norm": ("batch_norm",),
    "embedding": ("embedding",),
    "dropout": ("dropout", "dropout_", "feature_dropout", "alpha_dropout"),
    # grid-preserving: they move, select or copy values (a quantized input stays on its grid)
    "pass": ("max_pool1d", "max_pool2d", "flatten", "view", "reshape", "_unsafe_view",
             "contiguous", "squeeze", "unsqueeze", "transpose", "permute", "t", "expand",
             "clone", "identity", "slice", "select", "getitem", "chunk", "split", "unbind",
             "unflatten", "narrow", "flip", "detach", "alias"),
}.items():
    for _n in _names:
        _NAMES[_n] = _kind

# torch.nn module type -> kind (fx keeps torch.nn modules as leaves; checked in order)
_MODULES: tuple[tuple[tuple[type[nn.Module], ...], OpKind], ...] = (
    ((nn.modules.conv._ConvTransposeNd,), "conv_transpose"),
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), "conv"),
    ((nn.Linear,), "linear"),
    ((nn.MultiheadAttention,), "attention"),
    ((nn.LSTM, nn.GRU, nn.RNN), "rnn"),
    ((nn.ReLU, nn.ReLU6, nn.Hardtanh), "relu"),
    ((nn.Sigmoid,), "sigmoid"),
    ((nn.Hardsigmoid,), "hardsigmoid"),
    ((nn.SiLU,), "silu"),
    ((nn.Hardswish,), "hardswish"),
    ((nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AvgPool2d), "avg_pool"),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Identity, nn.Unflatten), "pass"),
    ((nn.Dropout, nn.Dropout1d, nn.Dropout2d), "dropout"),
    ((nn.BatchNorm1d, nn.BatchNorm2d), "batch_norm"),
    ((nn.Embedding,), "embedding"),
    ((nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d), "pad"),
)
KINDS = tuple(sorted({*_NAMES.values(), *(k for _, k in _MODULES), "module", "other"}))


def node_module(gm: nn.Module, node: fx.Node) -> nn.Module | None:
    """The module a ``call_module`` node calls, else None."""
    if node.op != "call_module":
        return None
    return gm.get_submodule(str(node.target))


def op_name(node: fx.Node) -> str:
    """Base name of what a call node computes: "conv2d" for ``aten.conv2d.default``,
    ``F.conv2d`` and ``torch.conv2d`` alike; the method name of a ``call_method``."""
    if node.op == "call_method":
        return str(node.target)
    target = node.target
    if node.op != "call_function":
        return ""
    if target is operator.getitem:
        return "getitem"
    name = getattr(target, "_opname", None) or getattr(target, "__name__", "")
    return str(name)


def _module_kind(module: nn.Module) -> OpKind:
    for types, kind in _MODULES:
        if isinstance(module, types):
            return kind
    return "module"


def op_kind(gm: nn.Module, node: fx.Node) -> OpKind:
    """The kind of ``node`` (one of ``KINDS``); "other" for anything else."""
    if node.op == "call_module":
        module = node_module(gm, node)
        return _module_kind(module) if module is not None else "module"
    if node.op not in ("call_function", "call_method"):
        return node.op  # placeholder, get_attr, output
    kind = _NAMES.get(op_name(node), "other")
    if kind == "conv" and op_name(node) in ("convolution", "_convolution") and \
            len(node.args) > 6 and node.args[6]:
        return "conv_transpose"  # aten.convolution(..., transposed=True, ...)
    if kind == "clamp":  # clamp(x, 0, hi) is a ReLU-like activation
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
        return "relu" if low == 0 else "other"
    if kind == "pad":
        return "pad" if _zero_constant_pad(node) else "other"
    return kind


def _zero_constant_pad(node: fx.Node) -> bool:
    """``pad(x, pads)`` in constant mode with value 0 (what Conv padding computes)."""
    if op_name(node) == "constant_pad_nd":
        value = node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0)
        return value in (0, 0.0)
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
    return mode == "constant" and value in (None, 0, 0.0)


def _shape(node: Any) -> tuple[int, ...] | None:
    info = value_of(node)
    return info.shape if info is not None else None


def _weight_shape(gm: nn.Module, node: fx.Node) -> tuple[int, ...] | None:
    module = node_module(gm, node)
    weight = getattr(module, "weight", None) if module is not None else None
    if weight is not None:
        return tuple(weight.shape)
    if len(node.args) > 1:
        return _shape(node.args[1])
    return None


def node_macs(gm: nn.Module, node: fx.Node, kind: OpKind | None = None) -> int:
    """Multiply-accumulates of one call of ``node`` on the recorded example inputs (0 for
    ops without them, or when the shapes were not recorded)."""
    kind = kind or op_kind(gm, node)
    out = _shape(node)
    if kind in ("conv", "linear") and out is not None:
        w = _weight_shape(gm, node)  # (C_out, C_in / groups, *kernel) or (out, in)
        return math.prod(out) * math.prod(w[1:]) if w else 0
    if kind == "conv_transpose":
        x, w = _shape(node.args[0]) if node.args else None, _weight_shape(gm, node)
        return math.prod(x) * math.prod(w[1:]) if x and w else 0  # w: (C_in, C_out / g, *k)
    if kind == "matmul" and out is not None and node.args:
        a = _shape(node.args[0])
        return math.prod(out) * a[-1] if a else 0
    if kind == "attention" and node.op == "call_function" and len(node.args) >= 3:
        q, k, v = (_shape(a) for a in node.args[:3])  # (..., L, E), (..., S, E), (..., S, Ev)
        if q and k and v:
            return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])
    return 0
