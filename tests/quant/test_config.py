"""QuantConfig: defaults, one-line validation errors, from_dict, per-layer resolution."""

from __future__ import annotations

import dataclasses

import pytest

from torchslim.errors import ConfigError, UnknownNameError
from torchslim.quant import QuantSpec
from torchslim.quant.config import LayerOverride, QuantConfig, check_names, resolve_layers

LAYERS = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "fc"]


def test_defaults_are_s8_per_channel_weights_and_u8_activations() -> None:
    cfg = QuantConfig()
    assert (cfg.weight.qmin, cfg.weight.qmax) == (-127, 127)
    assert cfg.weight.granularity == "per_channel" and cfg.weight.axis == 0
    assert (cfg.activation.qmin, cfg.activation.qmax) == (0, 255)
    assert not cfg.activation.symmetric and cfg.activation.granularity == "per_tensor"


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        QuantConfig().bias_correction = True  # type: ignore[misc]


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(activation_observer="kl"), "unknown observer 'kl'"),
    (dict(weight_observer="nope"), "entropy"),
    (dict(first_layer="int4"), "first_layer='int4'"),
    (dict(last_layer="fp16"), "last_layer='fp16'"),
    (dict(skip="fc"), "skip='fc'"),
    (dict(skip=("layer[",)), "not a valid regex"),
    (dict(overrides={"fc": 8}), "LayerOverride"),
    (dict(activation=QuantSpec(granularity="per_channel")), "per_tensor"),
    (dict(activation_observer="percentile", activation_percentile=101.0),
     "percentile=101.0 must be in (0, 100]"),
    (dict(activation_percentile=99.9), "use it with activation_observer='percentile'"),
    (dict(overrides={"fc": LayerOverride(activation=QuantSpec(granularity="per_channel"))}),
     "overrides['fc'].activation"),
])
def test_invalid_options_give_one_line_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        QuantConfig(**kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_unknown_observer_is_an_unknown_name_error_listing_names() -> None:
    with pytest.raises(UnknownNameError, match="minmax"):
        QuantConfig(activation_observer="kl")


def test_bits_out_of_range_are_rejected_by_the_spec() -> None:
    with pytest.raises(ConfigError, match="bits=9"):
        QuantConfig.from_dict({"weight": {"bits": 9}})


def test_from_dict_merges_onto_the_defaults() -> None:
    cfg = QuantConfig.from_dict({
        "weight": {"bits": 4}, "activation_observer": "percentile", "skip": ["fc"],
        "overrides": {"layer1\\..*": {"weight": {"bits": 6}}, "conv1": {"skip": True}}})
    assert cfg.weight.bits == 4 and cfg.weight.granularity == "per_channel"
    assert cfg.skip == ("fc",)
    assert cfg.overrides["layer1\\..*"].weight.bits == 6
    assert cfg.overrides["conv1"].skip


def test_from_dict_takes_a_single_skip_name() -> None:
    assert QuantConfig.from_dict({"skip": "fc"}).skip == ("fc",)


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="unknown QuantConfig keys"):
        QuantConfig.from_dict({"bitz": 4})


def test_resolution_precedence() -> None:
    w4 = dataclasses.replace(QuantConfig().weight, bits=4)
    cfg = QuantConfig(weight=w4, skip=("layer1.0.conv2",), first_layer="float", last_layer="8bit",
                      overrides={r"layer1\..*": LayerOverride(weight=QuantSpec(bits=6)),
                                 "layer1.0.conv1": LayerOverride(weight=QuantSpec(bits=5))})
    plans = resolve_layers(cfg, LAYERS)
    assert plans["conv1"].weight is None and "first" in plans["conv1"].reason
    assert plans["layer1.0.conv1"].weight.bits == 5  # exact name beats the regex
    assert plans["layer1.0.conv2"].weight is None
    assert plans["layer1.0.conv2"].reason == "in skip list"
    assert plans["fc"].weight.bits == 8 and plans["fc"].weight.granularity == "per_channel"


def test_names_matching_no_module_are_reported_with_examples() -> None:
    cfg = QuantConfig(skip=("block9",))
    with pytest.raises(ConfigError, match=r"'block9'.*conv1, layer1\.0\.conv1"):
        check_names(cfg, LAYERS, LAYERS)
    check_names(QuantConfig(skip=(r"layer1\..*",)), LAYERS, LAYERS)


def test_overrides_are_read_only_but_copy_and_pickle() -> None:
    import copy
    import pickle

    from torchslim.quant import LayerOverride

    cfg = QuantConfig(overrides={"fc": LayerOverride(skip=True)})
    with pytest.raises(TypeError, match="read-only"):
        cfg.overrides["conv1"] = LayerOverride(skip=True)  # type: ignore[index]
    assert copy.deepcopy(cfg) == cfg
    assert pickle.loads(pickle.dumps(cfg)).overrides["fc"].skip is True
