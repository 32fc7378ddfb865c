r"""Small hand-written models for the idioms of third-party model code, for the
model-zoo conformance run (``benchmarks/zoo.py``) and its tests.

Each class stands for one idiom that real code uses around the CAM layer
(its docstring says which); each is small (8 to 24 channels, 32 px inputs)
and works in float64. :data:`HAND_WRITTEN` names them with their CAM layer and
the forward function a user would explain them through.
"""

from dataclasses import dataclass
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NUM_CLASSES = 10


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    r"""3x3 convolution and BatchNorm, without activation."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout)
    )


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(*conv_bn(cin, cout, stride), nn.ReLU(inplace=True))


# ----------------------------------------------------------------------------
# (a) EfficientNet-PyTorch (lukemelas) style


class Swish(nn.Module):
    r"""Swish as EfficientNet-PyTorch writes it: arithmetic, not ``nn.SiLU``."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)


def drop_connect(inputs: Tensor, p: float, training: bool) -> Tensor:
    r"""EfficientNet-PyTorch's stochastic depth: the identity in eval mode."""
    if not training:
        return inputs
    batch_size = inputs.shape[0]
    keep = 1 - p
    random_tensor = keep + torch.rand([batch_size, 1, 1, 1], dtype=inputs.dtype,
                                      device=inputs.device)
    return inputs / keep * torch.floor(random_tensor)


class MBConvBlock(nn.Module):
    r"""EfficientNet-PyTorch's block: expansion, depthwise convolution,
    squeeze-and-excitation through ``torch.sigmoid``, projection, and a skip
    with drop-connect; one ``Swish`` module called twice."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int) -> None:
        super().__init__()
        mid, squeezed = cin * expand, max(1, cin // 4)
        self.id_skip, self.stride, self.cin, self.cout = True, stride, cin, cout
        self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid)
        self._se_reduce = nn.Conv2d(mid, squeezed, 1)
        self._se_expand = nn.Conv2d(squeezed, mid, 1)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout)
        self._swish = Swish()

    def forward(self, inputs: Tensor, drop_connect_rate: float = 0.0) -> Tensor:
        x = self._swish(self._bn0(self._expand_conv(inputs)))
        x = self._swish(self._bn1(self._depthwise_conv(x)))
        x_squeezed = F.adaptive_avg_pool2d(x, 1)
        x_squeezed = self._se_expand(self._swish(self._se_reduce(x_squeezed)))
        x = torch.sigmoid(x_squeezed) * x
        x = self._bn2(self._project_conv(x))
        if self.id_skip and self.stride == 1 and self.cin == self.cout:
            if drop_connect_rate:
                x = drop_connect(x, p=drop_connect_rate, training=self.training)
            x = x + inputs
        return x


class EfficientNetStyle(nn.Module):
    r"""EfficientNet-PyTorch's ``EfficientNet`` in miniature: ``bs =
    inputs.size(0)`` read in ``forward`` before the layer and ``x.view(bs, -1)``
    after pooling, swish as ``x * torch.sigmoid(x)`` in one ``_swish`` module
    that the stem and the head share, MBConv blocks with drop-connect,
    dropout and ``_fc``. The CAM layer is ``_bn1``, after ``_conv_head``."""

    def __init__(self, num_classes: int = NUM_CLASSES, drop_connect_rate: float = 0.2) -> None:
        super().__init__()
        self.drop_connect_rate = drop_connect_rate
        self._conv_stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(8)
        self._blocks = nn.ModuleList([
            MBConvBlock(8, 8, 1, 1), MBConvBlock(8, 12, 4, 2), MBConvBlock(12, 12, 4, 1),
        ])
        self._conv_head = nn.Conv2d(12, 24, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(24)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(24, num_classes)
        self._swish = Swish()

    def extract_features(self, inputs: Tensor) -> Tensor:
        x = self._swish(self._bn0(self._conv_stem(inputs)))
        for idx, block in enumerate(self._blocks):
            drop_connect_rate = self.drop_connect_rate
            if drop_connect_rate:
                drop_connect_rate *= float(idx) / len(self._blocks)
            x = block(x, drop_connect_rate=drop_connect_rate)
        return self._swish(self._bn1(self._conv_head(x)))

    def forward(self, inputs: Tensor) -> Tensor:
        bs = inputs.size(0)
        x = self.extract_features(inputs)
        x = self._avg_pooling(x)
        x = x.view(bs, -1)
        x = self._dropout(x)
        return self._fc(x)


# ----------------------------------------------------------------------------
# (b) the batch size read before the layer, other spellings


class _StemLayerHead(nn.Module):
    r"""A stem, the CAM ``layer`` and a pooled linear head; subclasses write
    ``forward`` in the idiom they stand for."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 8, stride=2)
        self.layer = conv_bn_relu(8, 16, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)


class BatchSizeFromShape(_StemLayerHead):
    r"""``b = x.shape[0]`` before the layer, ``x.reshape(b, -1)`` after it."""

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        x = self.layer(self.stem(x))
        return self.fc(self.pool(x).reshape(b, -1))


class BatchSizeFromLen(_StemLayerHead):
    r"""``n = len(x)`` before the layer, ``x.view(n, -1)`` after it."""

    def forward(self, x: Tensor) -> Tensor:
        n = len(x)
        x = self.layer(self.stem(x))
        return self.fc(self.pool(x).view(n, -1))


class ShapeUnpacked(_StemLayerHead):
    r"""``b, c, h, w = x.shape`` unpacked before the layer; the batch size
    and the input's height and width used after it (the map is resized back
    to ``(h // 4, w // 4)`` before pooling, a no-op here)."""

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        x = self.layer(self.stem(x))
        x = F.interpolate(x, size=(h // 4, w // 4), mode="nearest")
        return self.fc(self.pool(x).view(b, -1))


# ----------------------------------------------------------------------------
# (c) one activation module shared by every block


class SharedReLUBlock(nn.Module):
    r"""A residual block that calls the ReLU module it is given, twice."""

    def __init__(self, channels: int, relu: nn.ReLU) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv_bn(channels, channels), conv_bn(channels, channels)
        self.relu = relu  # the model's one module, registered under every block too

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv2(self.relu(self.conv1(x))) + x)


class SharedReLU(nn.Module):
    r"""Every block, the stem and the head call ONE ``nn.ReLU`` module (as
    torchvision's ResNet blocks each reuse theirs): explaining ``blocks.1``
    leaves a tail that calls the same ReLU five times."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.stem = conv_bn(3, 12, stride=2)
        self.blocks = nn.ModuleList([SharedReLUBlock(12, self.relu) for _ in range(3)])
        self.head = nn.Conv2d(12, 16, 1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        x = self.relu(self.head(x))
        return self.fc(x.mean((2, 3)))


# ----------------------------------------------------------------------------
# (d) nonlinearities written as functions after the layer


class FunctionalTail(nn.Module):
    r"""Every nonlinearity after the layer is a function or a tensor method,
    none a module: ``torch.relu``, ``F.relu``, ``F.max_pool2d``,
    ``torch.sigmoid``, ``F.silu``, ``F.gelu`` and ``x.relu()``, with
    convolutions between them so that each one matters."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 8, stride=2)
        self.layer = conv_bn(8, 12)
        self.conv1 = nn.Conv2d(12, 12, 3, padding=1)
        self.conv2 = nn.Conv2d(12, 12, 1)
        self.conv3 = nn.Conv2d(12, 12, 3, padding=1)
        self.conv4 = nn.Conv2d(12, 12, 1)
        self.conv5 = nn.Conv2d(12, 16, 1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.layer(self.stem(x)))
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = torch.sigmoid(self.conv2(x))
        x = F.silu(self.conv3(x))
        x = F.gelu(self.conv4(x))
        x = self.conv5(x).relu()
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ----------------------------------------------------------------------------
# (e) outputs that are not a tensor


class DictOutput(_StemLayerHead):
    r"""Returns ``{"logits": ..., "embedding": ...}`` (as Hugging Face style
    models do); explained through ``lambda x: model(x)["logits"]``."""

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        embedding = torch.flatten(self.pool(self.layer(self.stem(x))), 1)
        return {"logits": self.fc(embedding), "embedding": embedding}


class TupleOutput(_StemLayerHead):
    r"""Returns ``(logits, feature_map)`` (as models with auxiliary outputs
    do); explained through ``lambda x: model(x)[0]``."""

    def forward(self, x: Tensor):
        features = self.layer(self.stem(x))
        return self.fc(torch.flatten(self.pool(features), 1)), features


def logits_item(model: nn.Module) -> Callable[[Tensor], Tensor]:
    return lambda x: model(x)["logits"]


def first_item(model: nn.Module) -> Callable[[Tensor], Tensor]:
    return lambda x: model(x)[0]


# ----------------------------------------------------------------------------
# (f) data-dependent control flow


class DataDependentBranch(_StemLayerHead):
    r"""A Python branch on a tensor's value before the layer, ``if
    torch.isnan(x).any(): raise ...`` (as models that validate their input
    do), which ``torch.fx`` cannot trace: the whole model must be re-run for
    every replay of the layer. A branch that changes the computation, such as
    ``if x.mean() > 0:``, would be decided by the whole batch, so that an
    image's output would depend on the other images beside it, which no
    per-image explanation (nor any replay in chunks) can reproduce; this one
    gives every image the same computation."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.isnan(x).any():
            raise ValueError("NaN in the input images")
        return self.fc(torch.flatten(self.pool(self.layer(self.stem(x))), 1))


# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooModel:
    r"""A hand-written model, its CAM layer (dotted name) and the forward
    function a user would give Captum for it."""

    build: Callable[[], nn.Module]
    layer: str
    forward_func: Callable[[nn.Module], Callable[[Tensor], Tensor]] = lambda model: model
    size: int = 32


HAND_WRITTEN: Dict[str, ZooModel] = {
    "efficientnet_pytorch_style": ZooModel(EfficientNetStyle, "_bn1"),
    "batch_size_from_shape": ZooModel(BatchSizeFromShape, "layer"),
    "batch_size_from_len": ZooModel(BatchSizeFromLen, "layer"),
    "shape_unpacked": ZooModel(ShapeUnpacked, "layer"),
    "shared_relu": ZooModel(SharedReLU, "blocks.1"),
    "functional_tail": ZooModel(FunctionalTail, "layer"),
    "dict_output": ZooModel(DictOutput, "layer", logits_item),
    "tuple_output": ZooModel(TupleOutput, "layer", first_item),
    "data_dependent_branch": ZooModel(DataDependentBranch, "layer"),
}
