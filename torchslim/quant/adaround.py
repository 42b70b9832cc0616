"""AdaRound (Nagel et al., ICML 2020, "Up or Down? Adaptive Rounding for Post-Training
Quantization"): learn, layer by layer, whether each weight rounds up or down.

Rounding to nearest minimises each weight's own error, not the layer's output error; at
4 bits the difference costs points of accuracy. AdaRound keeps the grid the weight observer
chose (scale and zero point stay fixed) and picks ``floor(w / s)`` or ``floor(w / s) + 1``
for every weight so as to minimise the layer's output error on calibration data

    || f(W~ x~ + b) - f(W x + b) ||^2   (summed over output channels, mean over the rest)

where ``x~`` is the layer's input in the quantized model (every earlier layer already
rounded, activations fake-quantized as configured), ``x`` and ``W`` the float model's input
and weight, ``b`` the bias as the layer adds it, and ``f`` the ReLU / ReLU6 right after
the layer, if there is one. The binary choice is relaxed to

    W~ = s * (clamp(floor(W / s) + h(V) + z, qmin, qmax) - z)
    h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1),  zeta = 1.1, gamma = -0.1

and ``V`` (initialised so that ``W~ = W``) is trained with Adam on the output error plus
``lambda * sum(1 - |2 h(V) - 1|^beta)``, which drives every ``h`` to 0 or 1; ``beta``
anneals linearly (20 -> 2) after a warm-up without the term. The layer then keeps the hard
choice ``floor + [V >= 0]``, written back as the on-grid float ``(q - z) * s``: its weight
quantizer returns it unchanged, and every exporter writes exactly these integers.

BatchNorm is already folded (``prepare``). ``calibrate_`` runs this after the observers
froze and before bias correction, when the config says ``rounding="adaround"``. Under
``torchrun`` each step's gradient of ``V`` is averaged over the ranks, so every rank keeps
the same rounding.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, fx, nn
from torch.nn import functional as F

from torchslim import _progress
from torchslim.capture.inputs import call, first_inputs, to_device
from torchslim.errors import ConfigError
from torchslim.quant.affine import QuantSpec, broadcast_qparams
from torchslim.quant.config import AdaRoundConfig
from torchslim.quant.distributed import lockstep
from torchslim.quant.fake_quant import FakeQuantize
from torchslim.quant.modules import QUANT_MODULES
from torchslim.quant.prepare import quant_info, set_fake_quant_
from torchslim.train.distributed import current

__all__ = ["adaround_", "round_layer", "LayerRounding", "ZETA", "GAMMA"]

logger = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1   # the rectified sigmoid's stretch: h reaches 0 and 1 exactly
_QUANT_LAYERS = tuple(QUANT_MODULES.values())


@dataclass(frozen=True)
class LayerRounding:
    """What AdaRound did to one layer: the output error (the loss's reconstruction term on
    every calibration sample) with nearest and with learned rounding."""

    name: str
    mse_nearest: float
    mse_adaround: float
    changed: float     # share of the weights rounded the other way than to nearest
    seconds: float

    def __str__(self) -> str:
        return (f"{self.name}: output error {self.mse_nearest:.4g} (nearest) -> "
                f"{self.mse_adaround:.4g} (adaround), {100 * self.changed:.1f} % of the "
                f"weights rounded the other way, {self.seconds:.1f} s")


class _Rounding(nn.Module):
    """A weight on its fixed grid: ``floor(w / s)`` plus a learned ``h(V)`` in [0, 1]."""

    def __init__(self, weight: Tensor, scale: Tensor, zero_point: Tensor, spec: QuantSpec) -> None:
        super().__init__()
        view, s, z = broadcast_qparams(weight.detach().float(), scale.float(), zero_point, spec)
        self.shape, self.spec = weight.shape, spec
        self.s, self.z = s, z.float()        # broadcast against the grid view
        self.floor = torch.floor(view / s)   # the view's shape: (..., D/g, g) per group
        rest = (view / s - self.floor).clamp(0.0, 1.0)
        # h(V) = rest, so that training starts from the float weight itself
        ratio = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
        self.v = nn.Parameter(torch.log(ratio / (1 - ratio)))
        self.nearest = torch.round(view / s)

    def h(self) -> Tensor:
        return (torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def weight(self, q_offset: Tensor) -> Tensor:
        """The float weight of ``floor + q_offset`` on the grid, in the layer's shape."""
        q = torch.clamp(self.floor + q_offset + self.z, self.spec.qmin, self.spec.qmax)
        return ((q - self.z) * self.s).reshape(self.shape)

    def soft(self) -> Tensor:
        return self.weight(self.h())

    def hard(self) -> Tensor:
        return self.weight((self.v >= 0).float())  # h(V) >= 0.5 exactly where V >= 0

    def nearest_weight(self) -> Tensor:
        return self.weight(self.nearest - self.floor)

    def regulariser(self, beta: float) -> Tensor:
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()


def _output(layer: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    return layer._conv_forward(x, weight, bias)  # type: ignore[operator]


def _error(out: Tensor, target: Tensor) -> Tensor:
    """Squared error summed over the channel dim (1: conv maps, linear rows), mean over
    the rest: the paper's Frobenius norm per sample, position by position."""
    return (out - target).pow(2).sum(1).mean()


def _beta(step: int, config: AdaRoundConfig) -> float | None:
    """The regulariser's beta at ``step``, None during warm-up (no regulariser)."""
    start = int(config.warmup * config.iterations)
    if step < start:
        return None
    progress = (step - start) / max(config.iterations - start, 1)
    return config.beta_start + (config.beta_end - config.beta_start) * progress


def round_layer(layer: nn.Module, inputs: Tensor, targets: Tensor, *,
                config: AdaRoundConfig = AdaRoundConfig(),
                activation: Callable[[Tensor], Tensor] | None = None,
                name: str = "layer") -> LayerRounding:
    """AdaRound one quantized Conv / Linear in place: ``inputs`` are what the quantized
    model feeds it (samples along dim 0), ``targets`` the float model's output of the
    same samples (after ``activation``, if given). Its weight quantizer must be frozen:
    its scale and zero point are the grid the learned rounding stays on."""
    fq = _check_layer(layer, name)
    t0 = time.perf_counter()
    rounding = _Rounding(layer.weight, fq.scale, fq.zero_point, fq.spec)
    with torch.no_grad():
        bias = layer.bias_on_grid(layer.bias)  # type: ignore[operator]  # fixed: the scales are
        bias = None if bias is None else bias.detach()
    act = activation or (lambda t: t)

    def loss_of(weight: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return _error(act(_output(layer, x, weight, bias)), y)

    _optimise(rounding, inputs, targets, loss_of, config, name)
    with torch.no_grad():
        nearest, hard = rounding.nearest_weight(), rounding.hard()
        mse_nearest = _full_error(loss_of, nearest, inputs, targets)
        mse_adaround = _full_error(loss_of, hard, inputs, targets)
        changed = float((hard != nearest).float().mean())
        layer.weight.copy_(hard.to(layer.weight.dtype))
    return LayerRounding(name, mse_nearest, mse_adaround, changed, time.perf_counter() - t0)


def _check_layer(layer: nn.Module, name: str) -> FakeQuantize:
    """The layer's weight quantizer, which must be calibrated and frozen."""
    fq = getattr(layer, "weight_fake_quant", None)
    if type(layer) not in _QUANT_LAYERS or not isinstance(fq, FakeQuantize) \
            or not fq.fake_quant_enabled or fq.observer_enabled or fq.scale.numel() == 0:
        raise ConfigError(f"{name}: AdaRound needs a quantized Conv / Linear with a calibrated, "
                          "frozen weight quantizer (its scale is the grid); run calibrate_ on "
                          "the prepared model first")
    return fq


def _optimise(rounding: _Rounding, inputs: Tensor, targets: Tensor,
              loss_of: Callable[[Tensor, Tensor, Tensor], Tensor], config: AdaRoundConfig,
              name: str) -> None:
    """Adam on ``V``: the output error, plus the annealed regulariser after warm-up."""
    world = current()
    optimizer = torch.optim.Adam([rounding.v], lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    n, every = inputs.shape[0], max(config.iterations // 5, 1)
    for step in _progress.track(range(config.iterations), description=f"adaround {name}",
                                total=config.iterations):
        idx = torch.randint(n, (min(config.batch_size, n),), generator=gen).to(inputs.device)
        rec = loss_of(rounding.soft(), inputs[idx], targets[idx])
        beta = _beta(step, config)
        reg = config.reg_weight * rounding.regulariser(beta) if beta is not None else None
        loss = rec if reg is None else rec + reg
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if world is not None:  # every rank the same V: the mean gradient over the ranks
            dist.all_reduce(rounding.v.grad)
            rounding.v.grad /= world.size
        optimizer.step()
        if (step + 1) % every == 0:
            _log_step(name, step + 1, config.iterations, rec, reg, rounding.h())


def _log_step(name: str, step: int, total: int, rec: Tensor, reg: Tensor | None,
              h: Tensor) -> None:
    undecided = float(((h > 0) & (h < 1)).float().mean())
    logger.debug("adaround %s step %d/%d: output error %.4g, regulariser %s, %.1f %% of h "
                 "not yet 0 or 1", name, step, total, float(rec.detach()),
                 "off" if reg is None else f"{float(reg.detach()):.4g}", 100 * undecided)


def _full_error(loss_of: Callable[[Tensor, Tensor, Tensor], Tensor], weight: Tensor,
                inputs: Tensor, targets: Tensor, chunk: int = 256) -> float:
    """The output error over every sample (chunks weighted by their size)."""
    total = 0.0
    for start in range(0, inputs.shape[0], chunk):
        x, y = inputs[start:start + chunk], targets[start:start + chunk]
        total += float(loss_of(weight, x, y)) * x.shape[0]
    return total / max(inputs.shape[0], 1)


# ----------------------------------------------------------------- the whole model


@torch.no_grad()
def adaround_(prepared: nn.Module, data: Iterable[Any], *, num_batches: int = 32
              ) -> list[LayerRounding]:
    """AdaRound every quantized Conv / Linear of a calibrated ``prepared`` model in graph
    order, in place, on the inputs of ``num_batches`` batches of ``data`` (``x`` or
    ``(x, y)``); the config's ``adaround`` settings. Returns what each layer gained.

    Layers go one after another: each learns on the inputs the quantized model gives it
    with every earlier layer already rounded. The float targets come from a copy of the
    model with every quantizer off. Every batch's layer input and output are held at once
    (``num_batches * batch`` samples), one layer at a time.
    """
    config = quant_info(prepared).config.adaround
    device = next((p.device for p in prepared.parameters()), torch.device("cpu"))
    samples = [to_device(x, device) for x in lockstep(first_inputs(data, num_batches))]
    if not samples:
        raise ConfigError("AdaRound's calibration data yielded no batches; pass a non-empty "
                          "loader")
    reference = copy.deepcopy(prepared).eval()
    set_fake_quant_(reference, False)  # the float model (BatchNorm folded)
    names = _layers(prepared)
    reports = []
    for i, name in enumerate(names):
        layer = prepared.get_submodule(name)
        inputs = _collect(prepared, name, samples, layer, output=False)
        targets = _collect(reference, name, samples, layer, output=True)
        activation = _activation_after(prepared, name)
        if activation is not None:
            targets = activation(targets)
        with torch.enable_grad():
            report = round_layer(layer, inputs, targets, config=config,
                                 activation=activation, name=name)
        logger.info("adaround %d/%d %s", i + 1, len(names), report)
        reports.append(report)
        del inputs, targets
    return reports


def _layers(prepared: nn.Module) -> list[str]:
    """The quantized layers AdaRound can round, in graph order (a conv still beside its
    BatchNorm, QAT's ``QuantConvBn``, and layers whose weights are not fake-quantized keep
    their rounding)."""
    names = []
    for name in quant_info(prepared).quantized:
        layer = prepared.get_submodule(name)
        fq = getattr(layer, "weight_fake_quant", None)
        if type(layer) in _QUANT_LAYERS and isinstance(fq, FakeQuantize) \
                and fq.fake_quant_enabled:
            names.append(name)
        else:
            logger.info("adaround: %s (%s) keeps nearest rounding", name, type(layer).__name__)
    return names


class _Reached(Exception):
    """Raised by the collecting hook: the rest of the forward is not needed."""


def _collect(model: nn.Module, name: str, samples: list[Any], like: nn.Module, *,
             output: bool) -> Tensor:
    """The input (or output) of ``model``'s layer ``name`` on every sample, stacked along
    dim 0; a Linear's as rows ``(N, features)`` (rows are independent there). A layer the
    graph calls once stops the forward there; one called several times is seen at every
    call."""
    seen: list[Tensor] = []
    stop = _calls(model, name) == 1

    def hook(_m: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
        seen.append((out if output else args[0]).detach())
        if stop:
            raise _Reached

    handle = model.get_submodule(name).register_forward_hook(hook)
    try:
        for x in samples:
            try:
                call(model, x)
            except _Reached:
                pass
    finally:
        handle.remove()
    if isinstance(like, nn.Linear):
        return torch.cat([t.reshape(-1, t.shape[-1]) for t in seen])
    shapes = {tuple(t.shape[1:]) for t in seen}
    if len(shapes) != 1:
        raise ConfigError(f"AdaRound stacks {name}'s calibration inputs, but they have "
                          f"several shapes {sorted(shapes)}; calibrate on batches of one "
                          "input size")
    return torch.cat(seen)


def _nodes(model: nn.Module, name: str) -> list[tuple[fx.GraphModule, fx.Node]]:
    """The graph nodes calling layer ``name`` (full module path), with their graph."""
    found = []
    for prefix, gm in model.named_modules():
        if isinstance(gm, fx.GraphModule):
            for node in gm.graph.nodes:
                full = f"{prefix}.{node.target}" if prefix else str(node.target)
                if node.op == "call_module" and full == name:
                    found.append((gm, node))
    return found


def _calls(model: nn.Module, name: str) -> int:
    """How often one forward calls layer ``name`` (0: not seen in a graph; it is then
    collected at every call)."""
    return len(_nodes(model, name)) if isinstance(model, fx.GraphModule) else 0


_RELUS = {torch.relu, F.relu, torch.ops.aten.relu.default, torch.ops.aten.relu_.default}
_HARDTANH = {F.hardtanh, torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default}


def _activation_after(model: nn.Module, name: str) -> Callable[[Tensor], Tensor] | None:
    """The ReLU / ReLU6 (hardtanh) that alone consumes layer ``name``'s output, if any."""
    nodes = _nodes(model, name)
    if len(nodes) != 1 or len(nodes[0][1].users) != 1:
        return None
    gm, node = nodes[0]
    return _as_activation(gm, next(iter(node.users)))


def _as_activation(gm: fx.GraphModule, node: fx.Node) -> Callable[[Tensor], Tensor] | None:
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        if type(module) in (nn.ReLU, nn.ReLU6, nn.Hardtanh):
            return module
        return None
    if node.op != "call_function":
        return None
    if node.target in _RELUS:
        return F.relu
    if node.target in _HARDTANH:
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and math.isfinite(hi):
            return partial(F.hardtanh, min_val=float(lo), max_val=float(hi))
    return None
