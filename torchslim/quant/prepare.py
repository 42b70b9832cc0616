"""Preparation: capture, fold BatchNorm, swap in Quant* layers, insert activation quantizers,
measure coverage.

1. ``torchslim.capture`` captures the model (torch.export, else fx, else submodule by
   submodule), so module subclasses, functional calls and nn.MultiheadAttention are seen.
2. ``normalize``: layer calls on stored weights become Conv / Linear / BatchNorm modules,
   SiLU becomes ``x * sigmoid(x)``.
3. BatchNorm is folded into the conv / linear before it (``fold``).
4. Each conv / linear gets a Quant* twin with a weight quantizer (``modules``), as the
   config's plan says; activation quantizers go where ONNX Runtime's integer kernels want
   them (``patterns``).
5. Coverage (``coverage``): the share of MACs and parameters that run in INT8 and every
   float op with its reason, in the record; below ``config.min_coverage`` a one-line error.

Why the result stays an fx ``GraphModule`` of modules (not a torch.export program): QAT
trains it (``train()`` / ``eval()`` switch dropout and BN modules, and an exported program
refuses ``train()``), LSQ and sensitivity swap and toggle quantizer MODULES by name, bias
correction hooks the layer modules, and the exporters read ``weight_fake_quant`` off them.
The ATen graph torch.export captured is kept inside as the GraphModule's code, so nothing
the export saw is lost, and the exporters capture it again with the quantizers in place.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import fx, nn

from torchslim._record import Quantization, carry_, record_of
from torchslim.capture import capture
from torchslim.capture.values import module_macs
from torchslim.capture.inputs import ExampleInputs, as_example_inputs
from torchslim.errors import ConfigError
from torchslim.quant.bias_grid import link_input_quantizers_
from torchslim.quant.config import (LayerPlan, QuantConfig, check_names, matches,
                                    resolve_layers)
from torchslim.quant.coverage import Tally, enforce, params_of, summarise, tally_unit
from torchslim.quant.fake_quant import FakeQuantize
from torchslim.quant.fold import ConvBn, QuantConvBn, fold_batchnorm_
from torchslim.quant.modules import QUANT_MODULES, to_quant_module
from torchslim.quant.normalize import decompose_silu_, modulize_
from torchslim.quant.patterns import Placement, place_quantizers, quantized_inputs
from torchslim.quant.reduce_range import resolve_reduce_range

__all__ = ["prepare", "set_observers_", "set_fake_quant_", "fake_quantizers", "quant_info"]

logger = logging.getLogger(__name__)


def prepare(model: nn.Module, config: QuantConfig = QuantConfig(), *,
            example_inputs: Any, simulate_bn: bool = False) -> nn.Module:
    """A new, quantization-ready copy of ``model`` (the input is left untouched).

    ``example_inputs``: a tensor, a tuple (positional) or a dict (keywords) of any dtypes.
    The result is in eval mode with observers on and fake quantization off, ready for
    ``calibrate_``; ``record_of(result).quantization`` holds the config, the quantized
    layers, the layers kept in float with the reason and the coverage. BatchNorm is
    folded into the convs, or with ``simulate_bn`` (QAT only) kept beside them in
    ``QuantConvBn`` modules until ``fold_simulated_bn_``. Raises
    ``UnsupportedModelError`` when less than ``config.min_coverage`` of the quantizable
    MACs would run in INT8.
    """
    work = copy.deepcopy(model).eval()
    module_names = [n for n, _ in work.named_modules() if n]
    inputs = as_example_inputs(example_inputs, model=work)
    skipped = _skipped_containers(work, config)
    captured = capture(work, inputs, method=config.capture)
    for name, why in captured.float_parts:
        # A warning (not only a log line): a float block changes speed and accuracy, and
        # the user should see it even with logging unconfigured. Also in the record.
        warnings.warn(f"kept in float: {name or type(model).__name__} ({why})", stacklevel=2)
    root = captured.module
    owners = {id(m.weight): m for m in work.modules()
              if isinstance(getattr(m, "weight", None), torch.Tensor)}
    folded: list[str] = []
    for prefix, gm in captured.units.items():
        modulize_(gm, owners)
        decompose_silu_(gm)
        folded += [_full(prefix, n) for n in fold_batchnorm_(gm, simulate=simulate_bn)]
    layers = _layer_nodes(captured.units)
    check_names(config, [*module_names, *layers], list(layers))
    reduce, why = resolve_reduce_range(config.reduce_range)
    logger.info("static quantization: %s", why)
    plans = _plans(config, list(layers), skipped, reduce)
    tally, rules, layer_inputs = Tally(), {}, {}
    for prefix, gm in captured.units.items():
        local = {name[len(prefix) + 1 if prefix else 0:]: plans[name]
                 for name, (unit, _) in layers.items() if unit == prefix}
        placement = _prepare_unit(gm, prefix, local, config, skipped)
        rules.update({_full(prefix, k): v for k, v in placement.rules.items()})
        layer_inputs.update(_layer_inputs(placement, prefix, local))
        tally_unit(tally, gm, prefix, local, placement, set(captured.units))
    _finish(root, inputs)
    info = _record(root, config, plans, captured, skipped, folded, rules, layer_inputs,
                   tally, inputs, reduce)
    enforce(info.coverage, config.min_coverage, type(model).__name__)
    carry_(model, root, quantization=info)  # the float model's record, plus what was done
    cov = info.coverage
    logger.info("prepared %d quantized layers, %d kept in float, %d activation quantizers; "
                "%.1f%% of the MACs and %.1f%% of the parameters in INT8 (capture: %s)",
                len(info.quantized), len(info.kept_float), len(rules),
                100 * cov.macs_fraction, 100 * cov.params_fraction, cov.capture)
    return root


def _full(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _layer_nodes(units: dict[str, fx.GraphModule]) -> dict[str, tuple[str, fx.Node]]:
    """``{full layer name: (unit, node)}`` of every quantizable layer, in graph order."""
    layers: dict[str, tuple[str, fx.Node]] = {}
    for prefix, gm in units.items():
        for node in gm.graph.nodes:
            if node.op == "call_module" and _is_layer(gm.get_submodule(str(node.target))):
                layers.setdefault(_full(prefix, str(node.target)), (prefix, node))
    return layers


def _is_layer(module: nn.Module) -> bool:
    return type(module) in QUANT_MODULES or isinstance(module, ConvBn)


def _plans(config: QuantConfig, names: list[str], skipped: list[str],
           reduce: bool) -> dict[str, LayerPlan]:
    plans = resolve_layers(config, names, reduce_range=reduce)
    for name in names:
        container = next((c for c in skipped if name.startswith(c + ".")), None)
        if container is not None:
            plans[name] = LayerPlan(None, config.activation, f"in skip list ({container})")
    return plans


def _in_skip(prefix: str, skipped: list[str]) -> Callable[[fx.Node], bool]:
    def inside(node: fx.Node) -> bool:
        paths = [str(v[0]) for v in (node.meta.get("nn_module_stack") or {}).values()]
        if node.op == "call_module":
            paths.append(str(node.target))
        full = [_full(prefix, p) for p in paths]
        return any(f == c or f.startswith(c + ".") for f in full for c in skipped)
    return inside


def _prepare_unit(gm: fx.GraphModule, prefix: str, plans: dict[str, LayerPlan],
                  config: QuantConfig, skipped: list[str]) -> Placement:
    """Swap the planned layers of one captured graph and place its quantizers."""
    for name, plan in plans.items():
        if plan.weight is not None:
            _swap_layer(gm, name, plan, config)
    placement = place_quantizers(gm, config, plans, _in_skip(prefix, skipped))
    gm.graph.lint()
    gm.recompile()
    return placement


def _finish(root: nn.Module, inputs: ExampleInputs) -> None:
    device = next((p.device for p in root.parameters()), None)
    if device is not None:
        root.to(device)  # the new quantizers' buffers follow the weights
    root.eval()
    _check_runs(root, inputs)
    set_observers_(root, True)
    set_fake_quant_(root, False)


def _record(root: nn.Module, config: QuantConfig, plans: dict[str, LayerPlan], captured: Any,
            skipped: list[str], folded: list[str], rules: dict[str, str],
            layer_inputs: dict[str, list[str]], tally: Tally, inputs: ExampleInputs,
            reduce: bool) -> Quantization:
    """What preparation did, for calibration, the exporter, sensitivity and the report."""
    floats = [(name or "(root)", why) for name, why in captured.float_parts]
    floats += [(name, "in skip list") for name in skipped]
    floats += [(name, plan.reason) for name, plan in plans.items() if plan.weight is None]
    quantized = tuple(name for name, plan in plans.items() if plan.weight is not None)
    total, weights = params_of(root, list(quantized))
    tally.opaque.update(dict(captured.float_parts))  # the capture's reason is the precise one
    coverage = summarise(tally, capture=captured.method, notes=captured.notes,
                         opaque_macs=module_macs(root, list(tally.opaque), inputs),
                         params_total=total, params_quantized=weights)
    return Quantization(
        config=config, quantized=quantized, kept_float=tuple(floats), folded_bn=tuple(folded),
        activation_quantizers=dict(rules),  # {module name: placement rule}
        layer_inputs={k: tuple(v) for k, v in layer_inputs.items()},
        reduce_range=reduce, coverage=coverage)


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
    """Skip entries naming whole submodules (not single layers): kept whole in float."""
    names: list[str] = []
    for name, module in model.named_modules():
        inside_skipped = any(name.startswith(n + ".") for n in names)
        is_container = next(module.children(), None) is not None
        if not name or not is_container or inside_skipped:
            continue
        if any(matches(p, name) for p in config.skip):
            names.append(name)
    return names


def _swap_layer(gm: fx.GraphModule, name: str, plan: LayerPlan, config: QuantConfig) -> None:
    assert plan.weight is not None
    float_layer = gm.get_submodule(name)
    weight_fq = FakeQuantize(plan.weight, observer=config.weight_observer)
    if isinstance(float_layer, ConvBn):
        quant: nn.Module = QuantConvBn(float_layer.conv, float_layer.bn, weight_fq)
    else:
        quant = to_quant_module(float_layer, weight_fq)
    parent, _, child = name.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, child, quant)


def _layer_inputs(placement: Placement, prefix: str, plans: dict[str, LayerPlan]
                  ) -> dict[str, list[str]]:
    """``{quantized layer: [activation quantizer feeding its input]}`` (for sensitivity)."""
    result: dict[str, list[str]] = {}
    for node in placement.gm.graph.nodes:
        target = str(node.target)
        if node.op == "call_module" and target in plans and plans[target].weight is not None:
            result[_full(prefix, target)] = [_full(prefix, q) for q in
                                             quantized_inputs(placement, node)]
    return result


@torch.no_grad()
def _check_runs(model: nn.Module, inputs: ExampleInputs) -> None:
    """One float forward (quantizers off) so that a broken graph fails here, not later;
    the same pass links each layer to the quantizer feeding it (its bias grid)."""
    set_observers_(model, False)
    set_fake_quant_(model, False)
    links = link_input_quantizers_(model, inputs)
    logger.debug("%d layers add their bias on the int32 grid of their input", len(links))
