r"""A small CNN for the synthetic data set, with trained weights shipped in
the package so that tests, tutorials and benchmarks need no training."""
from pathlib import Path
from typing import Optional, TypeVar, Union

import torch
from torch import Tensor, nn

WEIGHTS_FILE = Path(__file__).with_name("small_cnn_synthetic.pt")
_Model = TypeVar("_Model", bound=nn.Module)


def _conv_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    r"""
    Four convolutional blocks (3x3 convolution, batch norm, ReLU; max pooling
    after the first three), then global average pooling and a two-layer
    classifier:

    ========== ====================== ==========================
    module     output for 64x64 input role
    ========== ====================== ==========================
    block1     (N, 16, 32, 32)
    block2     (N, 32, 16, 16)
    block3     (N, 64, 8, 8)
    block4     (N, 64, 8, 8)          :attr:`cam_layer`
    pool       (N, 64)                global average pooling
    classifier (N, num_classes)       Linear, ReLU, Linear
    ========== ====================== ==========================

    Every nonlinearity is its own module, called once per forward pass, so
    that Captum's ``DeepLift`` (and LIFT-CAM) can use its Rescale rule on it.
    The classifier's hidden ReLU makes the output a nonlinear function of the
    CAM layer, so that the channels' Shapley values are not simply their
    linear contributions. Inputs are RGB images with values in [0, 1]; any
    size divisible by 8 works.

    Attributes:
        cam_layer (nn.Module): The default layer to explain with a CAM, the
                    last convolutional block (``block4``).
    """

    def __init__(self, num_classes: int = 4, hidden: int = 64) -> None:
        super().__init__()
        self.block1 = _conv_block(3, 16, pool=True)
        self.block2 = _conv_block(16, 32, pool=True)
        self.block3 = _conv_block(32, 64, pool=True)
        self.block4 = _conv_block(64, 64, pool=False)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    @property
    def cam_layer(self) -> nn.Module:
        return self.block4

    def head(self, activations: Tensor) -> Tensor:
        r"""The part of the model after :attr:`cam_layer`: its output
        (N, 64, h, w) to the class scores (N, num_classes). Cheap, for
        metrics that evaluate many modified activations."""
        return self.classifier(self.pool(activations))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block4(self.block3(self.block2(self.block1(x)))))


def load_pretrained(
    device: Union[None, str, torch.device] = None, path: Optional[Union[str, Path]] = None
) -> SmallCNN:
    r"""
    The :class:`SmallCNN` trained on ``make_synthetic(.., seed=0)`` by
    ``benchmarks/train_small_cnn.py``, in eval mode.

    Args:
        device (str or torch.device, optional): Where to put the model.
                    Default: None (CPU)
        path (str or Path, optional): A weights file to load instead of the
                    one shipped in the package. Default: None

    Returns:
        The trained model, in eval mode.
    """
    return trained(SmallCNN(), path or WEIGHTS_FILE, device)


def trained(model: _Model, path: Union[str, Path],
            device: Union[None, str, torch.device]) -> _Model:
    r"""``model`` with the weights of ``path`` (read as tensors only), on
    ``device``, in eval mode."""
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device).eval()
