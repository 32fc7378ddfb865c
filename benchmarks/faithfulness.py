r"""Faithfulness, localisation and axiom metrics of every method, with time per image.

On the synthetic shapes (default) with the SmallCNN shipped in the package,
where each image's deciding object is known, or on a folder of images with a
torchvision model (no ground truth: the localisation columns stay empty).

    python benchmarks/faithfulness.py                       # 128 synthetic images
    python benchmarks/faithfulness.py --n-images 32 --out /tmp/bench
    torchrun --nproc_per_node 2 benchmarks/faithfulness.py  # the same table, 2 processes
    python benchmarks/faithfulness.py --image-folder photos/ --model resnet18 --weights DEFAULT

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
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from captum.attr import GuidedGradCam, IntegratedGradients, LayerGradCam, Saliency  # noqa: E402
from captum.metrics import infidelity, sensitivity_max  # noqa: E402

from captum_xcam import (  # noqa: E402
    GuidedLayerCam,
    LayerAblationCam,
    LayerGradCamPlusPlus,
    LayerLiftCam,
    LayerScoreCam,
    LayerXGradCam,
)
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

RESULTS = Path(__file__).resolve().parent / "results"

@dataclass
class Method:
    r"""One explanation method: ``explain(images, targets, indices)`` returns
    attributions (a CAM at layer resolution or an input-resolution map);
    ``cam`` (CAM methods only) gives the per-channel maps for the axioms and
    the channel weights."""

    name: str
    explain: Callable[[Tensor, Tensor, Tensor], Tensor]
    cam: Optional[object] = None
    cam_kwargs: Dict[str, object] = field(default_factory=dict)


def build_methods(model: nn.Module, layer: nn.Module, names: Optional[List[str]]) -> List[Method]:
    perturbation_kwargs = {"perturbations_per_eval": 64}
    cams = [
        ("Grad-CAM (Captum)", LayerGradCam, {}),
        ("XGrad-CAM", LayerXGradCam, {}),
        ("Grad-CAM++", LayerGradCamPlusPlus, {}),
        ("Ablation-CAM", LayerAblationCam, perturbation_kwargs),
        ("Score-CAM", LayerScoreCam, perturbation_kwargs),
        ("LIFT-CAM", LayerLiftCam, {}),
    ]
    methods = []
    for name, cls, kwargs in cams:
        cam = cls(model, layer)
        methods.append(Method(
            name,
            lambda x, t, i, cam=cam, kw=kwargs: cam.attribute(
                x, target=t, relu_attributions=True, **kw
            ),
            cam,
            kwargs,
        ))
    guided_captum = GuidedGradCam(model, layer)
    methods.append(Method("Guided Grad-CAM (Captum)",
                          lambda x, t, i: guided_captum.attribute(x, target=t)))
    for name, cls, kwargs in cams[1:]:
        guided = GuidedLayerCam(model, layer, cam=cls)
        methods.append(Method(
            f"Guided {name}",
            lambda x, t, i, g=guided, kw=kwargs: g.attribute(x, target=t, **kw),
        ))
    integrated_gradients = IntegratedGradients(model)
    methods.append(Method(
        "Integrated Gradients",
        lambda x, t, i: integrated_gradients.attribute(
            x, target=t, n_steps=50, internal_batch_size=256
        ),
    ))
    saliency = Saliency(model)
    methods.append(Method("Saliency", lambda x, t, i: saliency.attribute(x, target=t)))
    methods.append(Method("Random map", random_maps))
    if names:
        unknown = set(names) - {m.name for m in methods}
        if unknown:
            raise SystemExit(f"Unknown methods {sorted(unknown)}; choose from "
                             f"{[m.name for m in methods]}")
        methods = [m for m in methods if m.name in names]
    return methods


def random_maps(images: Tensor, targets: Tensor, indices: Tensor) -> Tensor:
    r"""The floor: a uniform random map per image, drawn from the image's index
    (so it ignores the image, and its max-sensitivity is 0)."""
    maps = [
        torch.rand((1,) + tuple(images.shape[2:]), generator=torch.Generator().manual_seed(int(i)))
        for i in indices
    ]
    return torch.stack(maps).to(images.device)


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


def seed_for(args: argparse.Namespace, batch: int, method: int, purpose: int) -> int:
    return ((args.seed * 1_000_003 + batch) * 1_009 + method) * 17 + purpose


def evaluate_batch(
    args: argparse.Namespace, task: Task, methods: List[Method], batch: int, indices: Tensor
) -> Dict[str, Dict[str, Tensor]]:
    r"""Per-image values of every metric and method for one batch."""
    x, t = task.images[indices], task.targets[indices]
    model, layer = task.model, task.layer
    size = tuple(x.shape[2:])
    results: Dict[str, Dict[str, Tensor]] = {"_": {"index": indices.cpu()}}
    ablated = channel_ablation_scores(model, layer, x, t, perturbations_per_eval=64)
    activations = None
    shapley = shapley_check = None
    if args.shapley_samples > 0:
        torch.manual_seed(seed_for(args, batch, 0, 1))
        shapley = channel_shapley_values(
            model, layer, x, t, n_samples=args.shapley_samples, perturbations_per_eval=65,
            layer_forward_func=task.head,
        )
        torch.manual_seed(seed_for(args, batch, 0, 2))
        shapley_check = channel_shapley_values(
            model, layer, x, t, n_samples=args.shapley_samples, perturbations_per_eval=65,
            layer_forward_func=task.head,
        )
        results["_"]["shapley_self_rho"] = rank_correlation(shapley_check, shapley).float().cpu()
    for m, method in enumerate(methods, start=1):
        torch.manual_seed(seed_for(args, batch, m, 0))
        start = time.perf_counter()
        attributions = method.explain(x, t, indices).detach()
        if attributions.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        row: Dict[str, Tensor] = {"seconds": torch.tensor([elapsed], dtype=torch.float64)}
        row.update(map_metrics(
            model, x, attributions, t,
            masks=None if task.masks is None else task.masks[indices],
            boxes=None if task.boxes is None else task.boxes[indices],
            tolerance=args.tolerance, step=args.step,
        ))
        torch.manual_seed(seed_for(args, batch, 0, 3))  # the same squares for every method
        row["infidelity"] = infidelity(
            model, square_removal(args.square or size[-1] // 4), x,
            expand_to_inputs(attributions, x), target=t,
            n_perturb_samples=args.infidelity_samples, normalize=True,
        )
        if args.sensitivity_samples > 0:
            torch.manual_seed(seed_for(args, batch, 0, 4))  # the same perturbations
            row["sensitivity_max"] = sensitivity_max(
                lambda inputs, target, method=method: (
                    method.explain(inputs[0], target, indices.repeat_interleave(
                        inputs[0].shape[0] // len(indices))),
                ),
                x, target=t, perturb_radius=args.perturb_radius,
                n_perturb_samples=args.sensitivity_samples,
            )
        if method.cam is not None:
            per_channel = method.cam.attribute(x, target=t, relu_attributions=False,
                                               attr_dim_summation=False, **method.cam_kwargs)
            errors = axiom_errors(per_channel, *ablated)
            row["conservation"], row["sensitivity"] = errors.conservation, errors.sensitivity
            if shapley is not None:
                if activations is None:
                    activations = layer_activations(model, layer, x)
                weights = weights_from_maps(per_channel, activations)
                row["shap_rho"] = rank_correlation(weights, shapley)
        if method.name == "Random map" and shapley is not None:
            weights = torch.randn(shapley.shape, generator=torch.Generator().manual_seed(
                seed_for(args, batch, m, 5))).to(shapley.device)
            row["shap_rho"] = rank_correlation(weights, shapley)
        if args.grid and bool((indices < args.grid).any()):
            keep = indices < args.grid
            row["grid_map"] = maps_for_grid(attributions[keep], size)
        results[method.name] = {k: v.detach().float().cpu() for k, v in row.items()}
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


def gather(local: List[Dict[str, Dict[str, Tensor]]]) -> List[Dict[str, Dict[str, Tensor]]]:
    r"""Every process's batch results, on process 0 (all of them when alone)."""
    if not (dist.is_available() and dist.is_initialized()):
        return local
    everything: List[Optional[List]] = [None] * dist.get_world_size()
    dist.all_gather_object(everything, local)
    return [batch for part in everything for batch in part]


def aggregate(batches: List[Dict[str, Dict[str, Tensor]]], methods: List[Method],
              n_images: int) -> Dict[str, object]:
    r"""Concatenates per-image values in image order and averages them."""
    batches = sorted(batches, key=lambda b: int(b["_"]["index"][0]))
    index = torch.cat([b["_"]["index"] for b in batches])
    assert torch.equal(index, torch.arange(n_images)), "batches missing or repeated"
    table: Dict[str, Dict[str, float]] = {}
    curves: Dict[str, Dict[str, List[float]]] = {}
    grid: Dict[str, Tensor] = {}
    for method in methods:
        rows = [b[method.name] for b in batches]
        entry = {}
        for key in COLUMNS:
            if key == "ms_per_image":
                seconds = sum(float(r["seconds"].sum()) for r in rows)
                entry[key] = 1000 * seconds / n_images
            elif key in rows[0]:
                entry[key] = float(torch.cat([r[key] for r in rows]).double().mean())
        table[method.name] = entry
        curves[method.name] = {
            name: torch.cat([r[f"{name}_curve"] for r in rows]).double().mean(0).tolist()
            for name in ("deletion", "insertion")
        }
        grid_maps = [r["grid_map"] for r in rows if "grid_map" in r]
        if grid_maps:
            grid[method.name] = torch.cat(grid_maps)
    result: Dict[str, object] = {"table": table, "curves": curves, "grid": grid}
    if "shapley_self_rho" in batches[0]["_"]:
        result["shapley_self_rho"] = float(
            torch.cat([b["_"]["shapley_self_rho"] for b in batches]).double().mean()
        )
    return result


def markdown(result: Dict[str, object], config: Dict[str, object]) -> str:
    lines = [
        "# Faithfulness benchmark",
        "",
        f"Data and model: {config['task']}.",
        f"Model accuracy on these images: {100 * config['accuracy']:.1f}%."
        if config.get("accuracy") is not None else "",
        "",
        f"Command: `{config['command']}` ({config['world_size']} process(es), "
        f"{config['threads']} thread(s) each, {config['device']}; torch {config['torch']}, "
        f"captum {config['captum']}; {config['machine']}).",
        "",
        markdown_table(result["table"]),
        "",
        "Settings: " + config["settings"] + ".",
    ]
    if "shapley_self_rho" in result:
        lines.append(
            f"Noise ceiling of the SHAP column: two independent Shapley estimates of "
            f"{config['shapley_samples']} permutations agree with rank correlation "
            f"{result['shapley_self_rho']:.3f}."
        )
    lines.append(
        "Means over images. ↑: higher is better, ↓: lower is better. "
        "— : not defined for the method (axioms and SHAP need channel weights) or "
        "no ground truth. Times are wall-clock per image for the attribution alone, "
        "on a shared machine: compare them within one run only."
    )
    return "\n".join(line for line in lines if line is not None) + "\n"


def plot(result: Dict[str, object], task: Task, grid_images: Tensor, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = result["curves"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, name in zip(axes, ("deletion", "insertion")):
        for method, curve in curves.items():
            xs = torch.linspace(0, 1, len(curve[name]))
            style = "--" if method.startswith("Guided") else ":" if method in (
                "Random map", "Saliency", "Integrated Gradients") else "-"
            ax.plot(xs, curve[name], style, label=method)
        ax.set_title(f"{name.capitalize()} (mean over images)")
        ax.set_xlabel("fraction of pixels " + ("removed" if name == "deletion" else "inserted"))
        ax.set_ylabel("probability of the target class")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "faithfulness_curves.png", dpi=110)
    plt.close(fig)

    grid: Dict[str, Tensor] = result["grid"]
    if not grid:
        return
    methods = list(grid)
    rows = grid_images.shape[0]
    fig, axes = plt.subplots(rows, len(methods) + 1, figsize=(1.3 * (len(methods) + 1), 1.4 * rows))
    axes = axes.reshape(rows, -1)
    shown = grid_images.cpu()
    shown = (shown - shown.amin((1, 2, 3), keepdim=True)) / (
        shown.amax((1, 2, 3), keepdim=True) - shown.amin((1, 2, 3), keepdim=True)
    )
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
        axes[0, c].set_title(method.replace(" (Captum)", "*").replace("Guided ", "G. "), fontsize=6)
    fig.tight_layout()
    path = out / "faithfulness_maps.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    from PIL import Image  # a 256-colour palette: a third of the size, to commit

    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


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
    parser.add_argument("--methods", nargs="*", help="subset of methods, by name")
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


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    # Captum's notes on every call (inputs set to require grad, hooks set): noise here.
    warnings.filterwarnings("ignore", message=".*did not already require gradients")
    warnings.filterwarnings("ignore", message=".*Setting forward, backward hooks")
    torch.set_num_threads(args.threads)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    try:
        task = folder_task(args) if args.image_folder else synthetic_task(args)
        if args.image_folder:
            args.shapley_samples = 0  # needs the model after the layer; see README
        methods = build_methods(task.model, task.layer, args.methods)
        n = task.images.shape[0]
        batches = list(torch.arange(n, device=task.images.device).split(args.batch_size))
        local = []
        for b in range(rank, len(batches), world):
            local.append(evaluate_batch(args, task, methods, b, batches[b]))
            if rank == 0:
                print(f"batch {b + 1}/{len(batches)} done", flush=True)
        everything = gather(local)
        if rank != 0:
            return
        result = aggregate(everything, methods, n)
        with torch.no_grad():
            predictions = torch.cat([task.model(x).argmax(1) for x in task.images.split(64)])
        accuracy = (None if args.image_folder
                    else float((predictions == task.targets).float().mean()))
        config = {
            "task": task.description,
            "accuracy": accuracy,
            "command": " ".join(["torchrun --nproc_per_node", str(world)] if distributed
                                else ["python"]) + " " + " ".join(sys.argv),
            "world_size": world,
            "threads": args.threads,
            "device": args.device,
            "torch": torch.__version__,
            "captum": __import__("captum").__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "shapley_samples": args.shapley_samples,
            "settings": settings(args, task),
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "faithfulness.md").write_text(markdown(result, config))
        serializable = {k: v for k, v in result.items() if k != "grid"}
        (args.out / "faithfulness.json").write_text(
            json.dumps({"config": config, **serializable}, indent=1)
        )
        if not args.no_plots:
            grid_images = task.images[: args.grid] if args.grid else task.images[:0]
            plot(result, task, grid_images, args.out)
        print((args.out / "faithfulness.md").read_text())
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
