"""CIFAR-style ResNets (He et al. 2016, section 4.2) for small images such as 28x28.

Unlike the ImageNet ResNets, the stem is one 3x3 stride-1 convolution with no max-pool,
so a 28x28 image keeps its resolution through the first stage (28 -> 14 -> 7). Every
layer is a distinct named module (``layer3.1.conv2``, ``fc``) so that pruning,
distillation and quantization can refer to layers by name.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from torchslim.errors import ConfigError
from torchslim.zoo._build import MODELS

__all__ = ["BasicBlock", "ResNet", "DEPTHS"]

DEPTHS = (8, 14, 20, 32, 56)   # registered as resnet8 ... resnet56


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut; the shortcut is a 1x1 conv + BN when the
    shape changes ("option B"), so every block is an ordinary graph of convs."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-(6n+2): a stem, three stages of n BasicBlocks with widths w, 2w, 4w (stride 2
    at the start of stages 2 and 3), global average pooling and a linear head."""

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10,
                 in_channels: int = 1) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"depth={depth!r} must be 6n+2 with n >= 1 (8, 14, 20, 32, 56, ...)")
        if not isinstance(width, int) or width < 1:
            raise ConfigError(f"width={width!r} must be a positive integer (16 is the paper's)")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(width, width, blocks, stride=1)
        self.layer2 = self._stage(width, 2 * width, blocks, stride=2)
        self.layer3 = self._stage(2 * width, 4 * width, blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * width, num_classes)
        _init_weights(self)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))      # (B, w, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 4w, H/4, W/4)
        return self.fc(self.flatten(self.avgpool(x)))  # (B, num_classes)


def _init_weights(model: nn.Module) -> None:
    """Kaiming for convs (the ReLU-aware init these nets were designed with), BN as identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@MODELS.register("resnet")
def resnet(*, depth: int = 20, width: int = 16, num_classes: int = 10,
           in_channels: int = 1) -> ResNet:
    """A CIFAR-style ResNet of any depth 6n+2."""
    return ResNet(depth=depth, width=width, num_classes=num_classes, in_channels=in_channels)


def _fixed_depth(depth: int) -> Callable[..., ResNet]:
    def build(*, width: int = 16, num_classes: int = 10, in_channels: int = 1) -> ResNet:
        return ResNet(depth=depth, width=width, num_classes=num_classes, in_channels=in_channels)

    build.__name__ = build.__qualname__ = f"resnet{depth}"
    build.__doc__ = f"CIFAR-style ResNet-{depth} ({(depth - 2) // 6} blocks per stage)."
    return build


for _depth in DEPTHS:
    MODELS.add(f"resnet{_depth}", _fixed_depth(_depth))
