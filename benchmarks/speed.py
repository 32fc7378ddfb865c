r"""Speed and memory of captum-xcam's CAMs beside the peers, in one process, on
the same models and inputs.

    python benchmarks/speed.py            # CPU: ResNet-50 and VGG-16, 224x224, batch 1 and 16
    python benchmarks/speed.py --device cuda
    python benchmarks/speed.py --quick --out /tmp/speed   # a smoke run on ResNet-18

Methods: ours, Captum's ``LayerGradCam``, torchcam and pytorch-grad-cam (the
``bench`` extra: ``pip install -e ".[bench]"``; a missing peer is skipped with
a note), and two units: a plain forward pass and one with autograd recording.
For each case the table gives the median time, the time in forward passes,
the speed-up over each peer of the same method, the peak memory beyond what
the model and the inputs hold, and the largest difference between our map and
the peer's, both normalised to [0, 1] per image (with the peer's own
post-processing applied to ours where it only returns processed maps).

Models have random weights (``torch.manual_seed(0)``): nothing is downloaded.
Methods that take minutes per image (Score-CAM, pytorch-grad-cam's
Ablation-CAM) run once per case, and not at all where the estimate from
batch 1 exceeds ``--max-seconds``; the table says so.

Writes ``speed.md`` and ``speed.json`` into ``--out`` (default
benchmarks/results).
"""

import argparse
import contextlib
import ctypes
import io
import json
import platform
import re
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torchvision
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import captum  # noqa: E402
from captum.attr import LayerGradCam  # noqa: E402

import captum_xcam  # noqa: E402
from captum_xcam import (  # noqa: E402
    LayerAblationCam,
    LayerGradCamPlusPlus,
    LayerLiftCam,
    LayerScoreCam,
    LayerXGradCam,
)

RESULTS = Path(__file__).resolve().parent / "results"
OURS, CAPTUM, TORCHCAM, PGC = "captum-xcam", "Captum", "torchcam", "pytorch-grad-cam"
LAYERS = {"resnet50": "layer4", "vgg16": "features", "resnet18": "layer4"}
GRADIENT_FAMILY = ("XGrad-CAM", "Grad-CAM++", "LIFT-CAM")


@dataclass
class Case:
    r"""One model, layer and batch of images, with the predicted classes as targets."""

    model_name: str
    batch: int
    size: int
    device: torch.device
    model: nn.Module = field(repr=False)
    layer: nn.Module = field(repr=False)
    images: Tensor = field(repr=False)
    targets: List[int] = field(repr=False)

    @property
    def name(self) -> str:
        return f"{self.model_name} {LAYERS[self.model_name]}, batch {self.batch}"


@dataclass
class Method:
    r"""A way to get a CAM. ``run`` returns maps (N, h, w), or None for the units;
    ``same_formula`` tells whether its map should equal ours; ``processed`` that
    it returns pytorch-grad-cam's upsampled, normalised maps."""

    family: str
    library: str
    run: Callable[[Case], Optional[object]]
    slow: bool = False
    same_formula: bool = True
    processed: bool = False
    label: str = ""

    @property
    def name(self) -> str:
        return f"{self.family} ({self.label or self.library})"


# ----------------------------------------------------------------------------
# The methods


def ours(cls: type, **kwargs: object) -> Callable[[Case], Tensor]:
    def run(case: Case) -> Tensor:
        cam = cls(case.model, case.layer)
        return cam.attribute(case.images, target=case.targets, relu_attributions=True, **kwargs)[
            :, 0
        ]

    return run


def ours_channels_last(cls: type, **kwargs: object) -> Callable[[Case], Tensor]:
    def run(case: Case) -> Tensor:
        images = case.images.contiguous(memory_format=torch.channels_last)
        cam = cls(case.model, case.layer)
        return cam.attribute(images, target=case.targets, relu_attributions=True, **kwargs)[:, 0]

    return run


def plain_forward(case: Case) -> None:
    with torch.no_grad():
        case.model(case.images)


def forward_with_autograd(case: Case) -> None:
    case.model(case.images)


def captum_grad_cam(case: Case) -> Tensor:
    cam = LayerGradCam(case.model, case.layer)
    return cam.attribute(case.images, target=case.targets, relu_attributions=True)[:, 0]


def torchcam_method(name: str, **kwargs: object) -> Callable[[Case], Tensor]:
    def run(case: Case) -> Tensor:
        from torchcam import methods

        gradient = name != "ScoreCAM"
        with getattr(methods, name)(case.model, case.layer, **kwargs) as extractor:
            with torch.set_grad_enabled(gradient):
                scores = case.model(case.images)
            maps = extractor(class_idx=case.targets, scores=scores, normalized=False)[0]
        case.model.zero_grad(set_to_none=True)
        return maps

    return run


def pgc_method(name: str, **kwargs: object) -> Callable[[Case], np.ndarray]:
    def run(case: Case) -> np.ndarray:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = [ClassifierOutputTarget(t) for t in case.targets]
        with getattr(pytorch_grad_cam, name)(case.model, [case.layer], **kwargs) as cam:
            maps = cam(input_tensor=case.images, targets=targets)
        case.model.zero_grad(set_to_none=True)  # it backpropagates into every parameter
        return maps

    return run


def methods(available: Dict[str, bool]) -> List[Method]:
    listed = [
        Method("forward", "unit", plain_forward, label="plain, no autograd"),
        Method("forward", "unit", forward_with_autograd, label="with autograd"),
        Method("Grad-CAM", CAPTUM, captum_grad_cam),
        Method("Grad-CAM", TORCHCAM, torchcam_method("GradCAM")),
        Method("Grad-CAM", PGC, pgc_method("GradCAM"), processed=True),
        Method("XGrad-CAM", OURS, ours(LayerXGradCam)),
        Method("XGrad-CAM", TORCHCAM, torchcam_method("XGradCAM")),
        Method("XGrad-CAM", PGC, pgc_method("XGradCAM"), processed=True),
        Method("Grad-CAM++", OURS, ours(LayerGradCamPlusPlus)),
        # torchcam divides by sum(A G^3) per channel, not the paper's (sum A) G^3.
        Method("Grad-CAM++", TORCHCAM, torchcam_method("GradCAMpp"), same_formula=False),
        Method("Grad-CAM++", PGC, pgc_method("GradCAMPlusPlus"), processed=True),
        Method("LIFT-CAM", OURS, ours(LayerLiftCam)),
        # perturbations_per_eval as pytorch-grad-cam's AblationCAM batch_size.
        Method("Ablation-CAM", OURS, ours(LayerAblationCam, perturbations_per_eval=32)),
        Method("Ablation-CAM", PGC, pgc_method("AblationCAM"), slow=True, processed=True),
        # The peers softmax the weights over the channels and mask with zeros;
        # perturbations_per_eval 16 as pytorch-grad-cam's ScoreCAM (torchcam: 32).
        Method("Score-CAM", OURS, ours(LayerScoreCam, channel_softmax=True), slow=True),
        Method(
            "Score-CAM",
            OURS,
            ours_channels_last(LayerScoreCam, channel_softmax=True),
            slow=True,
            label="captum-xcam, channels-last input",
        ),
        Method("Score-CAM", TORCHCAM, torchcam_method("ScoreCAM"), slow=True),
        Method("Score-CAM", PGC, pgc_method("ScoreCAM"), slow=True, processed=True),
    ]
    return [m for m in listed if available.get(m.library, True)]


def peers_available() -> Dict[str, bool]:
    found = {}
    for library, module in ((TORCHCAM, "torchcam"), (PGC, "pytorch_grad_cam")):
        try:
            __import__(module)
            found[library] = True
        except ImportError:
            found[library] = False
    return found


# ----------------------------------------------------------------------------
# Measuring


def _status_kb(field_name: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field_name}:\s+(\d+)", status).group(1))


def _release_free_memory() -> None:
    r"""Hands memory freed by earlier calls back to the system, so that the
    resident set counts only what is in use (glibc keeps freed pages)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    r"""Peak memory of a call beyond what was held before it, in MiB: the CUDA
    allocator's peak on a GPU, else the process's peak resident set (Linux:
    the high-water mark is reset through /proc/self/clear_refs)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.supported = device.type == "cuda" or Path("/proc/self/clear_refs").exists()

    @contextlib.contextmanager
    def measure(self) -> "object":
        result = {"mib": float("nan")}
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        elif self.supported:
            _release_free_memory()
            Path("/proc/self/clear_refs").write_text("5")
            before = _status_kb("VmRSS") * 1024
        yield result
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            result["mib"] = (torch.cuda.max_memory_allocated(self.device) - before) / 2**20
        elif self.supported:
            result["mib"] = (_status_kb("VmHWM") * 1024 - before) / 2**20


def timed(method: Method, case: Case, repeats: int, memory: PeakMemory):
    r"""The median time in seconds, the peak memory in MiB and the last map."""
    if repeats > 1:
        with contextlib.redirect_stderr(io.StringIO()):  # the peers' progress bars
            method.run(case)  # warm-up: one-off work such as tracing or kernel selection
    times, peaks, result = [], [], None
    for _ in range(repeats):
        with memory.measure() as peak, contextlib.redirect_stderr(io.StringIO()):
            start = time.perf_counter()
            result = method.run(case)
            if case.device.type == "cuda":
                torch.cuda.synchronize(case.device)
            times.append(time.perf_counter() - start)
        peaks.append(peak["mib"])
    return statistics.median(times), max(peaks), result


def as_numpy(maps: object) -> np.ndarray:
    if isinstance(maps, Tensor):
        return maps.detach().float().cpu().numpy()
    return np.asarray(maps, dtype=np.float32)


def unit_range(maps: np.ndarray) -> np.ndarray:
    r"""Each map ReLU'd and min-max normalised to [0, 1]."""
    maps = np.maximum(maps, 0)
    low = maps.reshape(len(maps), -1).min(1).reshape(-1, 1, 1)
    span = maps.reshape(len(maps), -1).max(1).reshape(-1, 1, 1) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1), 0)


def pgc_processed(maps: np.ndarray, size: int) -> np.ndarray:
    r"""pytorch-grad-cam's post-processing of layer maps: ReLU, normalise,
    resize to the input, then normalise again."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    scaled = scale_cam_image(np.maximum(maps, 0), (size, size))
    return scale_cam_image(np.maximum(scaled, 0))


def difference(ours_map: np.ndarray, peer_map: np.ndarray, peer: Method, size: int) -> float:
    if peer.processed:
        return float(np.abs(pgc_processed(ours_map, size) - peer_map).max())
    return float(np.abs(unit_range(ours_map) - unit_range(peer_map)).max())


# ----------------------------------------------------------------------------
# Running


def make_case(model_name: str, batch: int, size: int, device: torch.device) -> Case:
    torch.manual_seed(0)
    model = torchvision.models.get_model(model_name, weights=None).eval().to(device)
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    images = images.to(device)
    with torch.no_grad():
        targets = model(images).argmax(1).tolist()
    return Case(
        model_name, batch, size, device, model, getattr(model, LAYERS[model_name]), images, targets
    )


def run_case(
    case: Case, listed: List[Method], args: argparse.Namespace, batch_one: Dict[str, float]
) -> List[dict]:
    memory = PeakMemory(case.device)
    rows, maps = [], {}
    for method in listed:
        row = {
            "case": case.name,
            "model": case.model_name,
            "batch": case.batch,
            "method": method.name,
            "family": method.family,
            "library": method.library,
        }
        estimate = batch_one.get(method.name, 0.0) * case.batch
        if method.slow and case.batch > 1 and estimate > args.max_seconds:
            row["skipped"] = f"not run: ~{estimate / 60:.0f} min estimated from batch 1"
            rows.append(row)
            print(f"  {method.name:<50} {row['skipped']}", flush=True)
            continue
        repeats = 1 if method.slow else args.repeats
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seconds, peak, result = timed(method, case, repeats, memory)
        row.update(seconds=seconds, peak_mib=peak, repeats=repeats)
        if result is not None:
            maps[method.name] = as_numpy(result)
        rows.append(row)
        print(f"  {method.name:<50} {seconds:9.3f} s  {peak:8.0f} MiB", flush=True)
    compare(rows, maps, listed, case)
    return rows


def compare(
    rows: List[dict], maps: Dict[str, np.ndarray], listed: List[Method], case: Case
) -> None:
    r"""Adds to each of our rows the time in forward passes, and to each peer
    row the speed-up of our method over it and the difference of the maps."""
    by_name = {row["method"]: row for row in rows}
    unit = by_name.get("forward (plain, no autograd)", {}).get("seconds")
    unit_grad = by_name.get("forward (with autograd)", {}).get("seconds")
    methods_by_name = {m.name: m for m in listed}
    for row in rows:
        if "seconds" not in row:
            continue
        if unit:
            row["forward_passes"] = row["seconds"] / unit
        if unit_grad:
            row["autograd_forward_passes"] = row["seconds"] / unit_grad
        if row["library"] not in (TORCHCAM, PGC, CAPTUM):
            continue
        reference = f"{row['family']} ({OURS})"
        if reference in by_name and "seconds" in by_name[reference]:
            row["speedup_of_ours"] = row["seconds"] / by_name[reference]["seconds"]
        if reference in maps and row["method"] in maps:
            peer = methods_by_name[row["method"]]
            row["max_difference"] = difference(
                maps[reference], maps[row["method"]], peer, case.size
            )
            row["same_formula"] = peer.same_formula


# ----------------------------------------------------------------------------
# Reporting


def fmt(value: Optional[float], spec: str) -> str:
    return "" if value is None else format(value, spec)


def table(rows: List[dict]) -> List[str]:
    lines = [
        "| method | median time (s) | x forward | x forward with autograd | our speed-up over it | "
        "peak memory (MiB) | max map difference |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['method']} | {row['skipped']} | | | | | |")
            continue
        difference_text = fmt(row.get("max_difference"), ".2e")
        if difference_text and not row.get("same_formula", True):
            difference_text += " (other formula)"
        lines.append(
            f"| {row['method']} | {row['seconds']:.3f} | "
            f"{fmt(row.get('forward_passes'), '.2f')} | "
            f"{fmt(row.get('autograd_forward_passes'), '.2f')} | "
            f"{fmt(row.get('speedup_of_ours'), '.1f')} | {row['peak_mib']:.0f} | "
            f"{difference_text} |"
        )
    return lines


def goals(rows: List[dict]) -> List[str]:
    r"""The issue's goals, checked against this run."""
    lines = []
    cases = sorted({row["case"] for row in rows}, key=lambda c: [r["case"] for r in rows].index(c))
    for case in cases:
        in_case = {r["method"]: r for r in rows if r["case"] == case}
        for family in GRADIENT_FAMILY:
            row = in_case.get(f"{family} ({OURS})")
            if row and "autograd_forward_passes" in row:
                ratio = row["autograd_forward_passes"]
                lines.append(
                    f"- {case}: {family} takes {ratio:.2f}x a forward pass with autograd "
                    f"(goal <= 1.3x): {'met' if ratio <= 1.3 else 'NOT met'}"
                )
            peer = in_case.get(f"{family} ({PGC})")
            if peer and "speedup_of_ours" in peer:
                lines.append(
                    f"- {case}: {family} speed-up over pytorch-grad-cam "
                    f"{peer['speedup_of_ours']:.1f}x (goal >= 2x): "
                    f"{'met' if peer['speedup_of_ours'] >= 2 else 'NOT met'}"
                )
        peer = in_case.get(f"Ablation-CAM ({PGC})")
        if peer and "speedup_of_ours" in peer:
            speedup = peer["speedup_of_ours"]
            verdict = (
                f"(goal >= 100x): {'met' if speedup >= 100 else 'NOT met'}"
                if case.startswith("resnet50 layer4")
                else "(no goal: it is set for ResNet-50 layer4)"
            )
            lines.append(
                f"- {case}: Ablation-CAM speed-up over pytorch-grad-cam's "
                f"{speedup:.{0 if speedup >= 10 else 1}f}x, "
                f"maps differing by at most {peer.get('max_difference', float('nan')):.1e} "
                f"{verdict}"
            )
        score_peers = [
            r
            for r in in_case.values()
            if r["family"] == "Score-CAM" and r["library"] != OURS and "seconds" in r
        ]
        score_ours = [
            r
            for r in in_case.values()
            if r["family"] == "Score-CAM" and r["library"] == OURS and "seconds" in r
        ]
        if score_peers and score_ours:
            fastest = min(score_peers, key=lambda r: r["seconds"])
            for row in score_ours:
                ratio = fastest["seconds"] / row["seconds"]
                lines.append(
                    f"- {case}: {row['method']} speed-up over the fastest peer, "
                    f"{fastest['method']}, {ratio:.2f}x (goal >= 2x): "
                    f"{'met' if ratio >= 2 else 'NOT met'}; peak memory "
                    f"{row['peak_mib']:.0f} MiB against {fastest['peak_mib']:.0f} MiB"
                )
    return lines


def environment(device: torch.device) -> Dict[str, str]:
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "captum": captum.__version__,
        "captum-xcam": captum_xcam.__version__,
    }
    for name, module in (("torchcam", "torchcam"), ("grad-cam", "pytorch_grad_cam")):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            versions[name] = "not installed"
    if device.type == "cuda":
        versions["device"] = torch.cuda.get_device_name(device)
    else:
        versions["device"] = (
            f"CPU, {torch.get_num_threads()} threads ({platform.processor() or platform.machine()})"
        )
    return versions


def write(
    rows: List[dict], env: Dict[str, str], args: argparse.Namespace, notes: List[str]
) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    lines = [
        "# Speed and memory beside the peers",
        "",
        f"`{' '.join(['python benchmarks/speed.py', *sys.argv[1:]])}`",
        "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".",
        "",
    ]
    lines += [f"- {note}" for note in notes]
    lines += ["", "## Goals", ""] + goals(rows)
    for case in dict.fromkeys(row["case"] for row in rows):
        lines += ["", f"## {case}", ""] + table([r for r in rows if r["case"] == case])
    lines += ["", FOOTNOTE]
    (out / "speed.md").write_text("\n".join(lines) + "\n")


FOOTNOTE = """Columns: the median of the repeats (one run for the slow methods, after no
warm-up; otherwise after one warm-up call); the time in plain forward passes and in
forward passes with autograd recording, of the same batch; for a peer, how many times
faster our method of the same family is; the peak memory of the call beyond what was
held before it (the resident set on a CPU, the allocator's peak on a GPU); and the
largest difference between our map and the peer's after both are ReLU'd and normalised
to [0, 1] per image (pytorch-grad-cam's own resizing and normalisation applied to our
map for its rows). A difference marked "other formula" is expected: the peer computes
something else."""


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="resnet50,vgg16")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--families", default="", help="comma-separated method families; all by default"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=600,
        help="skip a slow method at batch > 1 if batch 1 suggests it takes longer",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: resnet18 at 64x64, batch 1 and 2, 2 repeats",
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.size, args.repeats = "resnet18", "1,2", 64, 2
    device = torch.device(args.device)
    available = peers_available()
    listed = methods(available)
    if args.families:
        wanted = {"forward", *args.families.split(",")}
        listed = [m for m in listed if m.family in wanted]
    notes = [
        f'{lib} is not installed: its rows are missing (`pip install -e ".[bench]"`).'
        for lib, ok in available.items()
        if not ok
    ]
    env = environment(device)
    rows: List[dict] = []
    for model_name in args.models.split(","):
        batch_one: Dict[str, float] = {}
        for batch in sorted(int(b) for b in args.batches.split(",")):
            case = make_case(model_name, batch, args.size, device)
            print(f"{case.name}, {args.size}x{args.size}, {env['device']}", flush=True)
            case_rows = run_case(case, listed, args, batch_one)
            if batch == 1:
                batch_one = {r["method"]: r["seconds"] for r in case_rows if "seconds" in r}
            rows += case_rows
            write(rows, env, args, notes)


if __name__ == "__main__":
    main()
