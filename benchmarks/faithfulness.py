r"""Faithfulness, localisation and axiom metrics of every method, with time per image.

On the synthetic shapes (default) with the SmallCNN shipped in the package,
where each image's deciding object is known, or on a folder of images with a
torchvision model (no ground truth: the localisation columns stay empty).

    python benchmarks/faithfulness.py                       # 128 synthetic images
    python benchmarks/faithfulness.py --n-images 32 --out /tmp/bench
    torchrun --nproc_per_node 2 benchmarks/faithfulness.py  # the same table, 2 processes
    python benchmarks/faithfulness.py --methods Grad-CAM hirescam "Guided Grad-CAM"
    python benchmarks/faithfulness.py --image-folder photos/ --model resnet18 --weights DEFAULT

Methods: every registered CAM (``captum_xcam.list_methods()``), the guided
variant of each (``GuidedLayerCam``), Integrated Gradients, Saliency and a
random map; ``--methods`` picks some by name (or a CAM by registry key).

Under ``torchrun`` (torch.distributed, gloo) the images are cut into batches of
``--batch-size``; process ``r`` of ``W`` takes batches ``r, r + W, ...``,
computes per-image values, and process 0 gathers them and writes the results.
Every random draw is seeded by the batch and method, and every batch is
computed the same way whichever process takes it, so the table is the same for
any number of processes (timings aside).

Writes ``faithfulness.md``, ``faithfulness.json``, ``faithfulness_curves.png``
and ``faithfulness_maps.png`` into ``--out`` (default benchmarks/results).
"""
import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from captum.attr import IntegratedGradients, Saliency  # noqa: E402
from captum.metrics import infidelity, sensitivity_max  # noqa: E402

from benchmarks.common import (  # noqa: E402
    RESULTS,
    BenchmarkMethod,
    Environment,
    FaithfulnessRow,
    benchmark_methods,
    ignore_captum_notes,
    per_example,
)
from captum_xcam import GuidedLayerCam  # noqa: E402
from captum_xcam.metrics import (  # noqa: E402
    axiom_errors,
    channel_ablation_scores,
    channel_shapley_values,
    expand_to_inputs,
    rank_correlation,
    square_removal,
    weights_from_maps,
)
from captum_xcam.metrics.report import COLUMNS, map_metrics, markdown_table  # noqa: E402

#: Rows per forward pass of the perturbation methods (perturbations_per_eval
#: counts them per example: it is this divided by the batch size).
ROWS_PER_PASS = 64
BatchValues = Dict[str, Dict[str, Tensor]]  # per method (and "_"), per-image values


# ----------------------------------------------------------------------------
# The methods


@dataclass
class Method:
    r"""One explanation method: ``explain(images, targets, indices)`` returns
    attributions (a CAM at layer resolution or an input-resolution map);
    ``per_channel(images, targets)`` (CAMs only) the per-channel maps
    ``w_k A_k`` before the sum, for the axioms and the channel weights."""

    name: str
    explain: Callable[[Tensor, Tensor, Tensor], Tensor]
    per_channel: Optional[Callable[[Tensor, Tensor], Tensor]] = None


def cam_method(method: BenchmarkMethod, model: nn.Module, layer: nn.Module) -> Method:
    explain = method.explainer(model, layer)
    return Method(
        method.name,
        lambda x, t, i: explain(x, t, relu_attributions=True),
        lambda x, t: explain(x, t, relu_attributions=False, attr_dim_summation=False),
    )


def guided_method(method: BenchmarkMethod, model: nn.Module, layer: nn.Module) -> Method:
    guided = GuidedLayerCam(model, layer, cam=method.info.cam)
    return Method(f"Guided {method.name}",
                  lambda x, t, i: guided.attribute(x, target=t, **method.kwargs))


def baseline_methods(model: nn.Module) -> List[Method]:
    r"""Methods that are not CAMs, for scale: Integrated Gradients, Saliency,
    and the floor, a random map."""
    integrated_gradients = IntegratedGradients(model)
    saliency = Saliency(model)
    return [
        Method("Integrated Gradients", lambda x, t, i: integrated_gradients.attribute(
            x, target=t, n_steps=50, internal_batch_size=256)),
        Method("Saliency", lambda x, t, i: saliency.attribute(x, target=t)),
        Method("Random map", random_maps),
    ]


def build_methods(model: nn.Module, layer: nn.Module, names: Optional[List[str]],
                  batch_size: int) -> List[Method]:
    r"""Every registered CAM, then their guided variants, then the baselines;
    only ``names`` (display names, or registry keys for the CAMs) if given."""
    cams = benchmark_methods(perturbation_kwargs={
        "perturbations_per_eval": per_example(ROWS_PER_PASS, batch_size)})
    methods = [cam_method(m, model, layer) for m in cams]
    methods += [guided_method(m, model, layer) for m in cams]
    methods += baseline_methods(model)
    return selected(methods, names) if names else methods


def selected(methods: List[Method], names: List[str]) -> List[Method]:
    by_name = {m.name: m for m in methods}
    keys = {m.key: m.name for m in benchmark_methods()}
    chosen = [keys.get(n, n) if n not in by_name else n for n in names]
    unknown = [n for n in chosen if n not in by_name]
    if unknown:
        raise SystemExit(f"Unknown methods {unknown}; choose from {list(by_name)}")
    return [by_name[n] for n in dict.fromkeys(chosen)]


def random_maps(images: Tensor, targets: Tensor, indices: Tensor) -> Tensor:
    r"""The floor: a uniform random map per image, drawn from the image's index
    (so it ignores the image, and its max-sensitivity is 0)."""
    maps = [
        torch.rand((1,) + tuple(images.shape[2:]), generator=torch.Generator().manual_seed(int(i)))
        for i in indices
    ]
    return torch.stack(maps).to(images.device)


# ----------------------------------------------------------------------------
# What is explained


@dataclass
class Task:
    r"""What is explained: the images, their targets, optional ground truth, and
    the model with its CAM layer."""

    images: Tensor
    targets: Tensor
    model: nn.Module
    layer: nn.Module
    description: str
    masks: Optional[Tensor] = None
    boxes: Optional[Tensor] = None
    head: Optional[Callable[[Tensor], Tensor]] = None
    class_names: Tuple[str, ...] = ()


def synthetic_task(args: argparse.Namespace) -> Task:
    from captum_xcam.data import make_synthetic
    from captum_xcam.models import load_pretrained

    data = make_synthetic(args.n_images, seed=args.seed)
    model = load_pretrained(args.device)
    return Task(
        data.images.to(args.device), data.labels.to(args.device), model, model.cam_layer,
        f"synthetic shapes, make_synthetic({args.n_images}, seed={args.seed}), 64x64; "
        "SmallCNN (load_pretrained), CAM layer block4 (8x8); target: the true class",
        masks=data.masks.to(args.device), boxes=data.boxes.to(args.device), head=model.head,
        class_names=data.class_names,
    )


def folder_task(args: argparse.Namespace) -> Task:
    from captum_xcam.data import find_images, read_image
    from captum_xcam.models import (
        Preprocessing,
        WeightsUnavailableError,
        default_cam_layer,
        get_weights,
        load_model,
    )

    try:
        files = find_images([args.image_folder])[: args.n_images]
        weights = None if args.weights.lower() == "none" else get_weights(args.model, args.weights)
        preprocessing = Preprocessing.for_weights(weights)
        images = torch.stack([preprocessing.normalize(preprocessing.crop(read_image(path)))
                              for path in files]).to(args.device)
        model = load_model(args.model, weights).to(args.device)
        layer = model.get_submodule(args.layer or default_cam_layer(args.model))
    except WeightsUnavailableError as error:
        raise SystemExit(f"{error}\nOr pass --weights none: random weights, meaningless "
                         "explanations.") from None
    except (ValueError, FileNotFoundError, AttributeError) as error:  # names, files
        raise SystemExit(str(error)) from None
    with torch.no_grad():
        targets = torch.cat([model(x).argmax(1) for x in images.split(16)])
    side = preprocessing.crop_size
    return Task(
        images, targets, model, layer,
        f"{len(files)} images from {args.image_folder}, {side}x{side}; torchvision "
        f"{args.model} (weights {args.weights}), CAM layer {args.layer or 'default'}; "
        "target: the predicted class; no ground truth, so no localisation columns",
    )


# ----------------------------------------------------------------------------
# One batch


def seed_for(args: argparse.Namespace, batch: int, method: int, purpose: int) -> int:
    return ((args.seed * 1_000_003 + batch) * 1_009 + method) * 17 + purpose


@dataclass
class Batch:
    r"""One batch of images with what every method's values share: the
    channel ablation scores (for the axioms), the two Shapley estimates
    (None without the SHAP column) and the layer's activations."""

    number: int
    indices: Tensor
    x: Tensor
    t: Tensor
    ablated: Tuple[Tensor, Tensor]
    shapley: Optional[Tensor] = None
    shapley_check: Optional[Tensor] = None
    activations: Optional[Tensor] = None


def prepare_batch(args: argparse.Namespace, task: Task, number: int, indices: Tensor) -> Batch:
    x, t = task.images[indices], task.targets[indices]
    ablated = channel_ablation_scores(task.model, task.layer, x, t,
                                      perturbations_per_eval=per_example(ROWS_PER_PASS, len(x)))
    batch = Batch(number, indices, x, t, ablated)
    if args.shapley_samples > 0:
        estimates = []
        for purpose in (1, 2):  # two independent estimates: the column's noise ceiling
            torch.manual_seed(seed_for(args, number, 0, purpose))
            estimates.append(channel_shapley_values(
                task.model, task.layer, x, t, n_samples=args.shapley_samples,
                perturbations_per_eval=65, layer_forward_func=task.head,
            ))
        batch.shapley, batch.shapley_check = estimates
        batch.activations = layer_activations(task.model, task.layer, x)
    return batch


def timed_attributions(method: Method, batch: Batch) -> Tuple[Tensor, Tensor]:
    r"""The method's attributions and their wall-clock time (1,)."""
    start = time.perf_counter()
    attributions = method.explain(batch.x, batch.t, batch.indices).detach()
    if attributions.device.type == "cuda":
        torch.cuda.synchronize()
    return attributions, torch.tensor([time.perf_counter() - start], dtype=torch.float64)


def map_values(args: argparse.Namespace, task: Task, batch: Batch,
               attributions: Tensor) -> Dict[str, Tensor]:
    r"""The metrics of the map itself: localisation, confidence, deletion and
    insertion (:func:`map_metrics`), and infidelity."""
    indices, x = batch.indices, batch.x
    values = map_metrics(
        task.model, x, attributions, batch.t,
        masks=None if task.masks is None else task.masks[indices],
        boxes=None if task.boxes is None else task.boxes[indices],
        tolerance=args.tolerance, step=args.step,
    )
    torch.manual_seed(seed_for(args, batch.number, 0, 3))  # the same squares for every method
    values["infidelity"] = infidelity(
        task.model, square_removal(args.square or x.shape[-1] // 4), x,
        expand_to_inputs(attributions, x), target=batch.t,
        n_perturb_samples=args.infidelity_samples, normalize=True,
    )
    return values


def max_sensitivity(args: argparse.Namespace, method: Method, batch: Batch) -> Tensor:
    torch.manual_seed(seed_for(args, batch.number, 0, 4))  # the same perturbations
    indices = batch.indices

    def explain(inputs: Tuple[Tensor, ...], target: Tensor) -> Tuple[Tensor]:
        repeats = inputs[0].shape[0] // len(indices)
        return (method.explain(inputs[0], target, indices.repeat_interleave(repeats)),)

    return sensitivity_max(explain, batch.x, target=batch.t, perturb_radius=args.perturb_radius,
                           n_perturb_samples=args.sensitivity_samples)


def channel_values(method: Method, batch: Batch) -> Dict[str, Tensor]:
    r"""A CAM's axiom errors and, with the SHAP column, the rank correlation
    of its channel weights with the Shapley values."""
    per_channel = method.per_channel(batch.x, batch.t)
    errors = axiom_errors(per_channel, *batch.ablated)
    values = {"conservation": errors.conservation, "sensitivity": errors.sensitivity}
    if batch.shapley is not None:
        weights = weights_from_maps(per_channel, batch.activations)
        values["shap_rho"] = rank_correlation(weights, batch.shapley)
    return values


def random_shap(args: argparse.Namespace, batch: Batch, m: int) -> Dict[str, Tensor]:
    r"""The SHAP column's floor: random normal channel weights."""
    weights = torch.randn(batch.shapley.shape, generator=torch.Generator().manual_seed(
        seed_for(args, batch.number, m, 5))).to(batch.shapley.device)
    return {"shap_rho": rank_correlation(weights, batch.shapley)}


def evaluate_method(args: argparse.Namespace, task: Task, method: Method, m: int,
                    batch: Batch) -> Dict[str, Tensor]:
    r"""Per-image values of every metric that ``method`` has, on ``batch``."""
    torch.manual_seed(seed_for(args, batch.number, m, 0))
    attributions, seconds = timed_attributions(method, batch)
    row = {"seconds": seconds, **map_values(args, task, batch, attributions)}
    if args.sensitivity_samples > 0:
        row["sensitivity_max"] = max_sensitivity(args, method, batch)
    if method.per_channel is not None:
        row.update(channel_values(method, batch))
    if method.name == "Random map" and batch.shapley is not None:
        row.update(random_shap(args, batch, m))
    keep = batch.indices < args.grid
    if bool(keep.any()):
        row["grid_map"] = maps_for_grid(attributions[keep], tuple(batch.x.shape[2:]))
    return {k: v.detach().float().cpu() for k, v in row.items()}


def evaluate_batch(args: argparse.Namespace, task: Task, methods: List[Method], number: int,
                   indices: Tensor) -> BatchValues:
    r"""Per-image values of every metric and method for one batch."""
    batch = prepare_batch(args, task, number, indices)
    results: BatchValues = {"_": {"index": indices.cpu()}}
    if batch.shapley is not None:
        results["_"]["shapley_self_rho"] = rank_correlation(
            batch.shapley_check, batch.shapley).float().cpu()
    for m, method in enumerate(methods, start=1):
        results[method.name] = evaluate_method(args, task, method, m, batch)
    return results


def layer_activations(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    seen: List[Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def maps_for_grid(attributions: Tensor, size: Tuple[int, ...]) -> Tensor:
    from captum_xcam.metrics import input_resolution_maps

    return input_resolution_maps(attributions, size)


# ----------------------------------------------------------------------------
# All batches


def gather(local: List[BatchValues]) -> List[BatchValues]:
    r"""Every process's batch results, on process 0 (all of them when alone)."""
    if not (dist.is_available() and dist.is_initialized()):
        return local
    everything: List[Optional[List]] = [None] * dist.get_world_size()
    dist.all_gather_object(everything, local)
    return [batch for part in everything for batch in part]


@dataclass
class Result:
    r"""The aggregated run: a row per method, the map grid's maps per method
    and the noise ceiling of the SHAP column (None without it)."""

    rows: List[FaithfulnessRow]
    grid: Dict[str, Tensor]
    shapley_self_rho: Optional[float] = None

    def to_json(self) -> Dict[str, object]:
        result: Dict[str, object] = {
            "table": {r.method: r.metrics for r in self.rows},
            "curves": {r.method: r.curves for r in self.rows},
        }
        if self.shapley_self_rho is not None:
            result["shapley_self_rho"] = self.shapley_self_rho
        return result


def method_row(name: str, batches: List[BatchValues], n_images: int) -> FaithfulnessRow:
    r"""One method's per-image values, concatenated in image order, as means."""
    values = [b[name] for b in batches]
    metrics = {}
    for key in COLUMNS:
        if key == "ms_per_image":
            metrics[key] = 1000 * sum(float(v["seconds"].sum()) for v in values) / n_images
        elif key in values[0]:
            metrics[key] = float(torch.cat([v[key] for v in values]).double().mean())
    curves = {curve: torch.cat([v[f"{curve}_curve"] for v in values]).double().mean(0).tolist()
              for curve in ("deletion", "insertion")}
    return FaithfulnessRow(name, metrics, curves)


def aggregate(batches: List[BatchValues], methods: List[Method], n_images: int) -> Result:
    r"""Every method's row, from the batches of every process."""
    batches = sorted(batches, key=lambda b: int(b["_"]["index"][0]))
    index = torch.cat([b["_"]["index"] for b in batches])
    assert torch.equal(index, torch.arange(n_images)), "batches missing or repeated"
    grid = {}
    for method in methods:
        grid_maps = [b[method.name]["grid_map"] for b in batches if "grid_map" in b[method.name]]
        if grid_maps:
            grid[method.name] = torch.cat(grid_maps)
    result = Result([method_row(m.name, batches, n_images) for m in methods], grid)
    if "shapley_self_rho" in batches[0]["_"]:
        result.shapley_self_rho = float(
            torch.cat([b["_"]["shapley_self_rho"] for b in batches]).double().mean())
    return result


# ----------------------------------------------------------------------------
# Reporting


def markdown(result: Result, config: Dict[str, object], env: Environment) -> str:
    lines = [
        "# Faithfulness benchmark",
        "",
        f"Data and model: {config['task']}.",
        f"Model accuracy on these images: {100 * config['accuracy']:.1f}%."
        if config.get("accuracy") is not None else "",
        "",
        f"Command: `{config['command']}` ({config['world_size']} process(es), "
        f"{config['device']}).",
        "",
        env.markdown(),
        "",
        markdown_table({r.method: r.metrics for r in result.rows}),
        "",
        "Settings: " + config["settings"] + ".",
    ]
    if result.shapley_self_rho is not None:
        lines.append(
            f"Noise ceiling of the SHAP column: two independent Shapley estimates of "
            f"{config['shapley_samples']} permutations agree with rank correlation "
            f"{result.shapley_self_rho:.3f}."
        )
    lines.append(
        "Means over images. ↑: higher is better, ↓: lower is better. "
        "— : not defined for the method (axioms and SHAP need channel weights) or "
        "no ground truth. Times are wall-clock per image for the attribution alone, "
        "on a shared machine: compare them within one run only."
    )
    return "\n".join(lines) + "\n"


def plot_curves(result: Result, out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, name in zip(axes, ("deletion", "insertion")):
        for row in result.rows:
            curve = row.curves[name]
            xs = torch.linspace(0, 1, len(curve))
            style = "--" if row.method.startswith("Guided") else ":" if row.method in (
                "Random map", "Saliency", "Integrated Gradients") else "-"
            ax.plot(xs, curve, style, label=row.method)
        ax.set_title(f"{name.capitalize()} (mean over images)")
        ax.set_xlabel("fraction of pixels " + ("removed" if name == "deletion" else "inserted"))
        ax.set_ylabel("probability of the target class")
    axes[1].legend(fontsize=6, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(out / "faithfulness_curves.png", dpi=110)
    plt.close(fig)


def plot_grid(grid: Dict[str, Tensor], task: Task, grid_images: Tensor, out: Path) -> None:
    r"""The images (with the object's outline) and every method's maps."""
    import matplotlib.pyplot as plt

    methods = list(grid)
    rows = grid_images.shape[0]
    fig, axes = plt.subplots(rows, len(methods) + 1, figsize=(1.3 * (len(methods) + 1), 1.4 * rows))
    axes = axes.reshape(rows, -1)
    shown = grid_images.cpu()
    low, high = shown.amin((1, 2, 3), keepdim=True), shown.amax((1, 2, 3), keepdim=True)
    shown = (shown - low) / (high - low)
    for r in range(rows):
        axes[r, 0].imshow(shown[r].permute(1, 2, 0))
        if task.masks is not None:
            axes[r, 0].contour(task.masks[r].cpu().float(), levels=[0.5], colors="w",
                               linewidths=0.6)
        for c, method in enumerate(methods, start=1):
            image = grid[method][r]
            if image.min() < 0:  # signed: zero in the middle of a diverging map
                bound = float(image.abs().max()) or 1.0
                axes[r, c].imshow(image, cmap="bwr", vmin=-bound, vmax=bound)
            else:
                axes[r, c].imshow(image, cmap="jet")
        for ax in axes[r]:
            ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].set_title("image", fontsize=6)
    for c, method in enumerate(methods, start=1):
        axes[0, c].set_title(method.replace("Guided ", "G. "), fontsize=6)
    fig.tight_layout()
    path = out / "faithfulness_maps.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    from PIL import Image  # a 256-colour palette: a third of the size, to commit

    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


def plot(result: Result, task: Task, grid_images: Tensor, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    plot_curves(result, out)
    if result.grid:
        plot_grid(result.grid, task, grid_images, out)


def settings(args: argparse.Namespace, task: Task) -> str:
    r"""The metric settings of a run, in words, for the table's footnote."""
    width = task.images.shape[-1]
    parts = [
        "CAMs ReLU'd and upsampled bilinearly",
        f"deletion (substrate zeros) and insertion (substrate blur, kernel 11, sigma 5) in "
        f"steps of {args.step or width} px, softmax probability",
    ]
    if task.masks is not None:
        parts.append(f"pointing tolerance {args.tolerance:g} px on the object mask; energy "
                     "pointing on the box")
    parts.append(f"infidelity: Captum's, normalized, {args.infidelity_samples} square removals "
                 f"of side {args.square or width // 4} px (to 0; logit)")
    if args.sensitivity_samples > 0:
        parts.append(f"max-sensitivity: Captum's, {args.sensitivity_samples} samples, radius "
                     f"{args.perturb_radius:g}")
    parts.append("axioms on the logit with the pre-ReLU map")
    if args.shapley_samples > 0:
        parts.append(f"SHAP: Spearman correlation of channel weights with channel Shapley "
                     f"values ({args.shapley_samples} permutations, Captum's "
                     "ShapleyValueSampling)")
    parts.append("random map floor: uniform noise per pixel"
                 + (", random normal channel weights for SHAP" if args.shapley_samples > 0 else ""))
    return "; ".join(parts)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-images", type=int, default=128)
    parser.add_argument("--seed", type=int, default=2024, help="data seed (synthetic)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--methods", nargs="*",
                        help="subset of methods, by name (a CAM also by registry key)")
    parser.add_argument("--step", type=int, default=None,
                        help="pixels per deletion/insertion step (default: image width)")
    parser.add_argument("--tolerance", type=float, default=4.0,
                        help="pointing-game tolerance in pixels (15 at 224 px ~ 4 at 64 px)")
    parser.add_argument("--shapley-samples", type=int, default=64,
                        help="permutations per Shapley estimate (0: no SHAP column)")
    parser.add_argument("--infidelity-samples", type=int, default=16)
    parser.add_argument("--square", type=int, default=None,
                        help="side of infidelity's removed squares (default: image width / 4)")
    parser.add_argument("--sensitivity-samples", type=int, default=3,
                        help="perturbations for max-sensitivity (0: no column)")
    parser.add_argument("--perturb-radius", type=float, default=0.02)
    parser.add_argument("--grid", type=int, default=4, help="images in the map grid (0: none)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--image-folder", type=Path, help="explain these images instead")
    parser.add_argument("--model", default="resnet18", help="torchvision model (image folder)")
    parser.add_argument("--weights", default="DEFAULT",
                        help="torchvision weights name, DEFAULT, or none (image folder)")
    parser.add_argument("--layer", default=None, help="dotted name of the CAM layer")
    return parser.parse_args(argv)


def start_processes() -> Tuple[bool, int, int]:
    r"""Whether this is one of several processes (``torchrun``), its rank and
    the number of processes."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not distributed:
        return False, 0, 1
    dist.init_process_group("gloo")
    return True, dist.get_rank(), dist.get_world_size()


def evaluate_share(args: argparse.Namespace, task: Task, methods: List[Method], rank: int,
                   world: int) -> List[BatchValues]:
    r"""This process's batches: ``rank, rank + world, ...``."""
    n = task.images.shape[0]
    batches = list(torch.arange(n, device=task.images.device).split(args.batch_size))
    local = []
    for b in range(rank, len(batches), world):
        local.append(evaluate_batch(args, task, methods, b, batches[b]))
        if rank == 0:
            print(f"batch {b + 1}/{len(batches)} done", flush=True)
    return local


def run_config(args: argparse.Namespace, task: Task, world: int,
               distributed: bool) -> Dict[str, object]:
    with torch.no_grad():
        predictions = torch.cat([task.model(x).argmax(1) for x in task.images.split(64)])
    accuracy = None if args.image_folder else float((predictions == task.targets).float().mean())
    launcher = ["torchrun --nproc_per_node", str(world)] if distributed else ["python"]
    return {
        "task": task.description,
        "accuracy": accuracy,
        "command": " ".join(launcher) + " " + " ".join(sys.argv),
        "world_size": world,
        "threads": args.threads,
        "device": args.device,
        "shapley_samples": args.shapley_samples,
        "settings": settings(args, task),
    }


def write_results(args: argparse.Namespace, task: Task, result: Result,
                  config: Dict[str, object], env: Environment) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faithfulness.md").write_text(markdown(result, config, env))
    (args.out / "faithfulness.json").write_text(json.dumps(
        {"config": config, "environment": env.to_json(), **result.to_json()}, indent=1))
    if not args.no_plots:
        grid_images = task.images[: args.grid] if args.grid else task.images[:0]
        plot(result, task, grid_images, args.out)
    print((args.out / "faithfulness.md").read_text())


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    ignore_captum_notes()
    torch.set_num_threads(args.threads)
    distributed, rank, world = start_processes()
    try:
        task = folder_task(args) if args.image_folder else synthetic_task(args)
        if args.image_folder:
            args.shapley_samples = 0  # needs the model after the layer; see README
        methods = build_methods(task.model, task.layer, args.methods, args.batch_size)
        everything = gather(evaluate_share(args, task, methods, rank, world))
        if rank != 0:
            return
        result = aggregate(everything, methods, task.images.shape[0])
        config = run_config(args, task, world, distributed)
        write_results(args, task, result, config, Environment.capture(torch.device(args.device)))
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
