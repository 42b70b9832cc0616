"""torchvision models, adapted to other input channels, image sizes and class counts.

Weights are never downloaded: the registered builders use ``weights=None``. For small
images (<= 32 px) the ImageNet stem would shrink a 28x28 input to 7x7 before the first
block, so the adapter changes it: a ResNet gets a 3x3 stride-1 stem conv and no max-pool
(the CIFAR recipe); a model whose stem is ``features[0][0]`` (MobileNet, EfficientNet)
gets stride 1 there. With ``input_size=224, in_channels=3, num_classes=1000`` the model
is torchvision's original, untouched, for benchmarks.
"""

from __future__ import annotations

from torch import nn

from torchslim.errors import ConfigError, UnsupportedModelError
from torchslim.zoo._build import MODELS

__all__ = ["adapt_torchvision", "SMALL_INPUT"]

SMALL_INPUT = 32   # inputs up to this many pixels get the small-image stem


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` (``features.0.0``) in place."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _first(model: nn.Module, kind: type[nn.Module], *, last: bool = False) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, kind)]
    if not names:
        raise UnsupportedModelError(
            f"cannot adapt {type(model).__name__}: it has no {kind.__name__}; "
            "adapt_torchvision handles convolutional classifiers only (ResNet, MobileNet, ...)")
    return names[-1] if last else names[0]


def _stem_name(model: nn.Module) -> str:
    """The first convolution: ResNet ``conv1``, MobileNet/EfficientNet ``features.0.0``."""
    return _first(model, nn.Conv2d)


def _head_name(model: nn.Module) -> str:
    """ResNet ``fc``, MobileNet/EfficientNet ``classifier[-1]``, otherwise the last Linear."""
    if isinstance(getattr(model, "fc", None), nn.Linear):
        return "fc"
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Sequential) and isinstance(classifier[-1], nn.Linear):
        return f"classifier.{len(classifier) - 1}"
    return _first(model, nn.Linear, last=True)


def _adapt_stem(model: nn.Module, in_channels: int, small: bool) -> None:
    name = _stem_name(model)
    conv = model.get_submodule(name)
    assert isinstance(conv, nn.Conv2d)
    kernel, stride, padding = conv.kernel_size, conv.stride, conv.padding
    is_resnet_stem = name == "conv1" and isinstance(getattr(model, "maxpool", None), nn.Module)
    if small and is_resnet_stem:
        kernel, stride, padding = (3, 3), (1, 1), (1, 1)
        model.maxpool = nn.Identity()
    elif small and name == "features.0.0":
        stride = (1, 1)
    if (conv.in_channels, conv.kernel_size, conv.stride) == (in_channels, kernel, stride):
        return   # nothing changed: keep the original weights
    new = nn.Conv2d(in_channels, conv.out_channels, kernel, stride=stride, padding=padding,
                    dilation=conv.dilation, bias=conv.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    _set(model, name, new)


def adapt_torchvision(model: nn.Module, *, num_classes: int, in_channels: int,
                      input_size: int = 224) -> nn.Module:
    """Fit a torchvision classifier to ``in_channels`` x ``input_size`` images and
    ``num_classes`` outputs, in place (and returned for chaining).

    The first convolution is rebuilt when its input channels differ (same out channels,
    kernel, stride, padding), or changed for small inputs as the module docstring says;
    the head (``fc``, ``classifier[-1]`` or the last Linear) is rebuilt when its output
    count differs. Layers that already fit keep their weights.
    """
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels),
                       ("input_size", input_size)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}={value!r} must be a positive integer")
    head_name = _head_name(model)   # check both layouts before changing anything
    _adapt_stem(model, in_channels, small=input_size <= SMALL_INPUT)
    head = model.get_submodule(head_name)
    assert isinstance(head, nn.Linear)
    if head.out_features != num_classes:
        _set(model, head_name, nn.Linear(head.in_features, num_classes,
                                         bias=head.bias is not None))
    return model


@MODELS.register("tv:resnet18")
def tv_resnet18(*, num_classes: int = 10, in_channels: int = 1,
                input_size: int = 28) -> nn.Module:
    """torchvision ResNet-18, random init, adapted to the input and class count."""
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    return adapt_torchvision(model, num_classes=num_classes, in_channels=in_channels,
                             input_size=input_size)


@MODELS.register("tv:mobilenet_v2")
def tv_mobilenet_v2(*, num_classes: int = 10, in_channels: int = 1,
                    input_size: int = 28) -> nn.Module:
    """torchvision MobileNetV2, random init, adapted to the input and class count."""
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(weights=None, num_classes=num_classes)
    return adapt_torchvision(model, num_classes=num_classes, in_channels=in_channels,
                             input_size=input_size)
