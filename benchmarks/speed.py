r"""Speed and memory of captum-xcam's CAMs beside the peers, in one process, on
the same models and inputs, and whether the maps agree where the formulas do.

    python benchmarks/speed.py            # CPU: ResNet-18, -50, VGG-16, 224x224, batch 1 and 16
    python benchmarks/speed.py --device cuda
    python benchmarks/speed.py --quick --out /tmp/speed   # every method on ResNet-18, 64x64
    python benchmarks/speed.py --methods hirescam,eigencam --models resnet18

Methods: every registered method (``captum_xcam.list_methods()``, or
``--methods``), each beside the peers that implement it: Captum's
``LayerGradCam``, torchcam and pytorch-grad-cam (the ``bench`` extra:
``pip install -e ".[bench]"``; a missing peer is skipped with a note); and two
units: a plain forward pass and one with autograd recording. For each case the
table gives the median time, the time in forward passes, how many times faster
ours is than each peer of the same method, the peak memory beyond what the
model and the inputs hold, and the largest difference between our map and the
peer's relative to the peer's largest value (see :data:`PEERS` for what each
peer computes and why some maps are not expected to agree).

Models have random weights (``torch.manual_seed(0)``): nothing is downloaded.
A call that takes more than ``--slow-seconds`` runs once (it is its own
measurement); and a method is not run where the estimate (from batch 1, or
for the sampled Score-CAMs from Score-CAM's time in the same case) exceeds
``--max-seconds``; the table says so.

Writes ``speed.md`` and ``speed.json`` into ``--out`` (default
benchmarks/results).
"""

import argparse
import contextlib
import ctypes
import io
import json
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torchvision
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from captum.attr import LayerGradCam  # noqa: E402

from benchmarks.common import (  # noqa: E402
    RESULTS,
    BenchmarkMethod,
    Environment,
    SpeedRow,
    benchmark_methods,
    command_line,
    per_example,
    silenced,
)

OURS, CAPTUM, TORCHCAM, PGC, UNIT = (
    "captum-xcam", "Captum", "torchcam", "pytorch-grad-cam", "unit")
LAYERS = {"resnet50": "layer4", "vgg16": "features", "resnet18": "layer4", "vgg11": "features"}
Maps = Union[Tensor, np.ndarray]


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


# ----------------------------------------------------------------------------
# How a peer's map compares with ours


@dataclass(frozen=True)
class Comparison:
    r"""How a peer's map is compared with ours. ``relu``: the peer returns
    ReLU'd maps, compared with ReLU(ours); ``up_to_sign``: the peer's sign is
    arbitrary (an SVD's), so the better of both signs; ``differs``: the peer
    computes another formula, said here, and the difference is measured all
    the same; ``not_comparable``: no difference is measured, and this says
    why."""

    relu: bool = False
    up_to_sign: bool = False
    differs: str = ""
    not_comparable: str = ""

    def describe(self) -> str:
        if self.not_comparable:
            return f"not comparable: {self.not_comparable}"
        if self.differs:
            return f"other formula: {self.differs}"
        stage = "ReLU'd maps" if self.relu else "raw maps, before ReLU"
        return "same formula; " + stage + (", up to sign" if self.up_to_sign else "")


SAME = Comparison()
SAME_RELU = Comparison(relu=True)
#: Our Score-CAM scoring the masked inputs through the model as given.
EXACT_REPLAYS = f"{OURS}, exact replays"


@dataclass(frozen=True)
class Entry:
    r"""A way to get a map of method ``key`` (a registry key, or
    ``"forward"`` for the units), timed in each case. ``run`` returns the
    maps (N, h, w) at the layer's resolution, before any scaling, or None;
    ``comparison`` is set for a peer; ``estimate_from`` is the name of an
    entry of the same case and a factor: its time times the factor
    estimates this one's."""

    key: str
    display: str
    library: str
    run: Callable[[Case], Optional[Maps]]
    label: str = ""
    comparison: Optional[Comparison] = None
    estimate_from: Optional[Tuple[str, float]] = None

    @property
    def name(self) -> str:
        return f"{self.display} ({self.label or self.library})"


# ----------------------------------------------------------------------------
# The runs: ours, the peers', the units


def ours(method: BenchmarkMethod, **kwargs: object) -> Callable[[Case], Tensor]:
    def run(case: Case) -> Tensor:
        explain = method.explainer(case.model, case.layer)
        return explain(case.images, case.targets, relu_attributions=False, **kwargs)[:, 0]

    return run


def plain_forward(case: Case) -> None:
    with torch.no_grad():
        case.model(case.images)


def forward_with_autograd(case: Case) -> None:
    case.model(case.images)


def captum_grad_cam(case: Case) -> Tensor:
    cam = LayerGradCam(case.model, case.layer)
    return cam.attribute(case.images, target=case.targets, relu_attributions=False)[:, 0]


TORCHCAM_GRADIENT_FREE = ("ScoreCAM", "SSCAM", "ISCAM")


def torchcam_method(name: str, **kwargs: object) -> Callable[[Case], Tensor]:
    r"""torchcam's extractor ``name``; its maps with ``normalized=False``
    (ReLU'd, not rescaled)."""

    def run(case: Case) -> Tensor:
        from torchcam import methods

        with getattr(methods, name)(case.model, case.layer, **kwargs) as extractor:
            with torch.set_grad_enabled(name not in TORCHCAM_GRADIENT_FREE):
                scores = case.model(case.images)
            maps = extractor(class_idx=case.targets, scores=scores, normalized=False)[0]
        case.model.zero_grad(set_to_none=True)
        return maps

    return run


def pgc_method(name: str, **kwargs: object) -> Callable[[Case], np.ndarray]:
    r"""pytorch-grad-cam's class ``name``, called as its users call it; the
    map returned is its raw layer map (``get_cam_image``'s result, before its
    ReLU, normalisation and resizing), captured on the way."""

    def run(case: Case) -> np.ndarray:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = [ClassifierOutputTarget(t) for t in case.targets]
        raw: List[np.ndarray] = []
        with getattr(pytorch_grad_cam, name)(case.model, [case.layer], **kwargs) as cam:
            get_cam_image = cam.get_cam_image

            def captured(*args: object, **kw: object) -> np.ndarray:
                raw.append(get_cam_image(*args, **kw))
                return raw[-1]

            cam.get_cam_image = captured
            cam(input_tensor=case.images, targets=targets)
        case.model.zero_grad(set_to_none=True)  # it backpropagates into every parameter
        return raw[0]

    return run


# ----------------------------------------------------------------------------
# The peers of each registered method, and our settings beside them

#: Rows per forward pass of the peers' defaults for the perturbation methods
#: (pytorch-grad-cam's AblationCAM batch_size 32 and ScoreCAM 16, per image;
#: torchcam's SSCAM and ISCAM batch_size 32): ours runs as many, whatever the
#: batch (``perturbations_per_eval`` counts rows per example).
ROWS_PER_PASS = {"ablationcam": 32, "scorecam": 16, "sscam": 32, "iscam": 32}
#: The peers softmax Score-CAM's weights over the channels and mask with zeros;
#: ours does the same here (its default is the paper's raw score increase).
OUR_KWARGS: Dict[str, Dict[str, object]] = {
    "scorecam": {"channel_softmax": True},
    "sscam": {"channel_softmax": True},
    "iscam": {"channel_softmax": True},
}
#: Methods that run Score-CAM ``num_samples`` times: estimated from Score-CAM.
SAMPLED = {"sscam": 35, "iscam": 10}

#: (library, run, comparison) for each registered method that a peer has.
#: Formulas read from the peers' sources (torchcam 0.5, grad-cam 1.5).
PEERS: Dict[str, List[Tuple[str, Callable[[Case], Maps], Comparison]]] = {
    "gradcam": [
        (CAPTUM, captum_grad_cam, SAME),
        (TORCHCAM, torchcam_method("GradCAM"), SAME_RELU),
        (PGC, pgc_method("GradCAM"), SAME),
    ],
    "hirescam": [(PGC, pgc_method("HiResCAM"), SAME)],
    "layercam": [
        (TORCHCAM, torchcam_method("LayerCAM"), SAME_RELU),
        (PGC, pgc_method("LayerCAM"), SAME),
    ],
    "elementwisegradcam": [(PGC, pgc_method("GradCAMElementWise"), SAME)],
    "xgradcam": [
        (TORCHCAM, torchcam_method("XGradCAM"), SAME_RELU),  # eps 1e-8 beside sum(A)
        (PGC, pgc_method("XGradCAM"), SAME),  # eps 1e-7 beside sum(A)
    ],
    "gradcampp": [
        (TORCHCAM, torchcam_method("GradCAMpp"), Comparison(
            relu=True, differs="alpha's denominator has sum_ij(A G^3) per channel where the "
            "paper has (sum_ij A) G^3 per position")),
        (PGC, pgc_method("GradCAMPlusPlus"), Comparison(
            differs="alpha's denominator has 1e-6 added, of the order of 2 G^2 where the "
            "gradients are small (random weights)")),
    ],
    # It zeroes a channel where the layer's smallest activation is 0 (here:
    # after a ReLU), as the paper and ours do; elsewhere it sets min - 1e7.
    "ablationcam": [(PGC, pgc_method("AblationCAM"), SAME)],
    "scorecam": [
        (TORCHCAM, torchcam_method("ScoreCAM"), Comparison(
            relu=True, differs="each map is min-max normalised before it is upsampled "
            "(ours and the paper: after)")),
        (PGC, pgc_method("ScoreCAM"), Comparison(
            differs="the maps are upsampled with align_corners=True (ours: False, as "
            "torchcam and Captum's interpolate)")),
    ],
    "sscam": [(TORCHCAM, torchcam_method("SSCAM"), Comparison(
        not_comparable="random: its noise is its own draw (per channel, unseeded)"))],
    "iscam": [(TORCHCAM, torchcam_method("ISCAM"), Comparison(
        relu=True, differs="its masks are scaled by the cumulative sums sum_{j<=s} j/S "
        "(up to (S+1)/2) where IS-CAM's right Riemann sum takes s/S, and they are "
        "normalised before upsampling"))],
    "eigencam": [(PGC, pgc_method("EigenCAM"), Comparison(up_to_sign=True))],
}
PEER_MODULES = {TORCHCAM: "torchcam", PGC: "pytorch_grad_cam"}


def our_entries(method: BenchmarkMethod) -> List[Entry]:
    sampled = SAMPLED.get(method.key)
    estimate = (f"Score-CAM ({OURS})", float(sampled)) if sampled else None
    entries = [Entry(method.key, method.name, OURS, ours(method), estimate_from=estimate)]
    if method.key == "scorecam":  # what the optimised replays gain, and how exact they are
        entries.append(Entry(method.key, method.name, OURS, ours(method, optimized_replays=False),
                             label=EXACT_REPLAYS, comparison=SAME))
    return entries


def peer_entries(method: BenchmarkMethod, available: Dict[str, bool]) -> List[Entry]:
    entries = []
    for library, run, comparison in PEERS.get(method.key, []):
        if not available.get(library, True):
            continue
        sampled = SAMPLED.get(method.key)
        estimate = (f"Score-CAM ({library})", float(sampled)) if sampled else None
        entries.append(Entry(method.key, method.name, library, run, comparison=comparison,
                             estimate_from=estimate))
    return entries


def entries_for(methods: List[BenchmarkMethod], available: Dict[str, bool]) -> List[Entry]:
    r"""The units, then each method: ours, then its peers (the sampled
    Score-CAMs after the others, so that Score-CAM's time can estimate theirs)."""
    listed = [Entry("forward", "forward", UNIT, plain_forward, label="plain, no autograd"),
              Entry("forward", "forward", UNIT, forward_with_autograd, label="with autograd")]
    for method in sorted(methods, key=lambda m: m.key in SAMPLED):
        listed += our_entries(method) + peer_entries(method, available)
    return listed


def our_methods(selection: Optional[List[str]], families: Optional[List[str]],
                batch: int) -> List[BenchmarkMethod]:
    r"""The registered methods with the settings that match the peers' at
    this batch size."""
    kwargs = {key: {**OUR_KWARGS.get(key, {}),
                    "perturbations_per_eval": per_example(rows, batch)}
              for key, rows in ROWS_PER_PASS.items()}
    return benchmark_methods(selection, families=families, kwargs=kwargs)


def peers_available() -> Dict[str, bool]:
    found = {}
    for library, module in PEER_MODULES.items():
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


def one_call(entry: Entry, case: Case, memory: PeakMemory) -> Tuple[float, float, object]:
    r"""The seconds, peak memory in MiB and result of one call."""
    with memory.measure() as peak, contextlib.redirect_stderr(io.StringIO()):  # progress bars
        start = time.perf_counter()
        result = entry.run(case)
        if case.device.type == "cuda":
            torch.cuda.synchronize(case.device)
        seconds = time.perf_counter() - start
    return seconds, peak["mib"], result


def timed(entry: Entry, case: Case, repeats: int, slow_seconds: float,
          memory: PeakMemory) -> Tuple[float, float, int, object]:
    r"""The median time in seconds, the peak memory in MiB, the number of
    timed calls and the last result. The first call is a warm-up (one-off
    work such as tracing or kernel selection) unless it took more than
    ``slow_seconds``: then it is the only measurement."""
    seconds, peak, result = one_call(entry, case, memory)
    if seconds > slow_seconds:
        return seconds, peak, 1, result
    times, peaks = [], []
    for _ in range(repeats):
        seconds, peak, result = one_call(entry, case, memory)
        times.append(seconds)
        peaks.append(peak)
    return statistics.median(times), max(peaks), repeats, result


def as_numpy(maps: Maps) -> np.ndarray:
    if isinstance(maps, Tensor):
        return maps.detach().double().cpu().numpy()
    return np.asarray(maps, dtype=np.float64)


def max_rel_difference(ours_maps: np.ndarray, peer_maps: np.ndarray,
                       comparison: Comparison) -> float:
    r"""The largest ``max|ours - peer| / max|peer|`` over the images (ours
    ReLU'd first where the peer ReLUs; the better sign where it is
    arbitrary)."""
    if comparison.relu:
        ours_maps = np.maximum(ours_maps, 0)
    a = ours_maps.reshape(len(ours_maps), -1)
    b = peer_maps.reshape(len(peer_maps), -1)
    scale = np.abs(b).max(1)

    def relative(a: np.ndarray) -> np.ndarray:
        gap = np.abs(a - b).max(1)
        alone = np.where(gap > 0, np.inf, 0)  # the peer's map is zero
        return np.where(scale > 0, gap / np.where(scale > 0, scale, 1), alone)

    worst = relative(a)
    if comparison.up_to_sign:
        worst = np.minimum(worst, relative(-a))
    return float(worst.max())


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


def skip_reason(entry: Entry, case: Case, done: Dict[str, SpeedRow],
                batch_one: Dict[str, float], max_seconds: float) -> str:
    r"""Why ``entry`` is not run in ``case`` ("" to run it): its estimated
    time, from batch 1 or from the entry it is estimated from, exceeds
    ``max_seconds``."""
    estimates = []
    if case.batch > 1 and entry.name in batch_one:
        estimates.append((batch_one[entry.name] * case.batch, "from batch 1"))
    if entry.estimate_from:
        base, factor = entry.estimate_from
        if done.get(base) and done[base].seconds is not None:
            estimates.append((done[base].seconds * factor, f"{factor:g} x {base}"))
    over = [(s, why) for s, why in estimates if s > max_seconds]
    if not over:
        return ""
    seconds, why = max(over)
    return f"not run: ~{seconds / 60:.0f} min estimated ({why})"


def run_case(case: Case, listed: List[Entry], args: argparse.Namespace,
             batch_one: Dict[str, float]) -> List[SpeedRow]:
    memory = PeakMemory(case.device)
    rows: Dict[str, SpeedRow] = {}
    maps: Dict[str, np.ndarray] = {}
    for entry in listed:
        row = SpeedRow(case.name, case.model_name, case.batch, entry.key, entry.name,
                       entry.library)
        rows[entry.name] = row
        row.skipped = skip_reason(entry, case, rows, batch_one, args.max_seconds)
        if row.skipped:
            print(f"  {entry.name:<55} {row.skipped}", flush=True)
            continue
        with silenced():
            row.seconds, row.peak_mib, row.repeats, result = timed(
                entry, case, args.repeats, args.slow_seconds, memory)
        if result is not None:
            maps[entry.name] = as_numpy(result)
        print(f"  {entry.name:<55} {row.seconds:9.3f} s  {row.peak_mib:8.0f} MiB", flush=True)
    in_forward_passes(rows)
    compare_with_peers(rows, maps, listed)
    return list(rows.values())


def in_forward_passes(rows: Dict[str, SpeedRow]) -> None:
    r"""Each row's time in plain forward passes and in forward passes with
    autograd recording, of the same batch."""
    unit = rows.get("forward (plain, no autograd)")
    unit_grad = rows.get("forward (with autograd)")
    for row in rows.values():
        if row.seconds is None:
            continue
        if unit and unit.seconds:
            row.forward_passes = row.seconds / unit.seconds
        if unit_grad and unit_grad.seconds:
            row.autograd_forward_passes = row.seconds / unit_grad.seconds


def compare_with_peers(rows: Dict[str, SpeedRow], maps: Dict[str, np.ndarray],
                       listed: List[Entry]) -> None:
    r"""Adds to each peer row the speed-up of our method over it, how its map
    compares with ours and, unless not comparable, the difference."""
    for entry in listed:
        if entry.comparison is None:
            continue
        row = rows[entry.name]
        row.comparison = entry.comparison.describe()
        reference = rows.get(f"{entry.display} ({OURS})")
        if reference is None or reference.seconds is None or row.seconds is None:
            continue
        row.speedup_of_ours = row.seconds / reference.seconds
        if not entry.comparison.not_comparable and row.method in maps:
            row.max_rel_difference = max_rel_difference(
                maps[reference.method], maps[row.method], entry.comparison)


# ----------------------------------------------------------------------------
# Reporting


def fmt(value: Optional[float], spec: str) -> str:
    return "" if value is None else format(value, spec)


def difference_cell(row: SpeedRow) -> str:
    if row.comparison.startswith("not comparable"):
        return "not comparable"
    text = fmt(row.max_rel_difference, ".1e")
    if text and row.comparison.startswith("other formula"):
        text += " (other formula)"
    return text


def table(rows: List[SpeedRow]) -> List[str]:
    lines = [
        "| method | median time (s) | x forward | x forward with autograd | our speed-up over it | "
        "peak memory (MiB) | max rel. map difference |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if row.skipped:
            lines.append(f"| {row.method} | {row.skipped} | | | | | |")
            continue
        lines.append(
            f"| {row.method} | {row.seconds:.3f} | {fmt(row.forward_passes, '.2f')} | "
            f"{fmt(row.autograd_forward_passes, '.2f')} | {fmt(row.speedup_of_ours, '.1f')} | "
            f"{row.peak_mib:.0f} | {difference_cell(row)} |"
        )
    return lines


def equality_table(rows: List[SpeedRow]) -> List[str]:
    r"""Per method and peer, the largest relative difference of the maps
    over the cases, and how they were compared."""
    lines = ["| method | peer | max rel. difference | comparison |", "| --- | --- | ---: | --- |"]
    pairs: Dict[Tuple[str, str], List[SpeedRow]] = {}
    for row in rows:
        if row.comparison:
            pairs.setdefault((row.method.rsplit(" (", 1)[0], row.library), []).append(row)
    for (method, library), found in pairs.items():
        values = [r.max_rel_difference for r in found if r.max_rel_difference is not None]
        worst = f"{max(values):.1e}" if values else "—"
        lines.append(f"| {method} | {library} | {worst} | {found[0].comparison} |")
    return lines


FOOTNOTE = """Columns: the median of the repeats (after one warm-up call; a call longer than
--slow-seconds runs once, without warm-up); the time in plain forward passes and in
forward passes with autograd recording, of the same batch; for a peer, how many times
faster our method is; the peak memory of the call beyond what was held before it (the
resident set on a CPU, the allocator's peak on a GPU); and, per image, the largest
difference between our map and the peer's divided by the peer's largest absolute value,
the worst image shown. Maps are compared at the layer's resolution before any scaling:
ours with relu_attributions=False, pytorch-grad-cam's raw layer map (its get_cam_image,
before its ReLU, normalisation and resizing), torchcam's with normalized=False (ReLU'd:
ours is ReLU'd for those rows). "other formula": the peer computes something else (the
Map equality table says what), and the difference is what that costs; "not comparable":
no difference is measured. Perturbation methods run as many rows per forward pass as the
peers' defaults (perturbations_per_eval is per example), with Score-CAM's softmax over the
channels, as the peers have it."""


def score_cam_goal(rows: List[SpeedRow]) -> List[str]:
    r"""Per case, Score-CAM's speed-up over the fastest peer (goal: 1.5x on
    ResNet-18 and ResNet-50 on a CPU) and how far its map is from the exact
    replays' (goal: 1e-5 of the largest value)."""
    lines = []
    for case in dict.fromkeys(row.case for row in rows):
        found = {r.library if r.method != f"Score-CAM ({EXACT_REPLAYS})" else EXACT_REPLAYS: r
                 for r in rows if r.case == case and r.key == "scorecam" and r.seconds}
        peers = [found[lib] for lib in (TORCHCAM, PGC) if lib in found]
        if OURS not in found or not peers:
            continue
        fastest = min(peers, key=lambda r: r.seconds or 0.0)
        speedup = (fastest.seconds or 0.0) / (found[OURS].seconds or 1.0)
        exact = found.get(EXACT_REPLAYS)
        against = ("" if exact is None or exact.max_rel_difference is None else
                   f", maps within {exact.max_rel_difference:.1e} of the exact replays' "
                   f"(goal 1e-5), {exact.speedup_of_ours:.2f}x faster than them")
        lines.append(f"{case}: Score-CAM {speedup:.2f}x faster than the fastest peer, "
                     f"{fastest.method} (goal 1.5x on ResNet-18 and -50){against}.")
    return lines


def markdown(rows: List[SpeedRow], env: Environment, command: str, notes: List[str]) -> str:
    lines = ["# Speed and memory beside the peers", "", f"`{command}`", "", env.markdown(), ""]
    lines += [f"- {note}" for note in notes]
    goal = score_cam_goal(rows)
    if goal:
        lines += ["", "## Score-CAM by default", ""] + [f"- {line}" for line in goal]
    lines += ["", "## Map equality", ""] + equality_table(rows)
    for case in dict.fromkeys(row.case for row in rows):
        lines += ["", f"## {case}", ""] + table([r for r in rows if r.case == case])
    lines += ["", FOOTNOTE]
    return "\n".join(lines) + "\n"


def write(rows: List[SpeedRow], env: Environment, out: Path, notes: List[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    command = command_line("speed.py")
    (out / "speed.json").write_text(json.dumps(
        {"command": command, "environment": env.to_json(), "rows": [r.to_json() for r in rows]},
        indent=1))
    (out / "speed.md").write_text(markdown(rows, env, command, notes))


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="resnet18,resnet50,vgg16",
                        help=f"of {sorted(LAYERS)}")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", default="",
                        help="comma-separated registry keys or names; all registered by default")
    parser.add_argument("--families", default="",
                        help="comma-separated registry families (gradient, perturbation, "
                        "gradient-free); all by default")
    parser.add_argument("--slow-seconds", type=float, default=10,
                        help="a call longer than this is timed once, without warm-up")
    parser.add_argument("--max-seconds", type=float, default=600,
                        help="skip a method whose estimated time is longer")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: resnet18 at 64x64, batch 1 and 2, 2 repeats")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.size, args.repeats = "resnet18", "1,2", 64, 2
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    available = peers_available()
    selection = args.methods.split(",") if args.methods else None
    families = args.families.split(",") if args.families else None
    notes = [f'{lib} is not installed: its rows are missing (`pip install -e ".[bench]"`).'
             for lib, ok in available.items() if not ok]
    env = Environment.capture(device)
    rows: List[SpeedRow] = []
    for model_name in args.models.split(","):
        batch_one: Dict[str, float] = {}
        for batch in sorted(int(b) for b in args.batches.split(",")):
            listed = entries_for(our_methods(selection, families, batch), available)
            case = make_case(model_name, batch, args.size, device)
            print(f"{case.name}, {args.size}x{args.size}, {env.device}", flush=True)
            case_rows = run_case(case, listed, args, batch_one)
            if batch == 1:
                batch_one = {r.method: r.seconds for r in case_rows if r.seconds is not None}
            rows += case_rows
            write(rows, env, args.out, notes)


if __name__ == "__main__":
    main()
