r"""Torchvision classification models by name, for explaining real images:
the model with pretrained weights, random weights or a checkpoint file, a
sensible CAM layer per architecture family, and the weights' preprocessing.

Checkpoints are read with ``torch.load(..., weights_only=True)``: tensors and
plain containers only, never arbitrary pickled objects.
"""
import difflib
import pickle
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import WeightsEnum
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

# Architecture family (name prefixes) -> the module whose output CAMs explain: the
# last block with a (N, C, h, w) output before global pooling, or, for the vision
# transformers, the layer whose tokens the CAMs lay out on their patch grid (the reshape
# transform of captum_xcam.reshape_transform_for). "{last}" is the last child of the
# module before it: its name depends on the variant's depth.
DEFAULT_CAM_LAYERS: Tuple[Tuple[Tuple[str, ...], str], ...] = (
    (("resnet", "resnext", "wide_resnet"), "layer4"),
    (("regnet",), "trunk_output"),
    (("alexnet", "vgg", "squeezenet", "densenet", "mobilenet", "efficientnet", "convnext"),
     "features"),
    (("mnasnet",), "layers"),
    (("shufflenet",), "conv5"),
    (("googlenet",), "inception5b"),
    (("inception",), "Mixed_7c"),
    # The last encoder layer's first LayerNorm: after that layer's attention only the
    # class token feeds the head, so the patch tokens of its output get no gradient.
    (("vit_",), "encoder.layers.{last}.ln_1"),
    (("swin",), "features.{last}"),  # the last stage, (N, h, w, C)
    (("maxvit",), "blocks.3"),
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DOWNLOAD_TIMEOUT_S = 60


class WeightsUnavailableError(RuntimeError):
    r"""Pretrained weights that are neither in the torch hub cache nor
    downloadable (no network, for example).

    Attributes:
        weights (WeightsEnum): The weights asked for.
        file (Path): Where torch looks for them: the hub cache's
                    ``checkpoints`` folder and the file name of their URL.
    """

    def __init__(self, weights: WeightsEnum, cause: BaseException) -> None:
        self.weights = weights
        self.file = weights_file(weights)
        super().__init__(
            f"Cannot download the weights {weights} ({type(cause).__name__}: {cause}); put "
            f"the file {weights.url} at {self.file} or load a state dict from a file."
        )


def weights_file(weights: WeightsEnum) -> Path:
    r"""Where torch keeps ``weights`` once downloaded: the torch hub cache's
    ``checkpoints`` folder (``$TORCH_HOME/hub/checkpoints``) and the file name of
    their URL. Torchvision loads them from there without the network."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def classification_models() -> List[str]:
    r"""The names of torchvision's classification models."""
    return torchvision.models.list_models(module=torchvision.models)


def check_model_name(name: str) -> None:
    r"""Raises a ValueError, with the nearest names, unless ``name`` is one of
    :func:`classification_models`."""
    names = classification_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else (
            f"; choose one of {', '.join(names)}.")
        raise ValueError(f"Unknown torchvision classification model {name!r}{hint}")


def default_cam_layer(model_name: str, model: Optional[nn.Module] = None) -> str:
    r"""
    The dotted name of the usual CAM layer of a torchvision architecture:
    ``layer4`` for ResNets, ``trunk_output`` for RegNets, ``features`` for
    VGG, DenseNet, MobileNet, EfficientNet, ConvNeXt and the like; for the
    vision transformers, whose CAMs lay the layer's tokens out on their patch
    grid (:func:`captum_xcam.reshape_transform_for`), the last encoder layer's
    first LayerNorm for ViTs (``encoder.layers.encoder_layer_11.ln_1`` for
    ``vit_b_16``, ``encoder_layer_23`` for ``vit_l_16``: the last layer's
    output is no use, as only its class token feeds the head) and the last
    stage for Swins (``features.7``, channels-last).

    Args:
        model_name (str): A name of :func:`classification_models`.
        model (nn.Module, optional): The model, for the families whose layer
                    name depends on the variant's depth (ViT, Swin). Default:
                    None (the architecture built on PyTorch's meta device:
                    shapes only, no memory, no weights)

    Raises:
        ValueError: for architectures without a default layer (none of
                    torchvision's classification models so far).
    """
    for prefixes, layer in DEFAULT_CAM_LAYERS:
        if model_name.startswith(prefixes):
            return _resolve_last(layer, model_name, model)
    raise ValueError(
        f"No default CAM layer for {model_name}: CAMs need a layer with a (N, C, h, w) "
        "output, usually the last convolutional block; name one."
    )


def _resolve_last(layer: str, model_name: str, model: Optional[nn.Module]) -> str:
    r"""``layer`` with ``{last}`` replaced by the name of the last child of
    the module before it."""
    if "{last}" not in layer:
        return layer
    if model is None:
        with torch.device("meta"):
            model = torchvision.models.get_model(model_name)
    container, _, rest = layer.partition(".{last}")
    children = [name for name, _ in model.get_submodule(container).named_children()]
    if not children:
        raise ValueError(f"No default CAM layer for {model_name}: its {container} is empty.")
    return f"{container}.{children[-1]}{rest}"


def get_weights(model_name: str, weights: str) -> WeightsEnum:
    r"""The weights ``weights`` ("DEFAULT" or a name such as "IMAGENET1K_V2")
    of a model, without downloading them; a ValueError lists the names when
    there is no such weights."""
    check_model_name(model_name)
    enum = torchvision.models.get_model_weights(model_name)
    try:
        return enum[weights]
    except KeyError:
        choices = ", ".join(["DEFAULT", *enum.__members__])
        raise ValueError(
            f"{model_name} has no weights {weights!r}; choose one of {choices}."
        ) from None


def load_model(
    model_name: str,
    weights: Optional[WeightsEnum] = None,
    checkpoint: Union[None, str, Path] = None,
    num_classes: Optional[int] = None,
) -> nn.Module:
    r"""
    A torchvision classification model in eval mode, on the CPU.

    Args:
        model_name (str): A name of :func:`classification_models`.
        weights (WeightsEnum, optional): Pretrained weights (see
                    :func:`get_weights`), downloaded into the torch hub cache
                    on first use. With ``checkpoint`` only their number of
                    classes is used. Default: None
        checkpoint (str or Path, optional): A file saved with
                    ``torch.save(model.state_dict())`` (or a dict holding it
                    under "state_dict" or "model"), read with
                    ``weights_only=True``. Default: None
        num_classes (int, optional): Outputs of the model. Default: None (the
                    weights', else torchvision's default, 1000)

    Returns:
        The model. With neither weights nor checkpoint its weights are random.

    Raises:
        ValueError: for an unknown name or a checkpoint that is not a state
                    dict of this architecture.
        FileNotFoundError: for a missing checkpoint.
        WeightsUnavailableError: when the weights cannot be downloaded.
    """
    check_model_name(model_name)
    if num_classes is None and weights is not None:
        num_classes = len(weights.meta["categories"])
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if checkpoint is None and weights is not None:
        try:
            with _download_timeout(DOWNLOAD_TIMEOUT_S):
                model = torchvision.models.get_model(model_name, weights=weights)
        except OSError as error:  # URLError, timeouts, refused connections
            raise WeightsUnavailableError(weights, error) from None
        return model.eval()
    model = torchvision.models.get_model(model_name, weights=None, **kwargs)
    if checkpoint is not None:
        _load_into(model, model_name, load_state_dict_file(checkpoint))
    return model.eval()


@contextmanager
def _download_timeout(seconds: float) -> Iterator[None]:
    r"""A stalled connection fails after ``seconds`` instead of hanging."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def load_state_dict_file(path: Union[str, Path]) -> Dict[str, Tensor]:
    r"""
    The state dict in a checkpoint file, read with ``weights_only=True``:
    the file's top level, or its "state_dict" or "model" entry; a
    ``module.`` prefix on every key (``DataParallel``) is removed.

    Raises:
        FileNotFoundError: for a missing file.
        ValueError: for a file that is not a state dict of tensors, or that
                    holds other objects (which are never unpickled).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file {path}.")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"Refusing to load {path}: it holds objects other than tensors and plain "
            "containers, and only state dicts are read (torch.load weights_only=True): "
            f"{_first_line(error)}"
        ) from None
    except Exception as error:  # not a torch file at all
        raise ValueError(f"Cannot read {path} as a torch checkpoint: "
                         f"{_first_line(error)}") from None
    for key in ("state_dict", "model"):
        if isinstance(content, dict) and isinstance(content.get(key), dict):
            content = content[key]
            break
    if not isinstance(content, dict) or not content or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in content.items()
    ):
        raise ValueError(
            f"{path} holds no state dict (a dict of parameter names to tensors, as "
            "torch.save(model.state_dict()) writes)."
        )
    if all(key.startswith("module.") for key in content):
        content = {key[len("module."):]: value for key, value in content.items()}
    return content


def _load_into(model: nn.Module, model_name: str, state: Dict[str, Tensor]) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        details = "; ".join(line.strip() for line in str(error).splitlines()[1:3])
        hint = (" (trained for another number of classes? pass num_classes)"
                if "size mismatch" in str(error) else "")
        raise ValueError(
            f"The checkpoint is not a state dict of {model_name}{hint}: {details[:300]}"
        ) from None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


@dataclass(frozen=True)
class Preprocessing:
    r"""
    The usual ImageNet evaluation preprocessing, split in two: :meth:`crop`
    (resize the shorter side, center crop; the picture to show) and
    :meth:`normalize` (the model's input).

    Attributes:
        resize_size (int): Shorter side after resizing.
        crop_size (int): Side of the square center crop.
        mean, std (tuple[float, ...]): Per-channel normalisation.
        interpolation (InterpolationMode): Of the resize.
    """

    resize_size: int = 256
    crop_size: int = 224
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    interpolation: InterpolationMode = InterpolationMode.BILINEAR

    @classmethod
    def for_weights(
        cls, weights: Optional[WeightsEnum] = None, crop_size: Optional[int] = None
    ) -> "Preprocessing":
        r"""The preprocessing of ``weights.transforms()``, or the standard one
        (resize 256, crop 224, ImageNet mean and std) without weights;
        ``crop_size`` changes the crop and scales the resize alike."""
        base = cls()
        if weights is not None:
            preset = weights.transforms()
            base = cls(
                resize_size=_first(getattr(preset, "resize_size", base.resize_size)),
                crop_size=_first(getattr(preset, "crop_size", base.crop_size)),
                mean=tuple(getattr(preset, "mean", base.mean)),
                std=tuple(getattr(preset, "std", base.std)),
                interpolation=getattr(preset, "interpolation", base.interpolation),
            )
        return base if crop_size is None else base.with_crop_size(crop_size)

    def with_crop_size(self, crop_size: int) -> "Preprocessing":
        r"""The same preprocessing with a crop of side ``crop_size`` and the
        resize scaled alike."""
        resize_size = round(crop_size * self.resize_size / self.crop_size)
        return Preprocessing(resize_size, crop_size, self.mean, self.std, self.interpolation)

    def crop(self, image: Tensor) -> Tensor:
        r"""A uint8 image (C, H, W) resized and center cropped, still uint8."""
        resized = TF.resize(image, [self.resize_size], self.interpolation, antialias=True)
        return TF.center_crop(resized, [self.crop_size])

    def normalize(self, images: Tensor) -> Tensor:
        r"""Cropped uint8 images (..., C, H, W) as the model's float input."""
        return TF.normalize(images.float() / 255, list(self.mean), list(self.std))


def _first(size: Union[int, Sequence[int]]) -> int:
    return int(size if isinstance(size, int) else size[0])
