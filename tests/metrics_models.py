"""Tiny models whose explanations and metric values are known by hand."""
import torch
from torch import nn


class PixelLinear(nn.Module):
    r"""``f(x) = sum_{c,p} v_p x_{c,p}`` (one output): each pixel's weight is
    shared by the colour channels."""

    def __init__(self, pixel_weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("v", pixel_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.v).flatten(1).sum(1, keepdim=True)


class TwoClassPixelLinear(PixelLinear):
    r"""Logits ``[sum v x, 0]``, so that the softmax probability of class 0 is
    ``sigmoid(sum v x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = super().forward(x)
        return torch.cat([logit, torch.zeros_like(logit)], dim=1)


class ConvGapHead(nn.Module):
    r"""An identity "layer" whose channels are the input's channels, global
    average pooling, then ``head``: the layer activations are the inputs."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.layer = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = head

    def after_layer(self, a: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(a).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_layer(self.layer(x))
