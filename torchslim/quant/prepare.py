"""Preparation: trace, fold BatchNorm, swap in Quant* layers, insert activation quantizers.

Activation quantizers follow ONNX Runtime's QDQ placement, which the exporter relies on:

(a) on each model input;
(b) on the output of each quantized Conv / Linear, after its ReLU / ReLU6 / hardtanh when
    that activation is the layer's only consumer (the runtime fuses conv + relu);
(c) on the output of each residual add of two tensors (after a sole-consumer ReLU too);
(d) on the output of average / adaptive-average pooling;
(e) on both inputs of a matmul / bmm of two activations, and on its output.

Max-pool, flatten, reshape / view, dropout and identity keep their input's grid, so they
get no quantizer. A quantizer whose value reaches only the model output or float layers
is dropped: the logits stay float. Any quantized layer, add or matmul input that still has
no quantizer upstream (e.g. it comes from a float submodule) gets one after its producer.
Transpose / permute also pass through (a per-tensor grid does not care about layout).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx, nn

from torchslim._record import Quantization, carry_, record_of
from torchslim.errors import ConfigError
from torchslim.quant.config import LayerPlan, QuantConfig, check_names, matches, resolve_layers
from torchslim.quant.fake_quant import FakeQuantize
from torchslim.quant.fold import ConvBn, QuantConvBn, fold_batchnorm_
from torchslim.quant.graph import UntraceableLeaf, is_tensor_node, node_module, trace
from torchslim.quant.modules import QUANT_MODULES, to_quant_module

__all__ = ["prepare", "set_observers_", "set_fake_quant_", "fake_quantizers",
           "quant_info"]

logger = logging.getLogger(__name__)

# Op names (call_function __name__ or call_method target) by role.
_FUSABLE = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_"}
_ADD = {"add", "add_", "iadd", "__add__", "__iadd__"}
_MATMUL = {"matmul", "bmm", "__matmul__"}
_POOL = {"adaptive_avg_pool1d", "adaptive_avg_pool2d", "avg_pool1d", "avg_pool2d"}
_PASS = {"max_pool1d", "max_pool2d", "flatten", "dropout", "reshape", "view", "contiguous",
         "squeeze", "unsqueeze", "identity", "transpose", "permute"}
_FUSABLE_MODULES = (nn.ReLU, nn.Hardtanh)  # ReLU6 is a Hardtanh
_POOL_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AvgPool2d)
_PASS_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)


def prepare(model: nn.Module, config: QuantConfig = QuantConfig(), *,
            example_inputs: Any, simulate_bn: bool = False) -> fx.GraphModule:
    """A new, quantization-ready copy of ``model`` (the input is left untouched).

    The result is in eval mode with observers on and fake quantization off, ready for
    ``calibrate_``; ``record_of(result).quantization`` holds the config, the quantized layers
    and the layers kept in float with the reason. BatchNorm is folded into the convs, or with
    ``simulate_bn`` (QAT only) kept beside them in ``QuantConvBn`` modules until
    ``fold_simulated_bn_``.
    """
    work = copy.deepcopy(model).eval()
    module_names = [n for n, _ in work.named_modules() if n]
    opaque = _skipped_containers(work, config)
    gm, untraceable = trace(work, leaves=opaque)
    folded = fold_batchnorm_(gm, simulate=simulate_bn)
    layer_nodes = [n for n in gm.graph.nodes if _is_layer(node_module(gm, n))]
    layer_names = [str(n.target) for n in layer_nodes]
    check_names(config, module_names, layer_names)
    plans = resolve_layers(config, layer_names)
    for node in layer_nodes:
        _swap_layer(gm, node, plans[str(node.target)], config)
    rules = _insert_activation_quantizers(gm, plans, config)
    gm.graph.lint()
    gm.recompile()
    device = next((p.device for p in gm.parameters()), None)
    if device is not None:
        gm.to(device)  # the new quantizers' buffers follow the weights
    gm.eval()
    _check_runs(gm, example_inputs)
    set_observers_(gm, True)
    set_fake_quant_(gm, False)
    info = _record(gm, config, plans, untraceable, opaque, folded, rules)
    carry_(model, gm, quantization=info)  # the float model's record, plus what was done
    logger.info("prepared %d quantized layers, %d kept in float, %d activation quantizers",
                len(info.quantized), len(info.kept_float), len(rules))
    return gm


def _record(gm: fx.GraphModule, config: QuantConfig, plans: dict[str, LayerPlan],
            untraceable: list[UntraceableLeaf], opaque: list[str], folded: list[str],
            rules: dict[str, str]) -> Quantization:
    """What preparation did, for calibration, the exporter, sensitivity and the report."""
    floats = [(str(leaf), f"cannot trace: {leaf.reason}") for leaf in untraceable]
    floats += [(name, "in skip list") for name in opaque]
    floats += [(name, plan.reason) for name, plan in plans.items() if plan.weight is None]
    return Quantization(
        config=config,
        quantized=tuple(name for name, plan in plans.items() if plan.weight is not None),
        kept_float=tuple(floats),
        folded_bn=tuple(folded),
        activation_quantizers=dict(rules),  # {module name: placement rule}
        layer_inputs={k: tuple(v) for k, v in _layer_inputs(gm, plans).items()})


def quant_info(model: nn.Module) -> Quantization:
    """The quantization record of a model prepared for static quantization."""
    info = record_of(model).quantization
    if info is None or not isinstance(info.config, QuantConfig):
        raise ConfigError(f"{type(model).__name__} is not prepared for static quantization: "
                          "call torchslim.quant.prepare(model, config, example_inputs=...) first")
    return info


def fake_quantizers(model: nn.Module) -> Iterator[tuple[str, FakeQuantize]]:
    for name, module in model.named_modules():
        if isinstance(module, FakeQuantize):
            yield name, module


def set_observers_(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch every observer on or off; off freezes the current qparams."""
    for _, fq in fake_quantizers(model):
        fq.enable_observer(enabled)
    return model


def set_fake_quant_(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch every fake quantizer on (simulate integers) or off (float pass-through)."""
    for _, fq in fake_quantizers(model):
        fq.enable_fake_quant(enabled)
    return model


def _skipped_containers(model: nn.Module, config: QuantConfig) -> list[str]:
    """Skip entries naming whole submodules (not single layers): traced as float leaves."""
    names = []
    for name, module in model.named_modules():
        inside_skipped = any(name.startswith(n + ".") for n in names)
        is_container = next(module.children(), None) is not None
        if not name or not is_container or inside_skipped:
            continue
        if any(matches(p, name) for p in config.skip):
            names.append(name)
    return names


def _is_layer(module: nn.Module | None) -> bool:
    return type(module) in QUANT_MODULES or isinstance(module, ConvBn)


def _swap_layer(gm: fx.GraphModule, node: fx.Node, plan: LayerPlan, config: QuantConfig) -> None:
    if plan.weight is None:
        return
    float_layer = gm.get_submodule(str(node.target))
    weight_fq = FakeQuantize(plan.weight, observer=config.weight_observer)
    if isinstance(float_layer, ConvBn):
        quant: nn.Module = QuantConvBn(float_layer.conv, float_layer.bn, weight_fq)
    else:
        quant = to_quant_module(float_layer, weight_fq)
    _set_submodule(gm, str(node.target), quant)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _role(gm: fx.GraphModule, node: fx.Node, plans: dict[str, LayerPlan]) -> str:
    """One of layer, float_layer, fusable, add, matmul, pool, pass, placeholder, other."""
    if node.op == "placeholder":
        return "placeholder"
    if node.op == "call_module":
        module = node_module(gm, node)
        if str(node.target) in plans:
            return "layer" if plans[str(node.target)].weight is not None else "float_layer"
        for kinds, role in ((_FUSABLE_MODULES, "fusable"), (_POOL_MODULES, "pool"),
                            (_PASS_MODULES, "pass")):
            if isinstance(module, kinds):
                return role
        return "opaque"  # a float leaf (untraceable or skipped submodule)
    if node.op in ("call_function", "call_method"):
        name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
        two_tensors = len(node.args) >= 2 and all(is_tensor_node(a) for a in node.args[:2])
        for names, role in ((_FUSABLE, "fusable"), (_POOL, "pool"), (_PASS, "pass")):
            if name in names:
                return role
        if name in _ADD and two_tensors:
            return "add"
        if name in _MATMUL and two_tensors:
            return "matmul"
    return "other"


class _Inserter:
    """Adds FakeQuantize modules to the graph and remembers which rule placed each."""

    def __init__(self, gm: fx.GraphModule, config: QuantConfig) -> None:
        self.gm, self.config = gm, config
        self.rules: dict[str, str] = {}

    def _new(self, base: str, rule: str, spec: Any) -> str:
        name, i = f"{base}_act_fq", 1
        while hasattr(self.gm, name):
            name, i = f"{base}_act_fq{i}", i + 1
        self.gm.add_submodule(name, FakeQuantize(spec, observer=self.config.activation_observer,
                                                 **self.config.activation_observer_kwargs))
        self.rules[name] = rule
        return name

    def after(self, node: fx.Node, rule: str, spec: Any = None) -> fx.Node:
        name = self._new(node.name, rule, spec or self.config.activation)
        with self.gm.graph.inserting_after(node):
            fq = self.gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(fq, delete_user_cb=lambda user: user is not fq)
        return fq

    def remove(self, fq: fx.Node) -> None:
        fq.replace_all_uses_with(fq.args[0])  # type: ignore[arg-type]
        self.gm.graph.erase_node(fq)
        self.gm.delete_submodule(str(fq.target))
        del self.rules[str(fq.target)]

    def is_fq(self, node: fx.Node) -> bool:
        return node.op == "call_module" and str(node.target) in self.rules


def _fused_end(gm: fx.GraphModule, node: fx.Node, plans: dict[str, LayerPlan]) -> fx.Node:
    """``node``'s sole-consumer ReLU-like activation if any, else ``node`` itself."""
    users = list(node.users)
    if len(users) == 1 and _role(gm, users[0], plans) == "fusable":
        return users[0]
    return node


def _insert_activation_quantizers(gm: fx.GraphModule, plans: dict[str, LayerPlan],
                                  config: QuantConfig) -> dict[str, str]:
    ins = _Inserter(gm, config)
    nodes = list(gm.graph.nodes)
    roles = {n: _role(gm, n, plans) for n in nodes}
    for node in nodes:  # rules (a)-(e): quantize outputs
        role = roles[node]
        if role == "placeholder":
            ins.after(node, "input")
        elif role == "layer":
            ins.after(_fused_end(gm, node, plans), "output", plans[str(node.target)].activation)
        elif role in ("add", "pool", "matmul"):
            end = _fused_end(gm, node, plans) if role == "add" else node
            ins.after(end, role)
    for node in nodes:  # quantized consumers need quantized inputs
        if roles[node] not in ("layer", "add", "matmul"):
            continue
        args = node.args[:1] if roles[node] == "layer" else node.args[:2]
        for arg in args:
            if isinstance(arg, fx.Node) and not ins.is_fq(_source(gm, arg, plans)):
                # After the producer, not before this consumer: one quantizer per tensor
                # however many quantized consumers read it.
                ins.after(arg, "matmul_input" if roles[node] == "matmul" else "input_of")
    for node in list(gm.graph.nodes):  # drop quantizers nobody integer consumes
        if ins.is_fq(node) and _only_float_sinks(gm, node, plans):
            ins.remove(node)
    return ins.rules


def _source(gm: fx.GraphModule, node: fx.Node, plans: dict[str, LayerPlan]) -> fx.Node:
    """Walk back through grid-preserving ops (max-pool, flatten, view, ...)."""
    while _role(gm, node, plans) == "pass" and node.args and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


def _only_float_sinks(gm: fx.GraphModule, node: fx.Node, plans: dict[str, LayerPlan]) -> bool:
    """Whether ``node``'s value reaches only the graph output or float layers."""
    for user in node.users:
        role = _role(gm, user, plans)
        if role == "pass":
            if not _only_float_sinks(gm, user, plans):
                return False
        elif user.op != "output" and role != "float_layer":
            return False
    return True


def _layer_inputs(gm: fx.GraphModule, plans: dict[str, LayerPlan]) -> dict[str, list[str]]:
    """``{quantized layer: [activation quantizer feeding its input]}`` (for sensitivity)."""
    result: dict[str, list[str]] = {}
    for node in gm.graph.nodes:
        if _role(gm, node, plans) == "layer" and isinstance(node.args[0], fx.Node):
            src = _source(gm, node.args[0], plans)
            is_fq = isinstance(node_module(gm, src), FakeQuantize)
            result[str(node.target)] = [str(src.target)] if is_fq else []
    return result


@torch.no_grad()
def _check_runs(gm: fx.GraphModule, example_inputs: Any) -> None:
    """One float forward (quantizers off) so that a broken graph fails here, not later."""
    set_observers_(gm, False)
    set_fake_quant_(gm, False)
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    gm(*args)
