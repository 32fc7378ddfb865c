r"""What the benchmarks share: where results go, the environment a run
records, the warnings they silence or record, their typed result rows, and the
methods they benchmark, drawn from the registry
(:func:`captum_xcam.list_methods`), so that a newly registered method is
benchmarked everywhere without editing a list.

Scripts run from a checkout (``python benchmarks/speed.py``) put the
repository root on ``sys.path`` before importing this module as
``benchmarks.common``.
"""
import datetime
import os
import platform
import sys
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import (
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Type,
    TypeVar,
)

import torch
from torch import Tensor

import captum_xcam
from captum_xcam import MethodInfo, list_methods, method_info

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def command_line(script: str, argv: Optional[Sequence[str]] = None) -> str:
    r"""The command as a reader would type it: ``python benchmarks/<script> ...``."""
    return " ".join([f"python benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])


# ----------------------------------------------------------------------------
# Environment

#: Distributions whose versions a run records (those not installed say so).
PACKAGES = ("torch", "torchvision", "captum", "torchcam", "grad-cam", "timm")


def package_versions(packages: Iterable[str] = PACKAGES) -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"captum-xcam": captum_xcam.__version__}  # the checkout's, not an old install's
    for name in packages:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def cpu_name() -> str:
    r"""The CPU's model name (Linux: /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class Environment:
    r"""Where a run ran: versions, device, torch threads, CPUs and date."""

    python: str
    packages: Dict[str, str]
    device: str
    threads: int
    cpus: int
    cpu: str
    date: str

    @classmethod
    def capture(cls, device: torch.device = torch.device("cpu"),
                packages: Iterable[str] = PACKAGES) -> "Environment":
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        return cls(
            python=platform.python_version(),
            packages=package_versions(packages),
            device=name,
            threads=torch.get_num_threads(),
            cpus=os.cpu_count() or 1,
            cpu=cpu_name(),
            date=datetime.datetime.now().isoformat(timespec="seconds"),
        )

    def to_json(self) -> Dict[str, object]:
        return asdict(self)

    def markdown(self) -> str:
        versions = ", ".join(f"{k} {v}" for k, v in self.packages.items())
        return (f"Environment: python {self.python}, {versions}; {self.device}, "
                f"{self.threads} torch thread(s), {self.cpus} CPU(s) ({self.cpu}); {self.date}.")


# ----------------------------------------------------------------------------
# Warnings

#: Captum's notes on every call (inputs set to require grad, hooks set): noise
#: in a benchmark's output.
CAPTUM_NOTES = (r".*did not already require gradients", r".*Setting forward, backward hooks")


def ignore_captum_notes() -> None:
    for message in CAPTUM_NOTES:
        warnings.filterwarnings("ignore", message=message)


@contextmanager
def silenced() -> Iterator[None]:
    r"""Every warning ignored (the peers' included), for timed calls."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@dataclass(frozen=True)
class CaughtWarning:
    r"""A warning raised during ``step``: its class name and first line."""

    step: str
    category: str
    message: str


@contextmanager
def recorded_warnings(into: List[CaughtWarning], step: str) -> Iterator[None]:
    r"""Every warning raised inside, appended to ``into`` (none is shown)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        line = (str(w.message).strip().splitlines() or [""])[0]
        into.append(CaughtWarning(step, w.category.__name__, line[:300]))


# ----------------------------------------------------------------------------
# Typed result rows

_Row = TypeVar("_Row", bound="Row")


class Row:
    r"""A dataclass row that writes itself to JSON (fields left at None
    omitted) and reads back what an earlier run wrote (unknown keys
    ignored)."""

    def to_json(self) -> Dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls: Type[_Row], data: Mapping[str, object]) -> _Row:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class SpeedRow(Row):
    r"""One method on one case of ``speed.py``. ``key`` is the registry key
    (``forward`` for the units); ``seconds`` the median time (None when
    ``skipped`` says why it did not run); ``max_rel_difference`` the largest
    difference between our map and this peer's relative to the peer's
    largest value, per image; ``comparison`` how the maps were compared, or
    why they were not."""

    case: str
    model: str
    batch: int
    key: str
    method: str
    library: str
    seconds: Optional[float] = None
    peak_mib: Optional[float] = None
    repeats: Optional[int] = None
    forward_passes: Optional[float] = None
    autograd_forward_passes: Optional[float] = None
    speedup_of_ours: Optional[float] = None
    max_rel_difference: Optional[float] = None
    comparison: str = ""
    skipped: str = ""


@dataclass
class FaithfulnessRow(Row):
    r"""One method's means over the images in ``faithfulness.py``: the metric
    columns of :data:`captum_xcam.metrics.report.COLUMNS` it defines and the
    mean deletion and insertion curves."""

    method: str
    metrics: Dict[str, float]
    curves: Dict[str, List[float]]


@dataclass
class MethodCheck(Row):
    r"""One method on one case of ``zoo.py``: its error against the
    independent reference (``compared`` says over what), the tolerance and
    the verdict (``correct`` None: unresolved), its time (seconds and in
    forward passes), how often the part before the layer ran per call
    (``head_runs``), or the ``exception`` it raised."""

    seconds: float
    head_runs: float
    forward_passes: Optional[float] = None
    tolerance: Optional[float] = None
    error: Optional[float] = None
    compared: Optional[str] = None
    correct: Optional[bool] = None
    exception: Optional[str] = None


@dataclass
class ZooRow(Row):
    r"""One case of ``zoo.py``: ``status`` is "correct", "incorrect",
    "unresolved", "no layer" or "error" (with a ``note``); the rest is
    described in :func:`benchmarks.zoo.check_case`."""

    case: str
    source: str
    model: str
    size: int
    status: str = ""
    note: str = ""
    layer: str = ""
    dtype: str = ""
    images: Optional[int] = None
    score_cam_gflop: Optional[float] = None
    replay_noise: Optional[float] = None
    forward_seconds: Optional[float] = None
    path: str = ""
    tail_class: str = ""
    reason: str = ""
    path_seconds: Optional[float] = None
    channels: Optional[int] = None
    layer_shape: Optional[List[int]] = None
    layer_effect: Optional[float] = None
    methods: Dict[str, MethodCheck] = field(default_factory=dict)
    changes: List[str] = field(default_factory=list)
    model_as_found: Optional[bool] = None
    warnings: List[CaughtWarning] = field(default_factory=list)
    seconds: Optional[float] = None

    @property
    def checked(self) -> bool:
        return self.status in ("correct", "incorrect", "unresolved")

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> "ZooRow":
        row = super().from_json(data)
        row.methods = {name: MethodCheck.from_json(entry)
                       for name, entry in dict(row.methods).items()}  # type: ignore[arg-type]
        row.warnings = [CaughtWarning(**w) for w in row.warnings]  # type: ignore[arg-type]
        return row


# ----------------------------------------------------------------------------
# The methods, from the registry


@dataclass(frozen=True)
class BenchmarkMethod:
    r"""A registered method with the ``attribute`` keywords a benchmark sets
    for it (``label`` names a variant, such as another input layout)."""

    info: MethodInfo
    kwargs: Mapping[str, object] = field(default_factory=dict)
    label: str = ""

    @property
    def key(self) -> str:
        return self.info.key

    @property
    def name(self) -> str:
        return self.info.name + (f" ({self.label})" if self.label else "")

    def explainer(self, forward_func: Callable, layer: torch.nn.Module) -> Callable[..., Tensor]:
        r"""``explain(inputs, target, **kwargs)``: one instance of the class
        for ``layer``, called with this method's keywords (``kwargs``
        override them); a target-free method gets ``target=None``."""
        cam = self.info.cam(forward_func, layer)

        def explain(inputs: Tensor, target: object, **kwargs: object) -> Tensor:
            return cam.attribute(inputs, target=target if self.info.uses_target else None,
                                 **{**self.kwargs, **kwargs})

        explain.cam = cam  # type: ignore[attr-defined]
        return explain


def per_example(rows_per_pass: int, batch: int) -> int:
    r"""The ``perturbations_per_eval`` that runs about ``rows_per_pass`` rows
    per forward pass for ``batch`` examples: it counts perturbations per
    example (Captum's meaning), so a batch of N runs N times as many rows."""
    return max(1, rows_per_pass // max(1, batch))


def benchmark_methods(
    selection: Optional[Iterable[str]] = None,
    *,
    families: Optional[Iterable[str]] = None,
    perturbation_kwargs: Optional[Mapping[str, object]] = None,
    kwargs: Optional[Mapping[str, Mapping[str, object]]] = None,
) -> List[BenchmarkMethod]:
    r"""Every registered method in the registry's order (or those named in
    ``selection``, by key or display name, in that order; of ``families``
    only), each with ``perturbation_kwargs`` if it is of the perturbation
    family and then its own ``kwargs[key]``. An unknown name stops the run
    with the registered ones."""
    keys = list_methods() if selection is None else [method_key(n) for n in selection]
    wanted = None if families is None else set(families)
    methods = []
    for key in dict.fromkeys(keys):
        info = method_info(key)
        if wanted is not None and info.family not in wanted:
            continue
        settings = dict(perturbation_kwargs or {}) if info.perturbation else {}
        settings.update((kwargs or {}).get(key, {}))
        methods.append(BenchmarkMethod(info, settings))
    return methods


def method_key(name: str) -> str:
    r"""The registry key of a method given by key or display name."""
    by_name = {method_info(k).name.lower(): k for k in list_methods()}
    text = name.strip().lower()
    if text in by_name:
        return by_name[text]
    try:
        return method_info(text).key
    except ValueError as error:
        raise SystemExit(str(error)) from None
