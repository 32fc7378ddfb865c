r"""A small VGG-style CNN for the scenes (:func:`captum_xcam.data.make_scenes`),
whose head flattens the CAM layer into fully connected layers instead of
averaging it, with trained weights shipped in the package."""
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor, nn

from captum_xcam.models.small_cnn import _conv_block, trained

WEIGHTS_FILE = Path(__file__).with_name("small_vgg_scenes.pt")
INPUT_SIZE = 64  # the flatten fixes the input side


class SmallVGG(nn.Module):
    r"""
    SmallCNN's four convolutional blocks, then, as in VGG, the CAM layer
    flattened into two fully connected layers:

    ========== ====================== ================================
    module     output for 64x64 input role
    ========== ====================== ================================
    block1     (N, 16, 32, 32)
    block2     (N, 32, 16, 16)
    block3     (N, 64, 8, 8)
    block4     (N, 64, 8, 8)          :attr:`cam_layer`
    flatten    (N, 4096)
    classifier (N, num_classes)       Linear(4096, hidden), ReLU, Linear
    ========== ====================== ================================

    With a flatten head each position of the CAM layer has weights of its
    own, so the gradient :math:`\partial y_c / \partial A_{k,ij}` varies over
    ``(i, j)`` and the methods that weight it per position (XGrad-CAM,
    HiResCAM, LayerCAM) differ from Grad-CAM, which they equal on a head that
    starts with global average pooling. Every nonlinearity is its own module,
    called once per forward pass (for Captum's ``DeepLift`` and LIFT-CAM).
    Inputs are RGB images (N, 3, 64, 64) with values in [0, 1]; other sizes
    are refused.

    Args:
        num_classes (int, optional): Outputs. Default: 4
        hidden (int, optional): Width of the hidden fully connected layer,
                    small to keep the shipped weights small. Default: 16

    Attributes:
        cam_layer (nn.Module): The default layer to explain with a CAM, the
                    last convolutional block (``block4``).
    """

    def __init__(self, num_classes: int = 4, hidden: int = 16) -> None:
        super().__init__()
        self.block1 = _conv_block(3, 16, pool=True)
        self.block2 = _conv_block(16, 32, pool=True)
        self.block3 = _conv_block(32, 64, pool=True)
        self.block4 = _conv_block(64, 64, pool=False)
        side = INPUT_SIZE // 8
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(64 * side * side, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    @property
    def cam_layer(self) -> nn.Module:
        return self.block4

    def head(self, activations: Tensor) -> Tensor:
        r"""The part of the model after :attr:`cam_layer`: its output
        (N, 64, 8, 8) to the class scores (N, num_classes)."""
        return self.classifier(self.flatten(activations))

    def forward(self, x: Tensor) -> Tensor:
        x = checked_input(x)
        return self.head(self.block4(self.block3(self.block2(self.block1(x)))))


def checked_input(x: Tensor) -> Tensor:
    r"""``x``, or a ValueError if it is not (N, C, 64, 64). A leaf of torch.fx
    traces (``torch.fx.wrap``), so that the model stays traceable and the
    methods that replay the layer run only the head after it."""
    if x.dim() != 4 or x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(
            f"SmallVGG takes (N, C, {INPUT_SIZE}, {INPUT_SIZE}) inputs (its flatten head "
            f"fixes the side), got {tuple(x.shape)}; resize the images to "
            f"{INPUT_SIZE}x{INPUT_SIZE}."
        )
    return x


torch.fx.wrap("checked_input")


def load_pretrained_vgg(
    device: Union[None, str, torch.device] = None, path: Optional[Union[str, Path]] = None
) -> SmallVGG:
    r"""
    The :class:`SmallVGG` trained on ``make_scenes(.., seed=0)`` with soft
    labels by ``benchmarks/train_small_cnn.py --model small_vgg``, in eval
    mode: its softmax is the share of each class in the scene (1 for a single
    object, 1/2 for each of two).

    Args:
        device (str or torch.device, optional): Where to put the model.
                    Default: None (CPU)
        path (str or Path, optional): A weights file to load instead of the
                    one shipped in the package. Default: None

    Returns:
        The trained model, in eval mode.
    """
    return trained(SmallVGG(), path or WEIGHTS_FILE, device)
