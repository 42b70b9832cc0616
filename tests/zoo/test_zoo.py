import json

import pytest
import torch
from torch import nn

from torchslim.errors import ConfigError, UnknownNameError, UnsupportedModelError
from torchslim.zoo import adapt_torchvision, build_model, list_models, model_spec


def macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of convs and linears for one image, counted by forward hooks."""
    total = 0

    def hook(module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += out[0].numel() * module.in_channels // module.groups * kh * kw
        else:
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_shape))
    for h in handles:
        h.remove()
    return total


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registered_names() -> None:
    assert list_models() == ["mobilenetv2", "resnet", "resnet14", "resnet20", "resnet32",
                             "resnet56", "resnet8", "tv:mobilenet_v2", "tv:resnet18"]


@pytest.mark.parametrize("name", list_models())
def test_output_shape_at_28x28(name: str) -> None:
    model = build_model(name).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet8", "mobilenetv2", "tv:resnet18", "tv:mobilenet_v2"])
def test_other_channels_and_classes(name: str) -> None:
    model = build_model(name, num_classes=7, in_channels=3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 28, 28)).shape == (2, 7)


@pytest.mark.parametrize("name", list_models())
def test_spec_round_trip(name: str) -> None:
    model = build_model(name, num_classes=5)
    spec = model_spec(model)
    assert spec["name"] == name and spec["kwargs"]["num_classes"] == 5
    assert spec["kwargs"]["in_channels"] == 1
    spec = json.loads(json.dumps(spec))            # what a checkpoint sidecar stores
    rebuilt = build_model(spec["name"], **spec["kwargs"])
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes


def test_spec_records_defaults_and_is_a_copy() -> None:
    model = build_model("resnet", depth=14)
    spec = model_spec(model)
    assert spec == {"name": "resnet",
                    "kwargs": {"depth": 14, "width": 16, "num_classes": 10, "in_channels": 1}}
    spec["kwargs"]["depth"] = 99
    assert model_spec(model)["kwargs"]["depth"] == 14


def test_spec_of_foreign_model() -> None:
    with pytest.raises(UnsupportedModelError, match="Linear records no architecture"):
        model_spec(nn.Linear(2, 2))


def test_resnet20_parameter_count() -> None:
    # 272,474 is ResNet-20 with 1x1-conv shortcuts on RGB; a 1-channel stem has 288 fewer.
    assert n_params(build_model("resnet20", in_channels=3)) == 272_474
    assert n_params(build_model("resnet20")) == 272_186
    assert n_params(build_model("resnet20", width=8)) < 272_186 / 3


def test_resnet_layout_names() -> None:
    model = build_model("resnet20")
    names = dict(model.named_modules())
    assert isinstance(names["layer3.0.shortcut.0"], nn.Conv2d)
    assert isinstance(names["layer1.0.shortcut"], nn.Identity)
    assert names["layer3.2.conv2"].out_channels == 64 and names["fc"].in_features == 64
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == 3
    assert torch.all(model.layer2[0].bn1.weight == 1) and torch.all(model.fc.bias.abs() < 1)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_fx_traceable(name: str) -> None:
    model = build_model(name).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(1, 1, 28, 28)
    torch.testing.assert_close(traced(x), model(x))
    assert any(n.op == "call_function" and "add" in str(n.target) for n in traced.graph.nodes)


@pytest.mark.parametrize("depth", [7, 9, 2, "20"])
def test_bad_depth(depth: object) -> None:
    with pytest.raises(ConfigError, match="must be 6n\\+2"):
        build_model("resnet", depth=depth)


def test_unknown_model_lists_names() -> None:
    with pytest.raises(UnknownNameError, match="unknown model 'resnet21'.*resnet20"):
        build_model("resnet21")


def test_unknown_option_is_named() -> None:
    with pytest.raises(ConfigError, match="'resnet20' has no option 'depth'.*width"):
        build_model("resnet20", depth=32)
    with pytest.raises(ConfigError, match="num_classes=0"):
        build_model("resnet8", num_classes=0)
    with pytest.raises(ConfigError, match="width_mult=-1"):
        build_model("mobilenetv2", width_mult=-1)


def test_mobilenetv2_has_depthwise_convs_and_small_cost() -> None:
    model = build_model("mobilenetv2")
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d)
                 and m.groups > 1 and m.groups == m.in_channels == m.out_channels]
    assert len(depthwise) == 9                       # one per inverted residual block
    assert 10e6 < macs(model, (1, 28, 28)) < 20e6      # 14.9M at width 1.0
    half = build_model("mobilenetv2", width_mult=0.5)
    assert macs(half, (1, 28, 28)) < 6e6
    assert all(m.out_channels % 8 == 0 for m in half.modules() if isinstance(m, nn.Conv2d))


def test_tv_resnet18_small_input_stem() -> None:
    model = build_model("tv:resnet18")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model.conv1.in_channels == 1 and isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 10


def test_tv_original_for_benchmarks() -> None:
    model = build_model("tv:resnet18", input_size=224, in_channels=3, num_classes=1000)
    assert n_params(model) == 11_689_512              # torchvision's ResNet-18
    assert model.conv1.kernel_size == (7, 7) and isinstance(model.maxpool, nn.MaxPool2d)
    mobile = build_model("tv:mobilenet_v2", input_size=224, in_channels=3, num_classes=1000)
    assert n_params(mobile) == 3_504_872 and mobile.features[0][0].stride == (2, 2)


def test_adapt_keeps_fitting_layers_and_rejects_unknown_layouts() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(2704, 5), nn.Linear(5, 2))
    head = model[3]
    adapt_torchvision(model, num_classes=2, in_channels=1, input_size=28)
    assert model[3] is head and model[0].in_channels == 1 and model[0].kernel_size == (3, 3)
    with pytest.raises(UnsupportedModelError, match="Sequential: it has no Conv2d"):
        adapt_torchvision(nn.Sequential(nn.Linear(4, 2)), num_classes=2, in_channels=1)
    with pytest.raises(UnsupportedModelError, match="no Linear"):
        adapt_torchvision(nn.Sequential(nn.Conv2d(1, 2, 1)), num_classes=2, in_channels=1)
