"""MobileNetV2 (Sandler et al. 2018) sized for 28x28 inputs.

The ImageNet network downsamples 32x; a 28x28 image would vanish. Here the stem has
stride 1 and the stage list is shortened to downsample 4x (28 -> 14 -> 7), which keeps
the model near 14M multiply-accumulates at width 1.0: trainable on two CPU cores.
The module layout mirrors torchvision's (``features``, ``classifier[-1]``).
"""

from __future__ import annotations

from torch import Tensor, nn

from torchslim.errors import ConfigError
from torchslim.zoo._build import MODELS

__all__ = ["ConvBNReLU6", "InvertedResidual", "MobileNetV2", "STAGES", "make_divisible"]

# (expansion t, output channels c, repeats n, first stride s) per stage, for 28x28 inputs
STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 1), (6, 96, 1, 1))
STEM_CHANNELS, LAST_CHANNELS = 32, 320


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` (vector-friendly), never losing > 10 %."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU6(nn.Sequential):
    """conv -> BN -> ReLU6 (indices 0, 1, 2), the pattern quantizers fuse into one op."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                      padding=kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6())


class InvertedResidual(nn.Module):
    """expand 1x1 -> depthwise 3x3 -> linear project 1x1, plus the input when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand: nn.Module = (ConvBNReLU6(in_channels, hidden, 1) if expansion != 1
                                  else nn.Identity())
        self.depthwise = ConvBNReLU6(hidden, hidden, 3, stride=stride, groups=hidden)
        # No activation after the projection: ReLU would destroy information in the
        # narrow bottleneck (the paper's "linear bottleneck").
        self.project = nn.Sequential(nn.Conv2d(hidden, out_channels, 1, bias=False),
                                     nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """``features`` (stem, inverted residual blocks, last 1x1 conv), pooling, and
    ``classifier`` = dropout + linear."""

    def __init__(self, width_mult: float = 1.0, num_classes: int = 10,
                 in_channels: int = 1) -> None:
        super().__init__()
        if not isinstance(width_mult, (int, float)) or not width_mult > 0:
            raise ConfigError(f"width_mult={width_mult!r} must be a number > 0 (1.0 = paper)")
        channels = make_divisible(STEM_CHANNELS * width_mult)
        last = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNReLU6(in_channels, channels, 3, stride=1)]
        for t, c, n, s in STAGES:
            out = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        layers.append(ConvBNReLU6(channels, last, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)                             # (B, last, H/4, W/4)
        return self.classifier(self.flatten(self.avgpool(x)))  # (B, num_classes)


def _init_weights(model: nn.Module) -> None:
    """torchvision's MobileNetV2 init: Kaiming fan-out convs, identity BN, small linear."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


@MODELS.register("mobilenetv2")
def mobilenetv2(*, width_mult: float = 1.0, num_classes: int = 10,
                in_channels: int = 1) -> MobileNetV2:
    """MobileNetV2 for 28x28 inputs; ``width_mult`` scales every layer's channels."""
    return MobileNetV2(width_mult=width_mult, num_classes=num_classes, in_channels=in_channels)
