r"""What ``explain --model`` names: a torchvision model (``resnet50``), a timm
model (``timm/resnet50``) or a user's builder (``package.module:function``).

Each source checks its name and ``--weights`` when it is made (cheap, before
any image is read), and then gives the preprocessing, the model, its default
CAM layer and its class names."""
import argparse
import difflib
import importlib
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from torch import Tensor, nn
from torchvision.models import WeightsEnum

from captum_xcam.cli.errors import CliError
from captum_xcam.models import (
    Preprocessing,
    TimmWeightsUnavailableError,
    WeightsUnavailableError,
    check_model_name,
    check_timm_name,
    default_cam_layer,
    get_weights,
    imagenet_class_names,
    is_timm_model,
    load_model,
    load_state_dict_file,
    load_timm_model,
    timm_cam_layer,
    timm_preprocessing,
    timm_weights_name,
)
from captum_xcam.models.timm_models import TIMM_PREFIX
from captum_xcam.models.torchvision_models import _first_line, _load_into


class ModelSource:
    r"""A model named by ``--model``; ``label`` is the name as given.

    Attributes:
        label (str): ``--model`` as given, for messages.
        weights_label (str or None): The pretrained weights, for the report.
        random_weights (bool): Whether the model's weights are random (no
                    pretrained weights and no checkpoint), worth a warning.
    """

    label: str
    weights_label: Optional[str] = None
    random_weights: bool = False

    def known_layer(self) -> Optional[str]:
        r"""The default CAM layer when the name alone gives it, else None."""
        return None

    def preprocessing(self, crop_size: Optional[int]) -> Preprocessing:
        return Preprocessing.for_weights(None, crop_size)

    def load(self, checkpoint: Optional[Path], num_classes: Optional[int]) -> nn.Module:
        raise NotImplementedError

    def find_layer(self, model: nn.Module, inputs: Tensor) -> str:
        r"""The default CAM layer of the loaded model, run on ``inputs``."""
        raise NotImplementedError

    def categories(self, num_outputs: int) -> Optional[Sequence[str]]:
        return None


def model_source(args: argparse.Namespace) -> ModelSource:
    r"""The source of ``args.model``; a CliError for a wrong name or weights."""
    try:
        if args.model.startswith(TIMM_PREFIX):
            return TimmSource(args.model, args.weights, args.checkpoint)
        if ":" in args.model:
            return BuilderSource(args.model, args.weights)
        return TorchvisionSource(args.model, args.weights, args.checkpoint, args.layer)
    except (ValueError, ImportError) as error:  # ImportError: timm is not installed
        raise CliError(str(error)) from None


def _weights_name(weights: Optional[str], checkpoint: Optional[Path]) -> str:
    r"""``--weights``, else "DEFAULT", or "none" with a checkpoint."""
    return weights or ("none" if checkpoint else "DEFAULT")


class TorchvisionSource(ModelSource):
    def __init__(self, name: str, weights: Optional[str], checkpoint: Optional[Path],
                 layer: Optional[str]) -> None:
        check_model_name(name)
        self.label = name
        weights_name = _weights_name(weights, checkpoint)
        self.weights: Optional[WeightsEnum] = (
            None if weights_name.lower() == "none" else get_weights(name, weights_name))
        self.weights_label = str(self.weights) if self.weights is not None else None
        self.random_weights = self.weights is None and checkpoint is None
        # By family, found now (a ViT's or Swin's from the architecture built on the
        # meta device: the name depends on its depth), before any work.
        self._layer = layer or default_cam_layer(name)

    def known_layer(self) -> Optional[str]:
        return self._layer

    def preprocessing(self, crop_size: Optional[int]) -> Preprocessing:
        return Preprocessing.for_weights(self.weights, crop_size)

    def load(self, checkpoint: Optional[Path], num_classes: Optional[int]) -> nn.Module:
        try:
            return load_model(self.label, self.weights, checkpoint, num_classes)
        except WeightsUnavailableError as error:
            raise CliError(
                f"Cannot download the weights {error.weights} of {self.label} (no network?). "
                f"Copy {error.weights.url} to {error.file} (the torch hub cache; TORCH_HOME "
                f"moves it), or pass --checkpoint FILE --weights {error.weights.name} to load "
                "a copy, or --weights none for random weights."
            ) from None

    def find_layer(self, model: nn.Module, inputs: Tensor) -> str:
        return self._layer

    def categories(self, num_outputs: int) -> Optional[Sequence[str]]:
        if self.weights is not None and len(self.weights.meta["categories"]) == num_outputs:
            return self.weights.meta["categories"]
        return None


class TimmSource(ModelSource):
    r"""``timm/<name>``: ``--weights DEFAULT`` are timm's pretrained weights of
    the name (its default tag, or the tag in the name: ``timm/resnet50.a1_in1k``),
    ``none`` random weights."""

    def __init__(self, label: str, weights: Optional[str],
                 checkpoint: Optional[Path]) -> None:
        self.label = label
        self.name = label[len(TIMM_PREFIX):]
        check_timm_name(self.name)
        weights_name = _weights_name(weights, checkpoint)
        if weights_name.lower() not in ("default", "none"):
            raise ValueError(
                f"timm models take --weights DEFAULT (timm's pretrained weights; another tag "
                f"goes in the name, as in {TIMM_PREFIX}resnet50.a1_in1k) or none, not "
                f"{weights_name!r}.")
        self.pretrained = weights_name.lower() == "default"
        self.weights_label = f"timm:{timm_weights_name(self.name)}" if self.pretrained else None
        self.random_weights = not self.pretrained and checkpoint is None

    def preprocessing(self, crop_size: Optional[int]) -> Preprocessing:
        return timm_preprocessing(self.name, crop_size)

    def load(self, checkpoint: Optional[Path], num_classes: Optional[int]) -> nn.Module:
        try:
            return load_timm_model(self.name, self.pretrained, checkpoint, num_classes)
        except TimmWeightsUnavailableError as error:
            raise CliError(
                f"Cannot download timm's weights {error.name} of {self.label} (no network?) "
                f"from {error.source}; once downloaded they are read from {error.cache} "
                f"without the network ({error.cache_variable} moves it). Or pass --checkpoint "
                "FILE --weights DEFAULT to load a copy saved with torch.save(model."
                "state_dict()), or --weights none for random weights."
            ) from None

    def find_layer(self, model: nn.Module, inputs: Tensor) -> str:
        return _timm_layer(model, inputs)

    def categories(self, num_outputs: int) -> Optional[Sequence[str]]:
        return imagenet_class_names(num_outputs) if self.pretrained else None


class BuilderSource(ModelSource):
    r"""``package.module:function``: a function of the user's that returns the
    model, called with no arguments, or with ``num_classes=`` when
    ``--num-classes`` is given. The module is imported from the current folder
    or the Python path."""

    def __init__(self, label: str, weights: Optional[str]) -> None:
        self.label = label
        if weights is not None and weights.lower() != "none":
            raise ValueError(f"--weights is for torchvision and timm models; the builder "
                             f"{label} makes its own (load others with --checkpoint).")
        self.builder = _import_builder(label)

    def load(self, checkpoint: Optional[Path], num_classes: Optional[int]) -> nn.Module:
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        shown = "" if num_classes is None else f"num_classes={num_classes:d}"
        call = f"{self.label}({shown})"
        try:
            with _current_folder_importable():
                model = self.builder(**kwargs)
        except Exception as error:
            raise CliError(f"{call} raised {type(error).__name__}: "
                           f"{_first_line(error)}") from None
        if not isinstance(model, nn.Module):
            raise CliError(f"{call} returned a {type(model).__name__}, not a torch.nn.Module.")
        if checkpoint is not None:
            _load_into(model, self.label, load_state_dict_file(checkpoint))
        return model.eval()

    def find_layer(self, model: nn.Module, inputs: Tensor) -> str:
        if is_timm_model(model):
            return _timm_layer(model, inputs)
        children = ", ".join(name for name, _ in model.named_children()) or "none"
        raise CliError(f"{self.label} builds a {type(model).__name__}, which has no default "
                       f"CAM layer (only timm models do); name one with --layer (its top-level "
                       f"layers: {children}; dotted names reach nested ones).")


def _timm_layer(model: nn.Module, inputs: Tensor) -> str:
    try:
        return timm_cam_layer(model, inputs)
    except ValueError as error:  # "...; name a layer."
        raise CliError(f"{str(error).rstrip('.')} with --layer.") from None


@contextmanager
def _current_folder_importable() -> Iterator[None]:
    r"""The current folder on ``sys.path`` while the builder is imported and
    called, as ``python -m`` has it (the ``captum-xcam`` script does not)."""
    folder = os.getcwd()
    added = folder not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _import_builder(spec: str) -> Callable[..., Any]:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute or ":" in attribute:
        raise ValueError(f"--model {spec!r}: a builder is written package.module:function.")
    try:
        with _current_folder_importable():
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not (module_name + ".").startswith(error.name + "."):
            raise ValueError(f"Importing {module_name} for --model {spec} failed: "
                             f"ModuleNotFoundError: {_first_line(error)}") from None
        raise ValueError(f"Cannot import {module_name} for --model {spec}: "
                         f"{_first_line(error)} (the module must be importable from the "
                         "current folder or PYTHONPATH).") from None
    except Exception as error:  # the module's own code failed
        raise ValueError(f"Importing {module_name} for --model {spec} failed: "
                         f"{type(error).__name__}: {_first_line(error)}") from None
    builder: Any = module
    for part in attribute.split("."):
        if not hasattr(builder, part):
            names = [name for name in dir(builder) if not name.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else "."
            raise ValueError(f"{module_name} has no attribute {attribute!r} (--model "
                             f"{spec}){hint}")
        builder = getattr(builder, part)
    if not callable(builder):
        raise ValueError(f"--model {spec}: {attribute} is not callable (an object of type "
                         f"{type(builder).__name__}); name a function that returns the model.")
    return builder
