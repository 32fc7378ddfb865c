r"""timm classification models by name: the model with random weights, timm's
pretrained weights or a checkpoint file, its CAM layer, its preprocessing and
ImageNet class names.

timm is optional (the ``dev`` and ``bench`` extras): it is imported only when
a function here needs it, and :class:`TimmUnavailableError` says how to
install it otherwise. Checkpoints are read as for torchvision models, with
``torch.load(..., weights_only=True)``.

The CAM layer is derived per model, not looked up in a table of families:
timm's classifiers split into ``forward_features`` (everything up to the last
feature map) and ``forward_head`` (pooling and classifier), so the layer to
explain is the module that outputs what ``forward_features`` returns.
:func:`timm_cam_layer` finds it by running the model once. Vision transformers,
whose features are tokens or channels-last maps, get the layer their CAMs lay out
on the patch grid instead (ViT, DeiT: the last block's ``norm1``; Swin: the last
stage), where :func:`captum_xcam.reshape_transform_for` knows the layout.
"""
import difflib
import importlib
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from captum_xcam.models.torchvision_models import (
    DOWNLOAD_TIMEOUT_S,
    Preprocessing,
    _download_timeout,
    _first_line,
    _load_into,
    load_state_dict_file,
)
from captum_xcam.reshape_transforms import reshape_transform_for

TIMM_PREFIX = "timm/"
IMAGENET_CLASSES = 1000


class TimmUnavailableError(ImportError):
    r"""timm is not installed."""

    def __init__(self) -> None:
        super().__init__("timm models need the timm package: pip install timm "
                         "(or pip install 'captum-xcam[dev]').")


class TimmWeightsUnavailableError(RuntimeError):
    r"""timm's pretrained weights for a model, neither cached nor downloadable
    (no network, for example).

    Attributes:
        name (str): The model with its weights tag, e.g. ``resnet18.a1_in1k``.
        source (str): Where timm downloads them from: a Hugging Face Hub
                    repository (``hf-hub:timm/resnet18.a1_in1k``) or a URL.
        cache (Path): The folder timm reads them from without the network:
                    the Hugging Face cache for hub weights, else the torch hub
                    cache's ``checkpoints`` folder.
        cache_variable (str): The environment variable that moves ``cache``:
                    ``HF_HOME`` or ``TORCH_HOME``.
    """

    def __init__(self, name: str, source: str, cache: Path, cache_variable: str,
                 cause: BaseException) -> None:
        self.name, self.source, self.cache = name, source, cache
        self.cache_variable = cache_variable
        super().__init__(
            f"Cannot download timm's weights {name} from {source} "
            f"({type(cause).__name__}: {_first_line(cause)}); they are read from {cache} "
            "once there, or load a state dict from a file."
        )


def _timm() -> Any:
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise TimmUnavailableError() from None


def is_timm_model(model: nn.Module) -> bool:
    r"""Whether ``model`` is an instance of a timm model class (whatever built it)."""
    return type(model).__module__.startswith("timm.") and hasattr(model, "forward_features")


def check_timm_name(name: str) -> None:
    r"""
    Raises a ValueError, with the nearest names, unless ``name`` is a timm
    architecture (``resnet50``) or an architecture with a pretrained tag
    (``resnet50.a1_in1k``).

    Raises:
        TimmUnavailableError: without timm.
    """
    timm = _timm()
    architecture, _, tag = name.partition(".")
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=3)
        hint = f"; did you mean {' or '.join(TIMM_PREFIX + c for c in close)}?" if close else (
            "; timm.list_models() lists them.")
        raise ValueError(f"Unknown timm model {architecture!r}{hint}")
    if tag:
        tagged = timm.list_pretrained(f"{architecture}.*")
        if name not in tagged:
            choices = ", ".join(TIMM_PREFIX + t for t in tagged) or "none"
            raise ValueError(f"timm has no weights {name!r}; the tags of {architecture} are "
                             f"{choices}.")


def timm_weights_name(name: str) -> str:
    r"""The name with the tag of the weights ``pretrained=True`` loads:
    ``resnet18`` -> ``resnet18.a1_in1k``; a tagged name as it is."""
    cfg = _pretrained_cfg(name)
    return f"{cfg['architecture']}.{cfg['tag']}" if cfg.get("tag") else name


def _pretrained_cfg(name: str) -> Dict[str, Any]:
    r"""The pretrained config of a timm name (the architecture's default tag
    unless the name has one), without building the model."""
    timm = _timm()
    architecture, tag = timm.models.split_model_name_tag(name)
    cfg = timm.models.get_pretrained_cfg(f"{architecture}.{tag}" if tag else architecture)
    return cfg.to_dict() if cfg is not None else {}


def load_timm_model(
    name: str,
    pretrained: bool = False,
    checkpoint: Union[None, str, Path] = None,
    num_classes: Optional[int] = None,
) -> nn.Module:
    r"""
    A timm model in eval mode, on the CPU.

    Args:
        name (str): A timm architecture, optionally with a weights tag
                    (``resnet50`` or ``resnet50.a1_in1k``).
        pretrained (bool, optional): timm's pretrained weights, downloaded on
                    first use (from the Hugging Face Hub for most). Ignored
                    with ``checkpoint``. Default: False
        checkpoint (str or Path, optional): A state dict file, read with
                    ``weights_only=True`` (see :func:`load_state_dict_file`).
                    Default: None
        num_classes (int, optional): Outputs of the model. Default: None
                    (timm's default for the architecture, 1000 for most)

    Returns:
        The model. Without weights or checkpoint its weights are random.

    Raises:
        ValueError: for an unknown name or a checkpoint that does not fit.
        FileNotFoundError: for a missing checkpoint.
        TimmWeightsUnavailableError: when the weights cannot be downloaded.
        TimmUnavailableError: without timm.
    """
    check_timm_name(name)
    timm = _timm()
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if pretrained and checkpoint is None:
        try:
            _check_hub_reachable(name)
            with _download_timeout(DOWNLOAD_TIMEOUT_S):
                model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as error:  # OSError, the Hugging Face Hub's errors, timeouts
            raise _weights_unavailable(name, error) from None
        return model.eval()
    model = timm.create_model(name, pretrained=False, **kwargs)
    if checkpoint is not None:
        _load_into(model, TIMM_PREFIX + name, load_state_dict_file(checkpoint))
    return model.eval()


def _check_hub_reachable(name: str) -> None:
    r"""For weights on the Hugging Face Hub that are not in its cache: one
    request, without retries, that fails at once offline. (The hub's own
    download retries with backoff, close to a minute offline.) An answer from
    the server, even an error status, means the hub is reachable."""
    hub_id = _pretrained_cfg(name).get("hf_hub_id")
    try:
        import huggingface_hub
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:  # timm then downloads from the weights' URL
        return
    filename = _pretrained_cfg(name).get("hf_hub_filename") or "model.safetensors"
    if not hub_id or isinstance(huggingface_hub.try_to_load_from_cache(hub_id, filename), str):
        return
    try:
        huggingface_hub.get_hf_file_metadata(huggingface_hub.hf_hub_url(hub_id, filename),
                                             timeout=10)
    except HfHubHTTPError:
        return


def _weights_unavailable(name: str, cause: BaseException) -> TimmWeightsUnavailableError:
    cfg = _pretrained_cfg(name)
    tagged = timm_weights_name(name)
    if cfg.get("hf_hub_id"):
        try:
            from huggingface_hub.constants import HF_HUB_CACHE

            cache = Path(HF_HUB_CACHE)
        except ImportError:
            cache = Path("~/.cache/huggingface/hub").expanduser()
        return TimmWeightsUnavailableError(tagged, f"hf-hub:{cfg['hf_hub_id']}", cache,
                                           "HF_HOME", cause)
    return TimmWeightsUnavailableError(tagged, str(cfg.get("url") or "timm's sources"),
                                       Path(torch.hub.get_dir()) / "checkpoints", "TORCH_HOME",
                                       cause)


def timm_preprocessing(
    name_or_model: Union[str, nn.Module], crop_size: Optional[int] = None
) -> Preprocessing:
    r"""
    The evaluation preprocessing timm gives a model (``resolve_data_config``,
    as ``create_transform(..., is_training=False)`` applies it): resize the
    shorter side to ``floor(crop / crop_pct)``, center crop, the model's mean,
    std and interpolation. ``crop_size`` changes the crop and scales the
    resize alike. The few models whose config asks for the ``squash`` or
    ``border`` crop modes get a center crop too.

    Args:
        name_or_model (str or nn.Module): A timm name (read without building
                    the model) or a timm model.
        crop_size (int, optional): Side of the crop. Default: None (the
                    config's, 224 for most)
    """
    data = _timm().data
    if isinstance(name_or_model, str):
        check_timm_name(name_or_model)
        config = data.resolve_data_config(pretrained_cfg=_pretrained_cfg(name_or_model))
    else:
        config = data.resolve_data_config(model=name_or_model)
    crop = int(config["input_size"][-1])
    crop_pct = config.get("crop_pct") or data.DEFAULT_CROP_PCT
    interpolation = data.transforms.str_to_interp_mode(config.get("interpolation", "bilinear"))
    base = Preprocessing(resize_size=math.floor(crop / crop_pct), crop_size=crop,
                         mean=tuple(config["mean"]), std=tuple(config["std"]),
                         interpolation=interpolation)
    return base if crop_size is None else base.with_crop_size(crop_size)


def imagenet_class_names(num_classes: int = IMAGENET_CLASSES) -> Optional[List[str]]:
    r"""The class names of the ImageNet subset with ``num_classes`` classes, as
    timm has them (``timm.data.ImageNetInfo``; 1000 for ImageNet-1k, 11821,
    21841 and 21843 for the larger ones), the first of each class's synonyms
    ("tench", "goldfish", ...); None for other numbers of classes."""
    data = _timm().data
    subset = data.infer_imagenet_subset({"num_classes": num_classes})
    if subset is None:
        return None
    info = data.ImageNetInfo(subset)
    if info.num_classes() != num_classes:
        return None
    return [description.split(",")[0].strip() for description in info.label_descriptions()]


def timm_cam_layer(model: nn.Module, inputs: Optional[Tensor] = None) -> str:
    r"""
    The dotted name of the module of a timm model whose output is the feature
    map that ``forward_features`` returns and ``forward_head`` pools: the last
    (N, C, h, w) map before global pooling, a model's usual CAM layer
    (``layer4`` for ResNets, ``bn2`` for EfficientNets, after their last 1x1
    convolution, ``stages`` for ConvNeXts, ``features`` for VGGs, ...).

    Vision transformers return tokens (ViT, DeiT) or channels-last maps
    (Swin) instead; for those whose layout
    :func:`captum_xcam.reshape_transform_for` knows (timm's
    ``VisionTransformer`` and its subclasses such as DeiT distilled,
    ``SwinTransformer``, ``SwinTransformerV2``) the layer is the one their CAMs
    lay out on the patch grid: ``blocks.<last>.norm1``, the last block's first
    LayerNorm, for ViT and DeiT (after the last block's attention only the
    class token feeds the head, so the patch tokens of the block's output
    get no gradient), and ``layers.<last>``, the last stage, for Swin.

    It runs ``model.forward_features(inputs)`` once without gradients, with a
    forward hook on every module, and picks the last module to finish whose
    output is the returned tensor itself, not modified in place afterwards,
    called once, and not an ``nn.Identity``. Among nested modules that return
    the same tensor that is the outermost (``layer4``, not its last block).
    The result depends on the model's structure only, not on its weights.

    Args:
        model (nn.Module): A timm model (one with ``forward_features``). It
                    runs in eval mode, and is left as found (modes, buffers,
                    no hooks).
        inputs (Tensor, optional): A batch for the run. Default: None (one
                    image of the model's default input size, from a seeded
                    generator)

    Raises:
        ValueError: when ``forward_features`` does not return a (N, C, h, w)
                    map (tokens; channels-last maps, whose last dimension is
                    ``model.num_features``) of a model that is not a
                    recognised vision transformer (MambaOut, EVA, ...), or
                    no module outputs it (a function computes it after the
                    last module); name a layer then.
    """
    forward_features = getattr(model, "forward_features", None)
    if not callable(forward_features):
        raise ValueError(f"{type(model).__name__} has no forward_features method, so it has "
                         "no timm CAM layer; name a layer.")
    if inputs is None:
        inputs = _example_input(model)
    seen: List[Tuple[str, Tensor, int]] = []
    calls: Dict[str, int] = {}

    def record(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, Tensor) and not isinstance(module, nn.Identity):
                seen.append((name, output, output._version))
        return hook

    modes = [(module, module.training) for module in model.modules()]
    handles = [module.register_forward_hook(record(name))
               for name, module in model.named_modules() if name]
    try:
        model.eval()  # no batch-norm statistics updated, whatever the mode
        with torch.no_grad():
            features = forward_features(inputs)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
    what = type(model).__name__
    channels = getattr(model, "num_features", None)
    feature_map = isinstance(features, Tensor) and features.dim() == 4 and not (
        channels and features.shape[1] != channels and features.shape[-1] == channels)
    transformer = None if feature_map else _transformer_layer(model)
    if transformer is not None:
        return transformer
    if not isinstance(features, Tensor) or features.dim() != 4:
        shape = (f"a tensor of shape {tuple(features.shape)}" if isinstance(features, Tensor)
                 else f"a {type(features).__name__}")
        raise ValueError(f"No default CAM layer for {what}: its forward_features returns "
                         f"{shape}, not a (N, C, h, w) feature map; name a layer.")
    if not feature_map:
        raise ValueError(f"No default CAM layer for {what}: its features are channels-last "
                         f"{tuple(features.shape)}, and CAMs need a (N, C, h, w) layer "
                         "output; name a layer.")
    for name, output, version in reversed(seen):
        if output is features and version == features._version and calls[name] == 1:
            return name
    raise ValueError(f"No default CAM layer for {what}: no module outputs the feature map "
                     "forward_features returns (a function computes it after the last "
                     "module); name a layer.")


def _transformer_layer(model: nn.Module) -> Optional[str]:
    r"""ViT and DeiT: ``blocks.<last>.norm1``; Swin: ``layers.<last>``; only
    where :func:`captum_xcam.reshape_transform_for` knows the layer's layout,
    else None."""
    blocks, stages = getattr(model, "blocks", None), getattr(model, "layers", None)
    if (isinstance(blocks, nn.Sequential) and len(blocks)
            and isinstance(getattr(blocks[-1], "norm1", None), nn.Module)):
        name = f"blocks.{len(blocks) - 1}.norm1"
    elif isinstance(stages, nn.Sequential) and len(stages):
        name = f"layers.{len(stages) - 1}"
    else:
        return None
    return name if reshape_transform_for(model, model.get_submodule(name)) is not None else None


def _example_input(model: nn.Module) -> Tensor:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = tuple(cfg.get("input_size", (3, 224, 224)))
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    return torch.randn((1, *size), generator=generator).to(device)

