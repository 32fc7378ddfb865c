r"""``captum-xcam explain``: CAMs of a classification model (torchvision's, timm's or
your own) for image files, one figure per image and a table of targets, scores and
timings.

Every input is checked before any work starts (files, images, model, weights,
layer, target), and the results are written all at once at the end."""
import argparse
import difflib
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from captum_xcam import MethodInfo, list_methods
from captum_xcam.cli.errors import CliError
from captum_xcam.cli.methods import attribute, parse_methods
from captum_xcam.cli.model_sources import model_source
from captum_xcam.cli.output import staged_output, unique_stems, write_csv, write_json
from captum_xcam.data import find_images, read_image
from captum_xcam.models import Preprocessing
from captum_xcam.models.torchvision_models import _first_line
from captum_xcam.reshape_transforms import ReshapeTransform, reshape_transform_for
from captum_xcam.visualization import visualize_attributions


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain", help="CAMs of a classification model for image files",
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER",
                        help="image files, or folders of them")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--model", default="resnet50",
                        help="a torchvision classification model (resnet50), timm/NAME for a "
                             "timm model (timm/resnet50, timm/resnet50.a1_in1k), or "
                             "package.module:function, a function of yours that returns the "
                             "model (default: resnet50)")
    parser.add_argument("--weights", default=None,
                        help="torchvision weights: DEFAULT (downloaded on first use), a name "
                             "such as IMAGENET1K_V1, or none (random); timm models: DEFAULT "
                             "or none. Default: DEFAULT, or none with --checkpoint (with it, "
                             "the weights only give the preprocessing and class names)")
    parser.add_argument("--checkpoint", type=Path,
                        help="a state dict saved with torch.save(model.state_dict()), "
                             "loaded with weights_only=True")
    parser.add_argument("--num-classes", type=int,
                        help="outputs of the model (default: the weights', else 1000)")
    parser.add_argument("--layer", help="dotted name of the CAM layer (default: the "
                                        "architecture's last block, e.g. layer4; for a "
                                        "ViT the last block's first LayerNorm, for a Swin "
                                        "its last stage; required for a builder's model "
                                        "unless it is a timm model)")
    parser.add_argument("--methods", default=",".join(list_methods()),
                        help=f"comma-separated, from {','.join(list_methods())} (default: all)")
    parser.add_argument("--target", default="auto",
                        help="auto (the predicted class), a class index, or a class name "
                             "of the weights (default: auto)")
    parser.add_argument("--guided", action="store_true",
                        help="add the guided variant of every method")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--image-size", type=int,
                        help="side of the center crop (default: the weights', else 224)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


@dataclass
class Job:
    r"""Everything a run needs, checked. ``reshape_transform`` is the one the
    CAMs pick for the layer themselves (a vision transformer's tokens or
    channels-last maps to (N, C, h, w)), None for a (N, C, h, w) layer;
    ``warned`` the library's warnings already shown."""

    files: List[Path]
    crops: List[Tensor]
    model: nn.Module
    layer: nn.Module
    layer_name: str
    preprocessing: Preprocessing
    categories: Optional[Sequence[str]]
    target: Optional[int]
    methods: List[MethodInfo]
    device: torch.device
    weights: Optional[str]
    reshape_transform: Optional[ReshapeTransform] = None
    warned: Set[str] = field(default_factory=set)


def run(args: argparse.Namespace) -> None:
    job = prepare(args)
    per_image: List[List[Dict[str, object]]] = []
    with staged_output(args.out) as staging:
        images = list(zip(job.files, unique_stems(job.files), job.crops))
        for path, stem, crop in tqdm(images, desc="Images", unit="image", disable=args.quiet):
            per_image.append(explain_image(job, path, crop, staging / f"{stem}.png", args))
        rows = [row for image_rows in per_image for row in image_rows]
        write_csv(staging / "explanations.csv", rows)
        write_json(staging / "explanations.json", {"config": config(args, job),
                                                   "explanations": rows})
    for first, *_ in per_image:
        name = f" ({first['target_name']})" if first["target_name"] else ""
        print(f"{first['image']}: target {first['target']}{name}, probability "
              f"{first['score']:.3f}, figure {first['figure']}")
    print(f"Wrote {len(per_image)} figures and explanations.csv, .json to {args.out}")


def prepare(args: argparse.Namespace) -> Job:
    r"""Checks every input, cheapest first, and loads the images and model."""
    methods = parse_methods(args.methods)
    device = _device(args.device)
    if args.image_size is not None and args.image_size < 16:
        raise CliError(f"--image-size must be at least 16, got {args.image_size}.")
    source = model_source(args)
    try:
        layer_name = args.layer or source.known_layer()
        files = find_images(args.images)
        preprocessing = source.preprocessing(args.image_size)
        crops = [preprocessing.crop(read_image(path)) for path in files]
        model = source.load(args.checkpoint, args.num_classes)
    except (ValueError, FileNotFoundError) as error:
        raise CliError(str(error)) from None
    if source.random_weights:
        print(f"captum-xcam: warning: {args.model} has random weights (--weights none): "
              "its explanations are meaningless.", file=sys.stderr)
    model = model.to(device)
    first = preprocessing.normalize(crops[0]).unsqueeze(0).to(device)
    try:
        layer_name = layer_name or source.find_layer(model, first)
        layer = _layer(model, layer_name, args.model)
        transform = reshape_transform_for(model, layer)
        num_outputs = _check_shapes(model, layer, layer_name, first, args.model, transform)
    except (RuntimeError, AssertionError) as error:  # the model's own checks of its input
        raise CliError(f"{args.model} fails on an input of shape {tuple(first.shape)} "
                       f"({type(error).__name__}: {_first_line(error)}); another "
                       "--image-size may suit it.") from None
    categories = source.categories(num_outputs)
    target = resolve_target(args.target, categories, num_outputs)
    return Job(files, crops, model, layer, layer_name, preprocessing, categories, target,
               methods, device, source.weights_label, transform)


def explain_image(job: Job, path: Path, crop: Tensor, figure_path: Path,
                  args: argparse.Namespace) -> List[Dict[str, object]]:
    r"""Every method's map of one image, its figure, and its table rows."""
    inputs = job.preprocessing.normalize(crop).unsqueeze(0).to(job.device)
    with torch.no_grad():
        probabilities = job.model(inputs).softmax(1)[0].cpu()
    predicted = int(probabilities.argmax())
    target = predicted if job.target is None else job.target
    maps: Dict[str, Tensor] = {}
    guided: Dict[str, Tensor] = {}
    seconds: Dict[str, float] = {}
    for method in job.methods:
        with _library_warnings(job, f"{method.name} at {job.layer_name}"):
            maps[method.name], seconds[method.name] = attribute(
                method, job.model, job.layer, inputs, target, show_progress=not args.quiet)
        if args.guided:
            name = f"Guided {method.name}"
            with _library_warnings(job, f"{name} at {job.layer_name}"):
                guided[name], seconds[name] = attribute(
                    method, job.model, job.layer, inputs, target, guided=True,
                    show_progress=not args.quiet)
    with _library_warnings(job, f"the figure of {path.name}"):
        figure = visualize_attributions(
            crop.unsqueeze(0), maps, targets=[target], scores=[probabilities[target]],
            class_names=job.categories, guided=guided, image_titles=[path.name],
        )
    figure.savefig(figure_path, dpi=100)
    return [{
        "image": str(path),
        "figure": figure_path.name,
        "method": name,
        "target": target,
        "target_name": _name(job.categories, target),
        "score": round(float(probabilities[target]), 6),
        "predicted": predicted,
        "predicted_name": _name(job.categories, predicted),
        "seconds": round(elapsed, 4),
    } for name, elapsed in seconds.items()]


@contextmanager
def _library_warnings(job: Job, context: str) -> Iterator[None]:
    r"""The user warnings of one method or figure (every weight zero, say: a
    ViT's last block, or a head of zeros) on stderr as the command's own lines,
    ``context`` first, each once per run, instead of Python's lines that point
    into the package; other warnings pass on as they are."""
    with warnings.catch_warnings(record=True) as caught:
        yield
    for warning in caught:
        if not issubclass(warning.category, UserWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
            continue
        message = f"{context}: {warning.message}"
        if message not in job.warned:
            job.warned.add(message)
            tqdm.write(f"captum-xcam: warning: {message}", file=sys.stderr)


def resolve_target(text: str, categories: Optional[Sequence[str]],
                   num_outputs: int) -> Optional[int]:
    r"""``--target``: None for "auto" (each image's predicted class), else the
    index of an output, given as a number or a class name."""
    text = text.strip()
    if text.lower() == "auto":
        return None
    try:
        index = int(text)
    except ValueError:
        return _target_by_name(text, categories, num_outputs)
    if not 0 <= index < num_outputs:
        raise CliError(f"Target {index} is out of range: the model has {num_outputs} "
                       f"outputs (0 to {num_outputs - 1}).")
    return index


def _target_by_name(name: str, categories: Optional[Sequence[str]], num_outputs: int) -> int:
    if categories is None:
        raise CliError(f"Target {name!r} is a class name, but class names come only with "
                       f"--weights; give an index from 0 to {num_outputs - 1}.")
    lowered = [category.lower() for category in categories]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    close = difflib.get_close_matches(name.lower(), lowered, n=3, cutoff=0.6)
    if close:
        suggestions = " or ".join(repr(categories[lowered.index(c)]) for c in close)
        raise CliError(f"Unknown target class {name!r}; did you mean {suggestions}?")
    raise CliError(f"Unknown target class {name!r} among the weights' {len(categories)} "
                   f"class names; give an index or a name such as {categories[0]!r}.")


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CliError(f"Unknown device {name!r}; use cpu or cuda.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name}: CUDA is not available on this machine; use cpu.")
    return device


def _layer(model: nn.Module, name: str, model_name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        children = ", ".join(child for child, _ in model.named_children())
        raise CliError(f"{model_name} has no layer {name!r}; its top-level layers are "
                       f"{children} (dotted names reach nested ones).") from None


def _check_shapes(model: nn.Module, layer: nn.Module, layer_name: str, inputs: Tensor,
                  model_name: str, transform: Optional[ReshapeTransform]) -> int:
    r"""The number of outputs, after checking that the layer gives one
    (N, C, h, w) feature map, through ``transform`` where the CAMs use one (a
    vision transformer's tokens laid out on their patch grid), and the model
    (N, classes) scores."""
    seen: List[object] = []
    handle = layer.register_forward_hook(lambda module, args, output: seen.append(output))
    try:
        with torch.no_grad():
            output = model(inputs)
    finally:
        handle.remove()
    grid = seen[0] if len(seen) == 1 else None
    if isinstance(grid, Tensor) and transform is not None:
        try:
            grid = transform(grid)
        except ValueError as error:
            raise CliError(f"The layer {layer_name!r} of {model_name} outputs "
                           f"{_describe(seen[0])}, which its reshape transform {transform!r} "
                           f"cannot lay out as a (N, C, h, w) map: {_first_line(error)}") from None
    if not isinstance(grid, Tensor) or grid.dim() != 4:
        what = (f"is called {len(seen)} times" if len(seen) != 1 else
                f"outputs {_describe(seen[0])}")
        tokens = transform is None and isinstance(grid, Tensor) and grid.dim() == 3
        hint = ("; a transformer's tokens are laid out on their patch grid only for "
                "torchvision's and timm's ViT, DeiT and Swin (in Python, pass "
                "reshape_transform=captum_xcam.TokenGrid(...) to the CAM)") if tokens else ""
        raise CliError(f"The layer {layer_name!r} of {model_name} {what}; CAMs need a layer "
                       "called once with a (N, C, h, w) feature map, such as the last "
                       f"convolutional block{hint}.")
    if not isinstance(output, Tensor) or output.dim() != 2:
        raise CliError(f"{model_name} outputs {_describe(output)}, not (N, classes) scores.")
    return output.shape[1]


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _name(categories: Optional[Sequence[str]], index: int) -> str:
    return categories[index] if categories is not None else ""


def config(args: argparse.Namespace, job: Job) -> Dict[str, object]:
    return {
        "model": args.model,
        "weights": job.weights,
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "layer": job.layer_name,
        "reshape_transform": repr(job.reshape_transform) if job.reshape_transform else None,
        "methods": [method.key for method in job.methods],
        "guided": args.guided,
        "target": args.target,
        "image_size": job.preprocessing.crop_size,
        "device": str(job.device),
    }
