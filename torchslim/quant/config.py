"""What to quantize and how: one frozen config per kind of quantization.

``torchslim.quantize(model, config)`` dispatches on the config's type:

* ``QuantConfig``: static (calibrated) PTQ, and QAT (``torchslim.qat``): global weight /
  activation specs, per-layer overrides (exact name or regex), a skip list, a policy for
  the first and last quantizable layers and how weights round (``rounding``; AdaRound's
  settings in ``AdaRoundConfig``). ``resolve_layers`` turns it into
  ``{layer name: LayerPlan}`` for one model, and is where a name that matches no layer is
  reported (the config alone cannot know the model);
* ``DynamicQuantConfig``: int8 weights, activations quantized at run time;
* ``WeightOnlyConfig``: int weights per group or channel, float activations.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from torchslim.capture.api import METHODS as CAPTURE_METHODS
from torchslim.errors import ConfigError
from torchslim.quant.affine import QuantSpec
from torchslim.quant.observers import OBSERVERS, make_observer
from torchslim.quant.reduce_range import check_reduce_range, reduced_weight

__all__ = ["QuantConfig", "AdaRoundConfig", "DynamicQuantConfig", "WeightOnlyConfig",
           "LayerOverride", "LayerPlan", "LAYER_POLICIES", "ROUNDINGS", "DYNAMIC_LAYERS",
           "DEFAULT_WEIGHT", "DEFAULT_ACTIVATION", "resolve_layers", "matches", "check_names", "check_skip", "weight_only_spec"]

# s8 symmetric per output channel: what ONNX Runtime's integer conv and TensorRT expect.
DEFAULT_WEIGHT = QuantSpec(bits=8, signed=True, symmetric=True, granularity="per_channel", axis=0)
# u8 asymmetric per tensor: ONNX Runtime's fast x86 (VNNI) path wants u8 activations with s8
# weights, and post-ReLU activations use the whole unsigned range.
DEFAULT_ACTIVATION = QuantSpec(bits=8, signed=False, symmetric=False, granularity="per_tensor")
LAYER_POLICIES = ("quantize", "float", "8bit")
# how static PTQ rounds weights onto the observer's grid: to nearest, or AdaRound's learned
# up / down choice per weight (torchslim.quant.adaround)
ROUNDINGS = ("nearest", "adaround")
# layer kinds dynamic quantization handles, by the name its config uses
DYNAMIC_LAYERS: dict[str, type[nn.Module]] = {"linear": nn.Linear, "lstm": nn.LSTM}


class ReadOnlyDict(dict):  # type: ignore[type-arg]
    """A dict that refuses mutation but, unlike MappingProxyType, pickles and deep-copies
    (prepared models carry their config and are copied by export and sensitivity)."""

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("QuantConfig.overrides is read-only; build a new config with "
                        "dataclasses.replace(config, overrides={...})")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (ReadOnlyDict, (dict(self),))

    def __deepcopy__(self, memo: dict[int, Any]) -> ReadOnlyDict:
        import copy

        return ReadOnlyDict(copy.deepcopy(dict(self), memo))


@dataclass(frozen=True, kw_only=True)
class LayerOverride:
    """Per-layer exception: another weight / activation spec, or ``skip=True`` for float."""

    weight: QuantSpec | None = None      # None: the global weight spec
    activation: QuantSpec | None = None  # None: the global spec; applies to the layer's OUTPUT
    skip: bool = False

    def __post_init__(self) -> None:
        for name in ("weight", "activation"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, QuantSpec):
                raise ConfigError(f"LayerOverride.{name}={value!r} must be a QuantSpec or None")


@dataclass(frozen=True)
class LayerPlan:
    """How one Conv / Linear layer ends up: a weight spec, or ``weight=None`` for float."""

    weight: QuantSpec | None
    activation: QuantSpec
    reason: str = ""  # why the layer stays float, for the report


@dataclass(frozen=True, kw_only=True)
class AdaRoundConfig:
    """AdaRound's optimisation, per layer (Nagel et al. 2020; ``quant/adaround.py``)."""

    iterations: int = 1000        # Adam steps per layer (the paper: 10k; 1k holds our bars)
    reg_weight: float = 0.01      # lambda of the rounding regulariser
    beta_start: float = 20.0      # the regulariser's beta, annealed linearly after warm-up:
    beta_end: float = 2.0         # a large beta leaves h free, a small one pushes it to 0 / 1
    warmup: float = 0.2           # share of the steps without the regulariser
    lr: float = 1e-3              # Adam on V
    batch_size: int = 32          # calibration samples per step
    seed: int = 0                 # which samples each step draws

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "seed"):
            value = getattr(self, name)
            low = 0 if name == "seed" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"adaround {name}={value!r} must be an integer >= {low}")
        for name in ("reg_weight", "beta_start", "beta_end", "lr"):
            value = getattr(self, name)
            bad = isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0 or (value == 0 and name != "reg_weight")
            if bad:
                which = ">= 0" if name == "reg_weight" else "> 0"
                raise ConfigError(f"adaround {name}={value!r} must be a finite number {which}")
        if self.beta_end > self.beta_start:
            raise ConfigError(f"adaround beta_end={self.beta_end} exceeds beta_start="
                              f"{self.beta_start}; beta anneals down (e.g. 20 -> 2)")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, (int, float)) \
                or not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"adaround warmup={self.warmup!r} must be a fraction in [0, 1) "
                              "of the iterations")


@dataclass(frozen=True, kw_only=True)
class QuantConfig:
    """Static quantization settings; ``prepare`` checks the layer names against the model."""

    weight: QuantSpec = DEFAULT_WEIGHT
    activation: QuantSpec = DEFAULT_ACTIVATION
    weight_observer: str = "minmax"       # weights are fixed: min-max is exact for them
    activation_observer: str = "minmax"   # any name in OBSERVERS (entropy, percentile, ...)
    activation_percentile: float | None = None  # percentile observer: clip at this percentile
                                                # of |x|; None: the observer's own (99.99)
    overrides: Mapping[str, LayerOverride] = field(default_factory=dict)  # name or regex
    skip: tuple[str, ...] = ()            # layer / submodule names or regexes kept in float
    first_layer: str = "quantize"         # the input layer is often the most sensitive
    last_layer: str = "quantize"          # so is the classifier; "8bit" keeps 8-bit weights
    bias_correction: bool = False         # empirical bias correction after calibration
    reduce_range: bool | str = "auto"     # 7-bit weights where x86 INT8 kernels saturate
                                          # ("auto": no VNNI here; see quant/reduce_range.py)
    min_coverage: float = 0.9             # least share of the conv / linear / matmul MACs
                                          # (not kept float on purpose) that must be INT8
    capture: str = "auto"                 # graph capture: auto (torch.export, then fx,
                                          # then per submodule), export or fx
    rounding: str = "nearest"             # weights to nearest, or "adaround": learned up /
                                          # down per weight on calibration data (PTQ at 4 bits)
    adaround: AdaRoundConfig = AdaRoundConfig()  # its settings (rounding="adaround" only)

    def __post_init__(self) -> None:
        check_reduce_range(self.reduce_range)
        _check_rounding(self.rounding, self.adaround)
        if isinstance(self.min_coverage, bool) or not isinstance(self.min_coverage, (int, float)) \
                or not 0.0 <= self.min_coverage <= 1.0:
            raise ConfigError(f"min_coverage={self.min_coverage!r} must be a fraction in [0, 1] "
                              "(0.9: 90 % of the quantizable MACs in INT8)")
        if self.capture not in CAPTURE_METHODS:
            raise ConfigError(f"capture={self.capture!r} must be one of "
                              f"{', '.join(CAPTURE_METHODS)}")
        for name in ("weight", "activation"):
            if not isinstance(getattr(self, name), QuantSpec):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a QuantSpec")
        _check_activation(self.activation, "activation")
        for name in ("weight_observer", "activation_observer"):
            OBSERVERS.get(getattr(self, name))  # UnknownNameError listing the known names
        if self.activation_percentile is not None:
            if self.activation_observer != "percentile":
                raise ConfigError(f"activation_percentile={self.activation_percentile} sets the "
                                  "percentile observer's clip point; use it with "
                                  f"activation_observer='percentile', not "
                                  f"{self.activation_observer!r}")
            # the observer owns the valid range
            make_observer("percentile", self.activation, percentile=self.activation_percentile)
        for name in ("first_layer", "last_layer"):
            if getattr(self, name) not in LAYER_POLICIES:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be one of "
                                  f"{', '.join(LAYER_POLICIES)}")
        if isinstance(self.skip, str) or not isinstance(self.skip, Sequence):
            raise ConfigError(f"skip={self.skip!r} must be a list of layer names or regexes")
        object.__setattr__(self, "skip", tuple(self.skip))
        if not isinstance(self.overrides, Mapping):
            raise ConfigError(f"overrides={self.overrides!r} must map layer names to LayerOverride")
        for key, value in self.overrides.items():
            if not isinstance(value, LayerOverride):
                raise ConfigError(f"overrides[{key!r}]={value!r} must be a LayerOverride")
            if value.activation is not None:
                _check_activation(value.activation, f"overrides[{key!r}].activation")
        # Read-only, yet picklable (a MappingProxy is not: prepared models holding the
        # config must stay deep-copyable).
        object.__setattr__(self, "overrides", ReadOnlyDict(self.overrides))
        for pattern in (*self.skip, *self.overrides):
            _compile(pattern)

    @property
    def activation_observer_kwargs(self) -> dict[str, Any]:
        """The options this config gives its activation observer."""
        if self.activation_percentile is None:
            return {}
        return {"percentile": self.activation_percentile}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QuantConfig:
        """Build from plain data (YAML / CLI): specs are dicts merged onto the defaults,
        overrides map a name to ``{"weight": {...}, "activation": {...}, "skip": bool}``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown QuantConfig keys {unknown}; known: {sorted(known)}")
        kwargs = dict(d)
        weight = _spec(kwargs.get("weight"), DEFAULT_WEIGHT, "weight")
        activation = _spec(kwargs.get("activation"), DEFAULT_ACTIVATION, "activation")
        kwargs.update(weight=weight, activation=activation)
        if isinstance(kwargs.get("adaround"), Mapping):
            kwargs["adaround"] = _adaround(kwargs["adaround"])
        kwargs["overrides"] = {k: _override(k, v, weight, activation)
                               for k, v in dict(kwargs.get("overrides") or {}).items()}
        skip = kwargs.get("skip") or ()
        kwargs["skip"] = (skip,) if isinstance(skip, str) else tuple(skip)  # "fc" is one name
        return cls(**kwargs)


@dataclass(frozen=True, kw_only=True)
class DynamicQuantConfig:
    """Dynamic PTQ: s8 per-output-channel weights, u8 activations quantized at run time
    from each input (no calibration data). ``layers`` picks "linear" and / or "lstm"
    (``nn.LSTM`` becomes what ONNX Runtime's DynamicQuantizeLSTM computes)."""

    bits: int = 8                          # weight bits
    layers: tuple[str, ...] = ("linear",)  # names in DYNAMIC_LAYERS (nn.Linear / nn.LSTM work too)
    skip: tuple[str, ...] = ()             # layer names or regexes kept in float
    per_token: bool = False                # one activation grid per row: torch only (ONNX
                                           # Runtime's DynamicQuantizeLinear is per tensor)
    reduce_range: bool | str = "auto"      # 7-bit weights where x86 INT8 kernels saturate

    def __post_init__(self) -> None:
        QuantSpec(bits=self.bits)  # ConfigError for bits outside [2, 8]
        check_reduce_range(self.reduce_range)
        kinds = {cls: name for name, cls in DYNAMIC_LAYERS.items()}
        layers = (self.layers,) if isinstance(self.layers, (str, type)) else tuple(self.layers)
        names = tuple(kinds.get(x, x) if isinstance(x, type) else x for x in layers)
        unknown = [getattr(x, "__name__", x) for x, n in zip(layers, names)
                   if n not in DYNAMIC_LAYERS]
        if unknown or not names:
            raise ConfigError(f"layers={unknown or list(names)} are not supported by dynamic "
                              "quantization; only 'linear' and 'lstm' (nn.Linear, nn.LSTM) are "
                              "(GRU / attention weights stay float)")
        object.__setattr__(self, "layers", names)
        object.__setattr__(self, "skip", _names(self.skip, "skip"))

    @property
    def layer_types(self) -> tuple[type[nn.Module], ...]:
        return tuple(DYNAMIC_LAYERS[name] for name in self.layers)


@dataclass(frozen=True, kw_only=True)
class WeightOnlyConfig:
    """Weight-only PTQ of ``nn.Linear`` layers (round to nearest): ``bits``-bit weights per
    group of ``group_size`` input elements (per output channel when None); activations
    stay float. 4-bit weights in groups of 32-128 are the usual LLM setting."""

    bits: int = 8
    group_size: int | None = 128   # input elements per scale; None: one scale per output row
    symmetric: bool = True         # z = 0 (signed grid), or unsigned with a zero point
    skip: tuple[str, ...] = ()     # layer names or regexes kept in float

    def __post_init__(self) -> None:
        if self.group_size is not None and (isinstance(self.group_size, bool) or not isinstance(
                self.group_size, int) or self.group_size < 1):
            raise ConfigError(f"group_size={self.group_size!r} must be a positive integer or "
                              "None (per channel)")
        weight_only_spec(bits=self.bits, group_size=self.group_size,  # ConfigError for bits
                         symmetric=self.symmetric)                  # outside [2, 8]
        object.__setattr__(self, "skip", _names(self.skip, "skip"))

    @property
    def spec(self) -> QuantSpec:
        return weight_only_spec(bits=self.bits, group_size=self.group_size,
                                symmetric=self.symmetric)


def weight_only_spec(*, bits: int = 8, group_size: int | None = 128,
                     symmetric: bool = True) -> QuantSpec:
    """s8-style symmetric (z = 0) or u8-style asymmetric spec, per group or per channel."""
    if group_size is None:
        return QuantSpec(bits=bits, signed=symmetric, symmetric=symmetric,
                         granularity="per_channel", axis=0)
    return QuantSpec(bits=bits, signed=symmetric, symmetric=symmetric,
                     granularity="per_group", group_size=group_size)


def _names(value: Any, where: str) -> tuple[str, ...]:
    """A tuple of layer names / regexes ("fc" alone is one name)."""
    names = (value,) if isinstance(value, str) else tuple(value)
    for pattern in names:
        _compile(pattern)
    return names


def _check_rounding(rounding: Any, adaround: Any) -> None:
    if rounding not in ROUNDINGS:
        raise ConfigError(f"rounding={rounding!r} must be one of {', '.join(ROUNDINGS)}")
    if not isinstance(adaround, AdaRoundConfig):
        raise ConfigError(f"adaround={adaround!r} must be an AdaRoundConfig")
    if rounding != "adaround" and adaround != AdaRoundConfig():
        raise ConfigError(f"{adaround} sets AdaRound, which runs only with "
                          f"rounding='adaround', not {rounding!r}")


def _adaround(value: Mapping[str, Any]) -> AdaRoundConfig:
    fields = {f.name for f in dataclasses.fields(AdaRoundConfig)}
    bad = sorted(set(value) - fields)
    if bad:
        raise ConfigError(f"adaround: unknown keys {bad}; known: {sorted(fields)}")
    return AdaRoundConfig(**value)


def _check_activation(spec: QuantSpec, where: str) -> None:
    if spec.granularity != "per_tensor":
        raise ConfigError(f"{where}.granularity={spec.granularity!r}: activations are "
                          "quantized per_tensor (what ONNX Runtime and TensorRT run)")


def _spec(value: Any, base: QuantSpec, where: str) -> QuantSpec:
    if value is None:
        return base
    if isinstance(value, QuantSpec):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}={value!r} must be a mapping of QuantSpec fields")
    fields = {f.name for f in dataclasses.fields(QuantSpec)}
    bad = sorted(set(value) - fields)
    if bad:
        raise ConfigError(f"{where}: unknown QuantSpec fields {bad}; known: {sorted(fields)}")
    return dataclasses.replace(base, **value)


def _override(key: str, value: Any, weight: QuantSpec, activation: QuantSpec) -> LayerOverride:
    if isinstance(value, LayerOverride):
        return value
    if not isinstance(value, Mapping) or set(value) - {"weight", "activation", "skip"}:
        raise ConfigError(f"overrides[{key!r}]={value!r} must be a mapping with keys "
                          "weight, activation, skip")
    return LayerOverride(
        weight=_spec(value["weight"], weight, f"overrides[{key!r}].weight")
        if value.get("weight") is not None else None,
        activation=_spec(value["activation"], activation, f"overrides[{key!r}].activation")
        if value.get("activation") is not None else None,
        skip=bool(value.get("skip", False)))


def _compile(pattern: str) -> re.Pattern[str]:
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"layer name {pattern!r} must be a non-empty string (name or regex)")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"layer pattern {pattern!r} is not a valid regex ({e}); "
                          "use an exact layer name such as 'layer1.0.conv1'") from e


def matches(pattern: str, name: str) -> bool:
    """An exact name, or a regex that matches the whole name (``layer1\\..*``)."""
    return pattern == name or _compile(pattern).fullmatch(name) is not None


def check_names(config: QuantConfig, module_names: Sequence[str],
                layer_names: Sequence[str]) -> None:
    """ConfigError for a skip / override entry that names no module of the model
    (``module_names`` holds the model's modules and the captured layers, e.g. an
    attention's ``in_proj``)."""
    for pattern in (*config.skip, *config.overrides):
        if not any(matches(pattern, n) for n in module_names):
            examples = ", ".join(layer_names[:6]) or "(none)"
            raise ConfigError(f"layer {pattern!r} in the quantization config matches no "
                              f"module of the model; layers are named like: {examples}")


def resolve_layers(config: QuantConfig, layer_names: Sequence[str], *,
                   reduce_range: bool = False) -> dict[str, LayerPlan]:
    """``{name: LayerPlan}`` for the quantizable layers, in graph order.

    Precedence: skip list, then an override (exact name, else the first matching regex),
    then the first / last layer policy, then the global specs. With ``reduce_range`` (the
    resolved setting) every 8-bit weight becomes 7-bit."""
    plans: dict[str, LayerPlan] = {}
    for i, name in enumerate(layer_names):
        plan = _plan(config, name, first=i == 0, last=i == len(layer_names) - 1)
        if reduce_range and plan.weight is not None:
            plan = dataclasses.replace(plan, weight=reduced_weight(plan.weight))
        plans[name] = plan
    return plans


def _plan(config: QuantConfig, name: str, *, first: bool, last: bool) -> LayerPlan:
    if any(matches(p, name) for p in config.skip):
        return LayerPlan(None, config.activation, "in skip list")
    override = config.overrides.get(name) or next(  # an exact name beats any regex
        (o for p, o in config.overrides.items() if matches(p, name)), None)
    if override is not None and override.skip:
        return LayerPlan(None, config.activation, "override skip=True")
    weight = override.weight if override and override.weight else config.weight
    activation = override.activation if override and override.activation else config.activation
    for is_edge, policy, which in ((first, config.first_layer, "first"),
                                   (last, config.last_layer, "last")):
        if not is_edge or override is not None:
            continue
        if policy == "float":
            return LayerPlan(None, activation, f"{which} layer policy 'float'")
        if policy == "8bit":
            weight = dataclasses.replace(weight, bits=8)
    return LayerPlan(weight, activation)


def check_skip(model: nn.Module, skip: Sequence[str]) -> tuple[str, ...]:
    """``skip`` as a tuple; ConfigError for an entry naming no module of ``model``."""
    if isinstance(skip, str):
        skip = (skip,)
    names = [n for n, _ in model.named_modules() if n]
    for pattern in skip:
        if not any(matches(pattern, n) for n in names):
            raise ConfigError(f"skip entry {pattern!r} matches no module of "
                              f"{type(model).__name__}; modules are named like: "
                              f"{', '.join(names[:6]) or '(none)'}")
    return tuple(skip)
