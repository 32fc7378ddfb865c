"""Shared fixtures: small torchvision models with random weights, in float64
so that independent computations can be compared tightly."""
from typing import Callable, Dict, Tuple

import pytest
import torch
from torch import nn
from torchvision import models

# Architecture name -> (constructor, the usual CAM layer)
ARCHITECTURES: Dict[str, Tuple[Callable[..., nn.Module], Callable[[nn.Module], nn.Module]]] = {
    "resnet18": (models.resnet18, lambda m: m.layer4),
    "vgg11_bn": (models.vgg11_bn, lambda m: m.features),
    "densenet121": (models.densenet121, lambda m: m.features),
    "mobilenet_v2": (models.mobilenet_v2, lambda m: m.features),
    "efficientnet_b0": (models.efficientnet_b0, lambda m: m.features),
}
NUM_CLASSES = 10


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    r"""Random weights with lively BatchNorm statistics and classifiers, so that
    outputs, activations and gradients are far from zero in every architecture
    (torchvision's own init makes MobileNet/EfficientNet outputs ~1e-10)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, nn.Linear):
                bound = 3 / m.in_features ** 0.5
                m.weight.copy_((torch.rand(m.weight.shape, generator=g) * 2 - 1) * bound)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def make_model(name: str, seed: int = 0) -> Tuple[nn.Module, nn.Module]:
    constructor, layer_of = ARCHITECTURES[name]
    torch.manual_seed(seed)
    model = randomise(constructor(num_classes=NUM_CLASSES), seed).double().eval()
    return model, layer_of(model)


def make_images(n: int = 3, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g, dtype=torch.float64)


@pytest.fixture(params=list(ARCHITECTURES))
def architecture(request):
    return request.param


class TinyNet(nn.Module):
    r"""A small CNN laid out like a torchvision ResNet (``layer4``, ``avgpool``,
    ``fc``, BatchNorm, in-place ReLU), with few channels so that the
    perturbation methods run in a blink."""

    def __init__(self, channels: int = 12, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        )
        self.layer4 = nn.Sequential(
            nn.Conv2d(8, channels, 3, stride=2, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.avgpool(self.layer4(self.stem(x))), 1))


def make_tiny(seed: int = 0) -> Tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    model = randomise(TinyNet(), seed).double().eval()
    return model, model.layer4
