"""Model builders: CIFAR-style ResNets, a small-input MobileNetV2, adapted torchvision models.

``build_model(name, num_classes=..., in_channels=..., **options)`` builds any of
``list_models()``; ``model_spec(model)`` tells a checkpoint how to rebuild it.
"""

from torchslim.zoo._build import build_model, list_models, model_spec
from torchslim.zoo.mobilenet import MobileNetV2
from torchslim.zoo.resnet import BasicBlock, ResNet
from torchslim.zoo.tv import adapt_torchvision

__all__ = [
    "BasicBlock",
    "MobileNetV2",
    "ResNet",
    "adapt_torchvision",
    "build_model",
    "list_models",
    "model_spec",
]
