r"""``captum-xcam explain``: CAMs of a classification model (torchvision's, timm's or
your own) for image files, one figure per image and a table of targets, scores and
timings.

Every input is checked before any work starts (files, the first image, model,
weights, layer, target, and that ``--out`` is new or holds results of the same
settings). The images are then read, explained and written one at a time:
each image's rows are on disk as soon as it is done, memory stays flat in the
number of images, and a rerun with the same ``--out`` skips the images done
(:mod:`captum_xcam.cli.results`). An image that cannot be read is told on
stderr and skipped; the run carries on, ends marked incomplete and exits with
status 1, and a rerun retries it. Under ``torchrun`` the images are shared
out among the processes (:mod:`captum_xcam.cli.sharding`)."""
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
from captum_xcam.cli.output import figure_stems
from captum_xcam.cli.results import RUNNING, ResultsFolder, RowWriter, Status
from captum_xcam.cli.sharding import Processes, start_processes
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
    parser.add_argument("--no-figures", action="store_true",
                        help="only the table: no figure per image (faster on large datasets)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


COLUMNS = ("image", "figure", "method", "target", "target_name", "score", "predicted",
           "predicted_name", "seconds")


@dataclass
class Job:
    r"""Everything a run needs, checked. ``files`` is the global list of images
    (every process's, in order); ``reshape_transform`` is the one the CAMs pick for the layer
    themselves (a vision transformer's tokens or channels-last maps to (N, C,
    h, w)), None for a (N, C, h, w) layer; ``warned`` the library's warnings
    already shown."""

    files: List[Path]
    model: nn.Module
    layer: nn.Module
    layer_name: str
    preprocessing: Preprocessing
    categories: Optional[Sequence[str]]
    target: Optional[int]
    num_outputs: int
    methods: List[MethodInfo]
    device: torch.device
    weights: Optional[str]
    reshape_transform: Optional[ReshapeTransform] = None
    warned: Set[str] = field(default_factory=set)


@dataclass
class Share:
    r"""What this process did of its share of the images left to do."""

    explained: int = 0
    failed: List[Dict[str, str]] = field(default_factory=list)
    stopped: Optional[str] = None


def run(args: argparse.Namespace) -> None:
    processes = start_processes()
    try:
        explain_all(args, processes)
    finally:
        processes.close()


def explain_all(args: argparse.Namespace, processes: Processes) -> None:
    r"""Checks the inputs, takes in what earlier runs into ``--out`` did,
    explains this process's share of the images left, and merges."""
    job = prepare(args, processes)
    settings = config(args, job)
    results = ResultsFolder(args.out, COLUMNS, len(job.methods) * (2 if args.guided else 1))
    results.check(settings)
    processes.barrier()  # every process has checked the folder before it changes
    images = [str(path) for path in job.files]
    if processes.is_first:
        results.merge(images)  # the rows of an interrupted run, its shards included
    processes.barrier()
    done = results.done()
    todo = [index for index, image in enumerate(images) if image not in done]
    if not todo and results.is_complete() and results.report.exists():
        if processes.is_first:
            print(f"All {len(images)} images are explained in {args.out} already; "
                  "nothing to do.")
        return
    if processes.is_first:
        results.start(settings, Status(len(images), len(images) - len(todo), reason=RUNNING))
    stems = figure_stems(args.images, job.files)  # of the global list: every process agrees
    share = Share()
    try:
        with results.writer(processes.rank, processes.world) as writer:
            explain_share(job, processes.share(todo), stems, writer, args, processes, share)
    except (KeyboardInterrupt, Exception) as error:
        _stopped(error, share, results, settings, images, processes)
    shares = processes.gather(share)
    if processes.is_first:
        status = finish(results, settings, images, shares)
        _summarize(shares, status, len(images) - len(todo), args)
    processes.barrier()  # the others wait for the merge: torchrun ends them all at once
    if processes.is_first and status.failed:
        first = status.failed[0]["image"]
        raise CliError(f"{len(status.failed)} of {status.images} images could not be read "
                       f"({first}{', ...' if len(status.failed) > 1 else ''}); the others are "
                       f"explained in {args.out}, marked incomplete: fix or remove those "
                       "files and run the same command again to finish.")


def _stopped(error: BaseException, share: Share, results: ResultsFolder,
             settings: Dict[str, object], images: Sequence[str], processes: Processes) -> None:
    r"""Ends a run stopped midway by Ctrl-C (exit status 130) or an error
    (raised again). One process marks the output incomplete, with the reason;
    one of several cannot (the others may be gone): the manifest already
    says incomplete, and the next run merges the shards."""
    interrupted = isinstance(error, KeyboardInterrupt)
    share.stopped = ("interrupted (Ctrl-C)" if interrupted else
                     f"stopped by {type(error).__name__}: {_first_line(error)}")
    if not processes.distributed:
        finish(results, settings, images, [share])
    if not interrupted:
        raise error
    raise KeyboardInterrupt(f"{share.stopped}; the results so far are in {results.out}, "
                            "marked incomplete: run the same command again to resume.") from None


def explain_share(job: Job, share: Sequence[int], stems: Sequence[str], writer: RowWriter,
                  args: argparse.Namespace, processes: Processes, done: Share) -> None:
    r"""Explains the images ``share`` (indices into ``job.files``) one at a
    time, appending each one's rows as it is done, and counts in ``done``."""
    label = "Images" + (f" (process {processes.rank} of {processes.world})"
                        if processes.distributed else "")
    for index in tqdm(share, desc=label, unit="image",
                      disable=args.quiet or not processes.is_first):
        rows = explain_file(job, job.files[index], stems[index], args, done)
        if rows:
            writer.append(rows)
            done.explained += 1
            _print_image(rows[0])


def explain_file(job: Job, path: Path, stem: str, args: argparse.Namespace,
                 done: Share) -> List[Dict[str, object]]:
    r"""The rows of one image file, or none for a file that cannot be read
    (told on stderr and recorded in ``done``: the run goes on)."""
    try:
        crop = job.preprocessing.crop(read_image(path))
    except ValueError as error:
        done.failed.append({"image": str(path), "error": str(error)})
        tqdm.write(f"captum-xcam: warning: {error}; it gets no rows, and the run stays "
                   "incomplete (a rerun retries it).", file=sys.stderr)
        return []
    figure = None if args.no_figures else args.out / f"{stem}.png"
    return explain_image(job, path, crop, figure, args)


def finish(results: ResultsFolder, settings: Dict[str, object], images: Sequence[str],
           shares: Sequence[Share]) -> Status:
    r"""Merges every process's rows in the order of ``images`` and writes the
    report and the manifest, complete or with the reason it is not."""
    done = results.merge(images)
    stopped = [share.stopped for share in shares if share.stopped]
    status = Status(len(images), sum(image in done for image in images),
                    [failure for share in shares for failure in share.failed])
    if stopped:
        status.reason = f"{stopped[0]}; run the same command again to resume"
    elif status.failed:
        status.reason = (f"{len(status.failed)} images could not be read; fix or remove "
                         "them and run the same command again to retry them")
    elif status.explained < status.images:
        status.reason = (f"{status.images - status.explained} images are not explained; "
                         "run the same command again to resume")
    results.finish(settings, status)
    return status


def _print_image(first: Dict[str, object]) -> None:
    name = f" ({first['target_name']})" if first["target_name"] else ""
    figure = f", figure {first['figure']}" if first["figure"] else ""
    tqdm.write(f"{first['image']}: target {first['target']}{name}, probability "
               f"{first['score']:.3f}{figure}")


def _summarize(shares: Sequence[Share], status: Status, done_before: int,
               args: argparse.Namespace) -> None:
    explained = sum(share.explained for share in shares)
    before = f" ({done_before} done before)" if done_before else ""
    figures = "" if args.no_figures else f"{explained} figures and "
    print(f"Explained {explained} images{before}, {status.explained} of {status.images} "
          f"in all; wrote {figures}explanations.csv, .json to {args.out}")


def prepare(args: argparse.Namespace, processes: Processes) -> Job:
    r"""Checks every input, cheapest first, and loads the model and the
    first image (the others are read one at a time as they are explained)."""
    methods = parse_methods(args.methods)
    device = processes.device(_device(args.device))
    if args.image_size is not None and args.image_size < 16:
        raise CliError(f"--image-size must be at least 16, got {args.image_size}.")
    source = model_source(args)
    try:
        layer_name = args.layer or source.known_layer()
        files = _outside(find_images(args.images), args.out)
        preprocessing = source.preprocessing(args.image_size)
        first_crop = preprocessing.crop(read_image(files[0]))
        model = source.load(args.checkpoint, args.num_classes)
    except (ValueError, FileNotFoundError) as error:
        raise CliError(str(error)) from None
    if source.random_weights and processes.is_first:
        print(f"captum-xcam: warning: {args.model} has random weights (--weights none): "
              "its explanations are meaningless.", file=sys.stderr)
    model = model.to(device)
    first = preprocessing.normalize(first_crop).unsqueeze(0).to(device)
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
    return Job(files, model, layer, layer_name, preprocessing, categories, target,
               num_outputs, methods, device, source.weights_label, transform)


def _outside(files: List[Path], out: Path) -> List[Path]:
    r"""``files`` but those in the output folder: the figures of an earlier
    run into a folder inside the images' folder are not images to explain."""
    out = Path(out).resolve()
    kept = [path for path in files if not path.resolve().is_relative_to(out)]
    if not kept:
        raise ValueError(f"No images outside the output folder {out}.")
    return kept


def explain_image(job: Job, path: Path, crop: Tensor, figure_path: Optional[Path],
                  args: argparse.Namespace) -> List[Dict[str, object]]:
    r"""Every method's map of one image, its figure (none without
    ``figure_path``), and its table rows."""
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
    if figure_path is not None:
        with _library_warnings(job, f"the figure of {path.name}"):
            figure = visualize_attributions(
                crop.unsqueeze(0), maps, targets=[target], scores=[probabilities[target]],
                class_names=job.categories, guided=guided, image_titles=[path.name],
            )
        figure.savefig(figure_path, dpi=100)
    return [{
        "image": str(path),
        "figure": figure_path.name if figure_path is not None else "",
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
    r"""The settings of a run: the runs that fill one ``--out`` must agree on
    them, but for the device (:data:`captum_xcam.cli.results.MAY_DIFFER`)."""
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
        "num_classes": job.num_outputs,
        "figures": not args.no_figures,
        "device": str(job.device),
    }
