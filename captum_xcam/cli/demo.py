r"""``captum-xcam demo``: every method on the SmallCNN shipped in the package and
generated images, with the comparison figure and the metrics table. Offline,
and quick on a laptop CPU: the newcomer's first command."""
import argparse
from pathlib import Path
from typing import Dict

import torch
from tqdm.auto import tqdm

from captum_xcam import list_methods
from captum_xcam.cli.errors import CliError
from captum_xcam.cli.methods import attribute, parse_methods
from captum_xcam.cli.output import staged_output, write_csv, write_json
from captum_xcam.data import make_synthetic
from captum_xcam.metrics.report import map_metrics, markdown_table, mean_rows
from captum_xcam.models import load_pretrained
from captum_xcam.visualization import visualize_attributions

POINTING_TOLERANCE = 4  # pixels at 64 x 64, about the paper's 15 at 224 x 224
PIXELS_PER_STEP = 128  # deletion and insertion in 32 steps of 1/32 of the image
FOOTNOTE = (
    "Means over images; ↑ higher is better, ↓ lower is better. Pointing game: the map's "
    "maximum within {tolerance} px of the object. Energy pointing: the share of the map's "
    "energy inside the object's box. Average Drop and Increase in Confidence: the model's "
    "probability for the image masked by the map, against the whole image's. Deletion and "
    "insertion AUC: the probability as pixels are removed from the image (inserted into a "
    "blurred copy) in the map's order, {step} pixels at a time. ms / image: wall-clock time "
    "of the attribution. benchmarks/faithfulness.py measures more images and metrics."
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="every method on the shipped model and generated images (offline)",
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )
    parser.add_argument("--out", type=Path, default=Path("out/demo"),
                        help="output folder (default: out/demo)")
    parser.add_argument("--n-images", type=int, default=8,
                        help="images measured (default: 8)")
    parser.add_argument("--rows", type=int, default=4,
                        help="images shown in the figure (default: 4)")
    parser.add_argument("--seed", type=int, default=2024,
                        help="seed of the generated images (default: 2024; the model "
                             "was trained on seed 0)")
    parser.add_argument("--methods", default="all",
                        help=f"comma-separated, from {','.join(list_methods())} (default: all)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    methods = parse_methods(args.methods)
    if args.n_images < 1 or not 1 <= args.rows <= args.n_images:
        raise CliError("--n-images must be at least 1 and --rows between 1 and --n-images.")
    model = load_pretrained()
    data = make_synthetic(args.n_images, seed=args.seed)
    with torch.no_grad():
        probabilities = model(data.images).softmax(1)
    scores = probabilities[torch.arange(len(data)), data.labels]
    accuracy = float((probabilities.argmax(1) == data.labels).float().mean())

    shown: Dict[str, torch.Tensor] = {}
    per_image: Dict[str, Dict[str, torch.Tensor]] = {}
    for method in tqdm(methods, desc="Methods", disable=args.quiet):
        maps, seconds = attribute(method, model, model.cam_layer, data.images, data.labels)
        per_image[method.name] = map_metrics(
            model, data.images, maps, data.labels, masks=data.masks, boxes=data.boxes,
            tolerance=POINTING_TOLERANCE, step=PIXELS_PER_STEP,
        )
        per_image[method.name]["ms_per_image"] = torch.tensor(1000 * seconds / len(data))
        shown[method.name] = maps[: args.rows]
    table = mean_rows(per_image)

    setting = (
        f"The SmallCNN shipped with captum-xcam (`load_pretrained()`), CAM layer block4 "
        f"(8x8), on {len(data)} generated 64x64 images (`make_synthetic({len(data)}, "
        f"seed={args.seed})`); target: the true class; model accuracy "
        f"{100 * accuracy:.0f}%."
    )
    report = "\n\n".join([
        "# captum-xcam demo", setting, markdown_table(table),
        FOOTNOTE.format(tolerance=POINTING_TOLERANCE, step=PIXELS_PER_STEP),
    ]) + "\n"
    figure = visualize_attributions(
        data.images[: args.rows], shown, targets=data.labels[: args.rows],
        scores=scores[: args.rows], class_names=data.class_names,
        image_titles=[f"image {i}" for i in range(args.rows)],
    )
    with staged_output(args.out) as staging:
        figure.savefig(staging / "demo.png", dpi=100)
        write_csv(staging / "metrics.csv", [{"method": name, **row} for name, row in table.items()])
        write_json(staging / "metrics.json", {"setting": setting, "metrics": table})
        (staging / "metrics.md").write_text(report, encoding="utf-8")
    print(report)
    print(f"Wrote demo.png (the maps of {args.rows} images) and metrics.csv, .json, .md "
          f"to {args.out}")
