r"""Model-zoo conformance: every method on the models people bring, each
against an independent computation written here, with which path ran, what it
cost and whether the model was left as found.

    python benchmarks/zoo.py                       # every case (hours on 2 CPU cores)
    python benchmarks/zoo.py --quick               # the subset tests/test_zoo.py runs
    python benchmarks/zoo.py --cases resnet18,hand-written --out /tmp/zoo
    python benchmarks/zoo.py --list                # the case names
    python benchmarks/zoo.py --shard 1/2 --out /tmp/z1 & python benchmarks/zoo.py --shard 2/2 \
        --out /tmp/z2; wait; python benchmarks/zoo.py --merge /tmp/z1 /tmp/z2

Cases: every torchvision classification model at ``default_cam_layer(name)``
(the vision transformers, which have none, get a row saying why), the inner
blocks of ResNets, timm CNNs of many families at their default CAM layer, and
the hand-written models of ``benchmarks/zoo_models.py``, one per idiom of
third-party code. Random weights with lively BatchNorm statistics (nothing is
downloaded), 10 classes, random normal images, the predicted class explained.

For each case and method (ours and Captum's ``LayerGradCam``) the reference is
computed here from the paper's formula with our own hooks and loops, sharing
no code with the library:

- XGrad-CAM ``w_k = sum(A G) / sum(A)``, Grad-CAM++ ``alpha = G^2 / (2 G^2 +
  sum(A) G^3)``, ``w_k = sum(alpha relu(G))``, Grad-CAM ``w_k = mean(G)``, from
  ``A`` and ``G = dy/dA`` of a forward hook and autograd, on every channel;
- Ablation-CAM ``(y - y_k) / y``, the whole model re-run with channel ``k``
  zeroed by a hook, and Score-CAM ``f(X H_k) - f(0)``, the mask ``H_k`` built
  by hand (bilinear upsampling, ``align_corners=False``, min-max
  normalisation, zero baseline), on a few sampled channels per image;
- LIFT-CAM's completeness ``sum_k w_k = f(A) - f(0)``, relative to
  ``max(|f(A)|, |f(0)|)``, ``f(0)`` from a hook that zeroes the layer.

Each method's weights are read back from its per-channel maps
(``attr_dim_summation=False``) and the error is the largest difference from
the reference relative to the largest reference weight. Besides: the path
(``layer_tail``: the part after the layer alone, or the whole model, and
why), how often the first module of the model ran per call (1: the part
before the layer ran once), each method's time in forward passes without
autograd, the model's state (parameters and buffers, train/eval flags,
``.grad`` fields, hooks) before and after, and every warning.

Precision: float64, except where Score-CAM (a whole forward pass per channel)
would cost more than ``FLOAT64_WORK`` GFLOP, where float32 with looser
tolerances; two images, or one where the work exceeds ``TWO_IMAGE_WORK``.
The row says which. Writes ``zoo.md`` and ``zoo.json`` into ``--out``
(default benchmarks/results), after every case.
"""

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

import captum  # noqa: E402
from captum.attr import LayerGradCam  # noqa: E402

import captum_xcam  # noqa: E402
from benchmarks.zoo_models import HAND_WRITTEN, NUM_CLASSES  # noqa: E402
from captum_xcam import (  # noqa: E402
    LayerAblationCam,
    LayerGradCamPlusPlus,
    LayerLiftCam,
    LayerScoreCam,
    LayerXGradCam,
)
from captum_xcam._core.layer_tail import layer_tail  # noqa: E402
from captum_xcam.models import classification_models, default_cam_layer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
METHODS = {
    "XGrad-CAM": (LayerXGradCam, {}),
    "Grad-CAM++": (LayerGradCamPlusPlus, {}),
    "Ablation-CAM": (LayerAblationCam, {"perturbations_per_eval": 64}),
    "Score-CAM": (LayerScoreCam, {"perturbations_per_eval": 64}),
    "LIFT-CAM": (LayerLiftCam, {}),
    "Grad-CAM (Captum)": (LayerGradCam, {}),
}
TOLERANCE = {torch.float64: 1e-7, torch.float32: 1e-3}
LIFT_TOLERANCE = {torch.float64: 1e-4, torch.float32: 1e-3}
SAMPLED_CHANNELS = 3  # per image, for Ablation-CAM and Score-CAM
FLOAT64_WORK = 100  # GFLOP of Score-CAM's forward passes (channels x images x forward)
TWO_IMAGE_WORK = 50  # GFLOP per image
WEAK_EFFECT = 1e-3  # see layer_effect
FLOAT32_NOISE = 1e-5  # see precision
UNRESOLVABLE = 0.1  # a replay tolerance above this checks nothing (see graded)
HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
)


# ----------------------------------------------------------------------------
# The cases


@dataclass(frozen=True)
class Case:
    r"""One model at one layer. ``layer`` None: the source's default CAM
    layer; ``dtype`` and ``images`` None: chosen from the cost (see the
    module docstring)."""

    source: str  # "torchvision", "timm" or "hand-written"
    model: str
    layer: Optional[str] = None
    size: int = 64
    dtype: Optional[torch.dtype] = None
    images: Optional[int] = None

    @property
    def name(self) -> str:
        return f"{self.source}/{self.model}" + (f" {self.layer}" if self.layer else "")


TORCHVISION_SIZES = {"alexnet": 128, "inception_v3": 128, "maxvit_t": 224}
RESNET_INNER_BLOCKS = (("resnet18", "layer1"), ("resnet18", "layer2"), ("resnet18", "layer3"),
                       ("resnet50", "layer3"))
TIMM_MODELS = (
    "resnet18", "resnet50d", "resnetblur18", "ecaresnet26t", "seresnext26d_32x4d",
    "skresnet18", "resnest14d", "res2net50_26w_4s", "resnetv2_50", "tresnet_m",
    "efficientnet_b0", "tf_efficientnet_lite0", "efficientnetv2_rw_t", "tinynet_a",
    "mixnet_s", "mnasnet_100", "fbnetc_100", "mobilenetv2_100", "mobilenetv3_small_100",
    "mobilenetv3_large_100", "mobilenetv4_conv_small", "hardcorenas_a", "lcnet_050",
    "convnext_atto", "convnextv2_atto", "inception_next_tiny", "regnetx_002", "regnety_002",
    "regnetz_b16", "densenet121", "rdnet_tiny", "cspresnet50", "cs3darknet_s", "darknet53",
    "rexnet_100", "ghostnet_100", "ghostnetv2_100", "repghostnet_050", "dla34", "dpn68",
    "repvgg_a0", "mobileone_s0", "gernet_s", "xception41", "legacy_xception",
    "nf_resnet26", "eca_nfnet_l0", "dm_nfnet_f0", "hrnet_w18_small", "vgg11",
    "ese_vovnet19b_dw", "hgnetv2_b0", "selecsls42b", "inception_v3", "mobilevit_xxs",
)
TIMM_SIZES = {"inception_v3": 128, "selecsls42b": 128}
# Third-party model code as published (pip install efficientnet_pytorch): the
# package whose `bs = inputs.size(0)` idiom once cost a whole forward pass per
# channel. Its default memory-efficient swish is an autograd Function.
THIRD_PARTY = ("efficientnet-b0",)
# The subset that tests/test_zoo.py runs: every idiom, ResNet inner blocks,
# ConvNeXt's last stage (torchvision and timm), and CNNs of other families.
QUICK = (
    *(Case("hand-written", name, size=zoo.size, dtype=torch.float64, images=2)
      for name, zoo in HAND_WRITTEN.items()),
    Case("torchvision", "resnet18", "layer2", size=32, dtype=torch.float64, images=2),
    Case("torchvision", "resnet18", "layer3", size=32, dtype=torch.float64, images=2),
    Case("torchvision", "resnet50", "layer3", size=32, dtype=torch.float64, images=1),
    Case("torchvision", "convnext_tiny", "features", size=32, dtype=torch.float64, images=1),
    Case("timm", "convnext_atto", "stages.3", size=64, dtype=torch.float64, images=1),
    Case("torchvision", "mobilenet_v3_small", size=64, dtype=torch.float64, images=1),
    Case("torchvision", "squeezenet1_1", size=64, dtype=torch.float64, images=2),
    Case("torchvision", "shufflenet_v2_x0_5", size=64, dtype=torch.float64, images=1),
    Case("timm", "lcnet_050", size=64, dtype=torch.float64, images=1),
    Case("timm", "regnetx_002", size=64, dtype=torch.float64, images=1),
)


def all_cases() -> List[Case]:
    cases = [Case("torchvision", name, size=TORCHVISION_SIZES.get(name, 64))
             for name in classification_models()]
    cases += [Case("torchvision", name, layer) for name, layer in RESNET_INNER_BLOCKS]
    cases += [Case("timm", name, size=TIMM_SIZES.get(name, 64)) for name in TIMM_MODELS]
    cases += [Case("hand-written", name, size=zoo.size) for name, zoo in HAND_WRITTEN.items()]
    cases += [Case("efficientnet_pytorch", name, "_bn1") for name in THIRD_PARTY]
    return cases


def case_named(name: str) -> Case:
    return next(case for case in (*QUICK, *all_cases()) if case.name == name)


# ----------------------------------------------------------------------------
# Models


class NoCamLayer(Exception):
    r"""The model has no default CAM layer; the message says why."""


def lively(model: nn.Module, seed: int = 0) -> nn.Module:
    r"""Random weights with lively normalisation statistics, classifiers and
    layer scales (as tests/conftest.py's ``randomise``), and convolutions
    that keep the activations' scale (He initialisation: GoogLeNet's and
    Inception's own, of standard deviation 0.01 and 0.1, make the output all
    but independent of the input), so that outputs, activations and
    gradients are far from zero in every architecture."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0, (2 / m.weight[0].numel()) ** 0.5, generator=g)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                _lively_affine(m, g)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, nn.Linear):
                bound = 3 / m.in_features ** 0.5
                m.weight.copy_((torch.rand(m.weight.shape, generator=g) * 2 - 1) * bound)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "layer_scale")):  # ConvNeXt's 1e-6 layer scales
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.5)
    return model


def _lively_affine(m: nn.Module, g: torch.Generator) -> None:
    if getattr(m, "weight", None) is not None:
        m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
    if getattr(m, "bias", None) is not None:
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def build(case: Case) -> Tuple[nn.Module, Callable, str]:
    r"""The model (float32, eval mode, lively random weights), the forward
    function to explain and the layer's dotted name."""
    torch.manual_seed(0)
    if case.source == "torchvision":
        layer = case.layer or torchvision_layer(case.model)
        model = torchvision.models.get_model(case.model, weights=None, num_classes=NUM_CLASSES)
        forward_of = None
    elif case.source == "timm":
        import timm

        model = timm.create_model(case.model, pretrained=False, num_classes=NUM_CLASSES)
        layer, forward_of = case.layer, None
    elif case.source == "efficientnet_pytorch":
        from efficientnet_pytorch import EfficientNet

        model = EfficientNet.from_name(case.model, num_classes=NUM_CLASSES)
        layer, forward_of = case.layer, None
    else:
        zoo = HAND_WRITTEN[case.model]
        model, layer, forward_of = zoo.build(), case.layer or zoo.layer, zoo.forward_func
    model = lively(model).eval()
    if layer is None:
        layer = timm_layer(model, case.size)
    return model, (forward_of(model) if forward_of else model), layer


def torchvision_layer(name: str) -> str:
    try:
        return default_cam_layer(name)
    except ValueError as error:
        raise NoCamLayer(str(error)) from None


def timm_layer(model: nn.Module, size: int) -> str:
    r"""timm's default CAM layer: ``captum_xcam.models.timm_models.timm_cam_layer``
    where it exists, else the module of ``model.feature_info[-1]`` if its
    output is what ``forward_features`` returns."""
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        from captum_xcam.models.timm_models import timm_cam_layer
    except ImportError:
        return feature_info_layer(model, x)
    try:
        return timm_cam_layer(model, x)
    except ValueError as error:
        raise NoCamLayer(str(error)) from None


def feature_info_layer(model: nn.Module, x: Tensor) -> str:
    name = model.feature_info[-1]["module"]
    seen = {}
    handle = model.get_submodule(name).register_forward_hook(
        lambda m, i, o: seen.update(output=o))
    try:
        with torch.no_grad():
            features = model.forward_features(x)
    finally:
        handle.remove()
    if seen.get("output") is not features:
        raise NoCamLayer(f"feature_info's last module {name} does not output the map that "
                         "forward_features returns")
    return name


# ----------------------------------------------------------------------------
# Independent references: our own hooks and loops


@contextmanager
def layer_hook(layer: nn.Module, hook: Callable) -> Iterator[None]:
    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class Reference:
    r"""The layer tensor ``A``, ``G = dy/dA``, the target scores ``y = f(A)`` and
    ``f(0)``, the scores with the layer's output zeroed."""

    A: Tensor
    G: Tensor
    y: Tensor
    f0: Tensor


def reference(forward: Callable, layer: nn.Module, x: Tensor, targets: Tensor) -> Reference:
    store = {}

    def keep(module, inputs, output):
        store["a"] = output
        return output * 1  # in-place operations after the layer change the copy

    with layer_hook(layer, keep):
        y = scores(forward(x), targets)
    (G,) = torch.autograd.grad(y.sum(), store["a"])
    f0 = scores_with_layer(forward, layer, x, targets, torch.zeros_like)
    return Reference(store["a"].detach(), G, y.detach(), f0)


def scores(output: Tensor, targets: Tensor) -> Tensor:
    return output[torch.arange(len(targets)), targets]


def scores_with_layer(forward, layer, x, targets, replace: Callable[[Tensor], Tensor]) -> Tensor:
    r"""The target scores with ``replace(A)`` in place of the layer's output."""
    with torch.no_grad(), layer_hook(layer, lambda m, i, o: replace(o)):
        return scores(forward(x), targets)


def layer_effect(ref: Reference) -> float:
    r"""The smallest change of a target score when the layer is zeroed,
    relative to the score: near 0, the model hardly depends on the layer and
    the checks say little."""
    return float(((ref.y - ref.f0).abs() / torch.maximum(ref.y.abs(), ref.f0.abs())).min())


def xgrad_weights(ref: Reference) -> Tensor:
    total = ref.A.sum((2, 3))
    numerator = (ref.A * ref.G).sum((2, 3))
    return torch.where(total != 0, numerator / torch.where(total != 0, total, 1), 0)


def gradcampp_weights(ref: Reference) -> Tensor:
    g2, g3 = ref.G ** 2, ref.G ** 3
    denominator = 2 * g2 + ref.A.sum((2, 3), keepdim=True) * g3
    alpha = torch.where(denominator != 0, g2 / torch.where(denominator != 0, denominator, 1), 0)
    return (alpha * torch.relu(ref.G)).sum((2, 3))


def gradcam_weights(ref: Reference) -> Tensor:
    return ref.G.mean((2, 3))


def ablation_weight(forward, layer, x, targets, ref: Reference, n: int, k: int) -> float:
    def zero_k(a: Tensor) -> Tensor:
        a = a.clone()
        a[:, k] = 0
        return a

    y_k = scores_with_layer(forward, layer, x[n:n + 1], targets[n:n + 1], zero_k)[0]
    return float((ref.y[n] - y_k) / ref.y[n])


def score_cam_weight(forward, x, targets, ref: Reference, n: int, k: int) -> float:
    up = F.interpolate(ref.A[n, k][None, None], size=x.shape[2:], mode="bilinear",
                       align_corners=False)[0, 0]
    low, high = up.min(), up.max()
    # A constant map upsamples to a constant, whose mask is zero: test the map
    # itself, since bilinear interpolation of a 1x1 map varies by rounding
    # (1e-16), which min-max normalisation would blow up into a noise mask.
    constant = bool(ref.A[n, k].max() == ref.A[n, k].min())
    mask = torch.zeros_like(up) if constant or high == low else (up - low) / (high - low)
    with torch.no_grad():
        masked = forward(x[n:n + 1] * mask)[0, targets[n]]
        baseline = forward(torch.zeros_like(x[n:n + 1]))[0, targets[n]]
    return float(masked - baseline)


def live_channels(A: Tensor) -> Tensor:
    r"""(N, K) True where the channel is not all zero (only there can a weight
    be read back from ``w_k A_k``), nor all within a factor 1024 of the
    dtype's smallest normal number, where ``w_k A_k`` loses its precision."""
    return A.flatten(2).abs().amax(2) > torch.finfo(A.dtype).tiny * 1024


def sampled_channels(live: Tensor, per_image: int, seed: int = 0) -> List[Tuple[int, int]]:
    g = torch.Generator().manual_seed(seed)
    picked = []
    for n, row in enumerate(live):
        channels = row.nonzero().flatten()
        picked += [(n, int(k)) for k in channels[torch.randperm(len(channels), generator=g)]
                   [:per_image]]
    return picked


# ----------------------------------------------------------------------------
# Checks


def implied_weights(maps: Tensor, A: Tensor) -> Tensor:
    r"""w_k from the per-channel map w_k A_k; 0 where A_k is all zero. In
    float64 and with each channel scaled by its largest activation first, so
    that products of tiny activations (a SiLU of a very negative input gives
    1e-33 in float32, 1e-253 in float64) do not underflow to zero."""
    maps, A = maps.double(), A.double()
    scale = A.flatten(2).abs().amax(2).clamp_min(torch.finfo(A.dtype).tiny)
    scale = scale.reshape(scale.shape + (1,) * (A.dim() - 2))
    maps, A = maps / scale, A / scale
    norms = (A * A).flatten(2).sum(2)
    return torch.where(norms > 0, (maps * A).flatten(2).sum(2) / norms.clamp_min(1e-300), 0)


def relative_error(actual: Tensor, expected: Tensor) -> float:
    if expected.numel() == 0:
        return 0.0
    scale = max(float(expected.abs().max()), torch.finfo(expected.dtype).tiny)
    return float((actual - expected).abs().max()) / scale


def method_error(name: str, weights: Tensor, ref: Reference, probe) -> Tuple[float, str]:
    r"""The method's error against its reference, and what was compared."""
    live = live_channels(ref.A)
    closed_form = {"XGrad-CAM": xgrad_weights, "Grad-CAM++": gradcampp_weights,
                   "Grad-CAM (Captum)": gradcam_weights}
    if name in closed_form:
        return (relative_error(weights[live], closed_form[name](ref)[live]),
                f"{int(live.sum())} live channels")
    if name == "LIFT-CAM":
        total = (weights * live).sum(1)
        scale = torch.maximum(ref.y.abs(), ref.f0.abs()).clamp_min(1e-300)
        return float(((total - (ref.y - ref.f0)).abs() / scale).max()), "completeness"
    picked = sampled_channels(live, SAMPLED_CHANNELS)
    expected = torch.tensor([probe(name, n, k) for n, k in picked], dtype=torch.float64)
    actual = torch.tensor([float(weights[n, k]) for n, k in picked], dtype=torch.float64)
    return relative_error(actual, expected), f"{len(picked)} sampled channels"


class CallCounter:
    r"""Counts the calls of the first module a forward pass runs."""

    def __init__(self, model: nn.Module, forward: Callable, x: Tensor) -> None:
        leaves = [m for m in model.modules() if not list(m.children())]
        order: List[nn.Module] = []
        handles = [m.register_forward_pre_hook(lambda m, i: order.append(m)) for m in leaves]
        try:
            with torch.no_grad():
                forward(x)
        finally:
            for handle in handles:
                handle.remove()
        self.module = order[0]
        self.per_forward = sum(m is self.module for m in order)
        self.calls = 0
        self.handle = self.module.register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        self.calls += 1

    def runs(self) -> float:
        r"""Forward passes of the part before the layer since the last call."""
        runs, self.calls = self.calls / self.per_forward, 0
        return runs


def snapshot(model: nn.Module) -> Dict[str, object]:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "grads": {k: p.grad is None for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "hooks": {k: [len(getattr(m, d, {})) for d in HOOK_DICTS]
                  for k, m in model.named_modules()},
        "attributes": {k: sorted(m.__dict__) for k, m in model.named_modules()},
    }


def changes(before: Dict[str, object], after: Dict[str, object]) -> List[str]:
    r"""What differs, e.g. ``state: layer4.0.bn1.running_mean``."""
    found = []
    for part in ("grads", "training", "hooks", "attributes"):
        found += [f"{part}: {k}" for k in before[part] if before[part][k] != after[part].get(k)]
    found += [f"state: {k}" for k, v in before["state"].items()
              if not torch.equal(v, after["state"][k])]
    return found


@contextmanager
def recorded_warnings(into: List[dict], step: str) -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        line = (str(w.message).strip().splitlines() or [""])[0]
        into.append({"step": step, "category": w.category.__name__, "message": line[:300]})


# ----------------------------------------------------------------------------
# One case


def check_case(case: Case) -> dict:
    r"""Runs every method on ``case`` and its references; returns the row:
    ``status`` ("correct", "incorrect", "no layer" or "error", with a
    ``note``), ``layer``, ``dtype``, ``images``, ``channels``, ``path`` ("tail
    only" or "whole model") with ``reason``, ``forward_seconds``, ``methods``
    (per method: ``error``, ``tolerance``, ``correct``, ``compared``,
    ``seconds``, ``forward_passes``, ``head_runs``: runs of the model's first
    module per call, or ``exception``), ``model_as_found`` with ``changes``,
    ``warnings`` (step, category, first line) and ``layer_effect``."""
    row = {"case": case.name, "source": case.source, "model": case.model, "size": case.size}
    start = time.perf_counter()
    try:
        model, forward, row["layer"] = build(case)
        _check(case, model, forward, model.get_submodule(row["layer"]), row)
    except NoCamLayer as error:
        return {**row, "status": "no layer", "note": str(error)}
    except Exception as error:  # a case that cannot run at all: say why, go on
        row.update(status="error", note=f"{type(error).__name__}: {_first_line(error)}")
    row["seconds"] = time.perf_counter() - start
    return row


def _check(case: Case, model: nn.Module, forward: Callable, layer: nn.Module, row: dict) -> None:
    dtype, n_images, work = precision(case, model, forward, layer)
    model.to(dtype)
    x = torch.randn(n_images, 3, case.size, case.size,
                    generator=torch.Generator().manual_seed(1)).to(dtype)
    row.update(dtype=str(dtype).replace("torch.", ""), images=n_images, score_cam_gflop=work,
               replay_noise=replay_noise(forward, x))
    before = snapshot(model)
    caught: List[dict] = []
    counter = CallCounter(model, forward, x)
    try:
        with torch.no_grad():
            targets = forward(x).argmax(1)
        row["forward_seconds"] = forward_seconds(forward, x)
        row.update(path_of(forward, layer, x, targets, caught))
        counter.runs()
        runs = {name: run_method(name, forward, layer, x, targets, counter, caught)
                for name in METHODS}
    finally:
        counter.handle.remove()
    ref = reference(forward, layer, x, targets)
    row.update(channels=ref.A.shape[1], layer_shape=list(ref.A.shape[1:]),
               layer_effect=layer_effect(ref))
    probe = probe_of(forward, layer, x, targets, ref)
    row["methods"] = {name: graded(name, entry, maps, dtype, ref, probe, row["forward_seconds"],
                                   row["replay_noise"])
                      for name, (entry, maps) in runs.items()}
    row["changes"] = changes(before, snapshot(model))
    row["model_as_found"] = not row["changes"]
    row["warnings"] = caught
    verdicts = [m["correct"] for m in row["methods"].values()]
    row["status"] = ("incorrect" if not row["model_as_found"] or False in verdicts
                     else "unresolved" if None in verdicts else "correct")
    if row["status"] == "unresolved":
        row["note"] = (f"the random model's outputs move by {row['replay_noise']:.1e} of "
                       f"f(x) - f(0) between lone and batched evaluation in {row['dtype']}, "
                       "so the replay methods cannot be checked on it; the others are correct")


def precision(case: Case, model, forward, layer) -> Tuple[torch.dtype, int, float]:
    r"""float64 and two images unless Score-CAM's work (channels x GFLOP of
    a forward pass) is large; but float64 whatever the work where the random
    model is too ill-conditioned for float32 to check anything (its output
    for an image moves by more than ``FLOAT32_NOISE`` of f(x) - f(0) when
    the image is evaluated beside another); a case's own settings win."""
    x = torch.randn(2, 3, case.size, case.size, generator=torch.Generator().manual_seed(1))
    seen = {}
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), layer_hook(layer, lambda m, i, o: seen.update(a=o)), \
            FlopCounterMode(display=False) as flops:
        forward(x[:1])
    per_image = seen["a"].shape[1] * flops.get_total_flops() / 1e9
    images = case.images or (2 if per_image <= TWO_IMAGE_WORK else 1)
    cheap = per_image * images <= FLOAT64_WORK
    dtype = case.dtype or (torch.float64 if cheap or float32_noise(forward, x) > FLOAT32_NOISE
                           else torch.float32)
    return dtype, images, per_image * images


def float32_noise(forward: Callable, x: Tensor) -> float:
    r""":func:`replay_noise` of the model in float32."""
    return replay_noise(forward, x.float())


def replay_noise(forward: Callable, x: Tensor, masks: int = 8) -> float:
    r"""How far the model's outputs for ``x[0]`` under smooth random masks
    (Score-CAM's inputs) move between evaluating each alone and all in one
    batch, relative to f(masked) - f(0): the floor below which no comparison
    of a batched replay with a lone one means anything in ``x``'s dtype."""
    g = torch.Generator().manual_seed(2)
    grid = torch.rand(masks, 1, 3, 3, generator=g)
    images = x[:1] * F.interpolate(grid, size=x.shape[2:], mode="bilinear",
                                   align_corners=False).to(x.dtype)
    with torch.no_grad():
        zero = forward(torch.zeros_like(x[:1]))
        alone = torch.cat([forward(image[None]) for image in images])
        batched = forward(images)
    scale = (alone - zero).abs().amax(1).clamp_min(1e-30)
    return float(((alone - batched).abs().amax(1) / scale).max())


def forward_seconds(forward: Callable, x: Tensor) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        with torch.no_grad():
            forward(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def path_of(forward, layer, x, targets, caught: List[dict]) -> dict:
    r"""Which path the perturbation methods take (tracing the split once, so
    that the methods' times do not include it)."""
    start = time.perf_counter()
    with recorded_warnings(caught, "path"):
        tail = layer_tail(forward, layer, (x,), None, targets, False)
    return {
        "path": tail.path,
        "tail_class": type(tail).__name__,
        "reason": getattr(tail, "reason", ""),
        "path_seconds": time.perf_counter() - start,
    }


def run_method(name, forward, layer, x, targets, counter: CallCounter, caught):
    r"""The method's entry (time, runs of the part before the layer, an
    exception) and its per-channel maps (None after an exception)."""
    cls, kwargs = METHODS[name]
    entry: Dict[str, object] = {}
    maps = None
    start = time.perf_counter()
    try:
        with recorded_warnings(caught, name):
            maps = cls(forward, layer).attribute(
                x, target=targets, attr_dim_summation=False, **kwargs).detach()
    except Exception as error:
        entry["exception"] = f"{type(error).__name__}: {_first_line(error)}"
    entry["seconds"] = time.perf_counter() - start
    entry["head_runs"] = counter.runs()
    return entry, maps


def probe_of(forward, layer, x, targets, ref: Reference) -> Callable[[str, int, int], float]:
    def probe(name: str, n: int, k: int) -> float:
        if name == "Ablation-CAM":
            return ablation_weight(forward, layer, x, targets, ref, n, k)
        return score_cam_weight(forward, x, targets, ref, n, k)

    return probe


def graded(name, entry, maps, dtype, ref: Reference, probe, forward_s: float,
           noise: float) -> dict:
    r"""The method's entry with its error, tolerance, verdict and time in
    forward passes. The replay methods' references run each perturbation
    alone, the methods in batches: their tolerance is at least ten times the
    model's :func:`replay_noise`."""
    tolerance = (LIFT_TOLERANCE if name == "LIFT-CAM" else TOLERANCE)[dtype]
    if name in ("Ablation-CAM", "Score-CAM"):
        tolerance = max(tolerance, 10 * noise)
    entry = {**entry, "forward_passes": entry["seconds"] / forward_s, "tolerance": tolerance}
    if maps is None:
        return {**entry, "correct": False}
    error, compared = method_error(name, implied_weights(maps, ref.A), ref, probe)
    if tolerance > UNRESOLVABLE:  # the model's own noise swamps any check
        return {**entry, "error": error, "compared": compared, "correct": None}
    return {**entry, "error": error, "compared": compared, "correct": bool(error <= tolerance)}


def _first_line(error: BaseException) -> str:
    return ((str(error).strip().splitlines() or [""])[0])[:300]


# ----------------------------------------------------------------------------
# Reporting


def environment(threads: int) -> Dict[str, str]:
    import timm

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "captum": captum.__version__,
        "captum-xcam": captum_xcam.__version__,
        "threads": str(threads),
        "machine": f"{platform.machine()}, {platform.processor() or 'CPU'}",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def summary(rows: List[dict]) -> List[str]:
    checked = [r for r in rows if r["status"] in ("correct", "incorrect", "unresolved")]
    lines = [f"- {len(rows)} cases: {len(checked)} checked, "
             f"{sum(r['status'] == 'correct' for r in rows)} correct in every method with "
             "the model left as found."]
    lines += [f"- Incorrect: {r['case']}: {incorrect_parts(r)}." for r in rows
              if r["status"] == "incorrect"]
    whole = [r for r in checked if r.get("path") == "whole model"]
    lines.append(f"- The whole model re-run for every replay in {len(whole)} case(s)"
                 + (":" if whole else "."))
    lines += [f"  - {r['case']}: {r.get('reason') or 'no reason given'}" for r in whole]
    lines += [f"- Not checked: {r['case']}: {r['status']}: {r.get('note', '')}" for r in rows
              if r["status"] not in ("correct", "incorrect")]
    weak = [r["case"] for r in checked if r["layer_effect"] < WEAK_EFFECT]
    if weak:
        lines.append(f"- Weak checks (zeroing the layer changes a score by less than "
                     f"{WEAK_EFFECT:.0%}): " + ", ".join(weak))
    counts: Dict[str, int] = {}
    for r in checked:
        for w in r["warnings"]:
            counts[w["category"]] = counts.get(w["category"], 0) + 1
    if counts:
        lines.append("- Warnings: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
    return lines


def incorrect_parts(row: dict) -> str:
    parts = [f"{name} ({entry.get('exception') or format(entry.get('error'), '.1e')})"
             for name, entry in row["methods"].items() if entry["correct"] is False]
    if not row["model_as_found"]:
        parts.append("model changed (" + ", ".join(row["changes"][:3]) + ")")
    return "; ".join(parts)


def method_cell(entry: dict) -> str:
    if "exception" in entry:
        return "✗ " + entry["exception"][:60].replace("|", "/")
    mark = {True: "", False: "✗ ", None: "? "}[entry["correct"]]
    return mark + f"{entry['error']:.0e}"


def table(rows: List[dict]) -> List[str]:
    names = list(METHODS)
    lines = [
        "| case | layer | dtype, px, images | K | path | " + " | ".join(names)
        + " | time (x forward) | as found | warnings |",
        "| --- | --- | --- | ---: | --- |" + " ---: |" * len(names) + " --- | --- | --- |",
    ]
    for r in rows:
        if r["status"] not in ("correct", "incorrect", "unresolved"):
            lines.append(f"| {r['case']} | {r.get('layer', '')} | {r['status']}: "
                         f"{r.get('note', '')[:160].replace('|', '/')} |"
                         + " |" * (len(names) + 5))
            continue
        path = r["path"] + (f": {r['reason']}" if r.get("reason") else "")
        times = " / ".join(f"{r['methods'][n]['forward_passes']:.3g}" for n in names)
        kinds = sorted({w["category"] for w in r["warnings"]})
        lines.append(
            f"| {r['case']} | {r['layer']} | {r['dtype']}, {r['size']}, {r['images']} | "
            f"{r['channels']} | {path.replace('|', '/')} | "
            + " | ".join(method_cell(r["methods"][n]) for n in names)
            + f" | {times} | {'yes' if r['model_as_found'] else 'NO'} | {', '.join(kinds)} |")
    return lines


def warning_lines(rows: List[dict]) -> List[str]:
    r"""Each distinct warning (class and first line) with the cases it came from."""
    seen: Dict[Tuple[str, str], List[str]] = {}
    for r in rows:
        for w in r.get("warnings", []):
            cases = seen.setdefault((w["category"], w["message"]), [])
            if r["case"] not in cases:
                cases.append(r["case"])
    return [f"- {category}: {message} ({len(cases)} case(s): {', '.join(cases[:5])}"
            + (", ..." if len(cases) > 5 else "") + ")"
            for (category, message), cases in seen.items()]


def markdown(rows: List[dict], env: Dict[str, str], command: str) -> str:
    lines = ["# Model-zoo conformance", "", f"`{command}`", "",
             "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".", "",
             "## Summary", "", *summary(rows), "", "## Cases", "", *table(rows), "", FOOTNOTE]
    warned = warning_lines(rows)
    if warned:
        lines += ["", "## Warnings", "", *warned]
    return "\n".join(lines) + "\n"


FOOTNOTE = """Columns: the CAM layer; the precision, input side and number of images; K,
the layer's channels; the path the perturbation methods took (the part after the layer
alone, or the whole model re-run, with the reason the library gives); per method the
error against the independent reference written in benchmarks/zoo.py (largest difference
of the channel weights relative to the largest reference weight: every live channel for
XGrad-CAM, Grad-CAM++ and Grad-CAM, sampled channels for Ablation-CAM and Score-CAM; for
LIFT-CAM the completeness gap |sum_k w_k - (f(A) - f(0))| / max(|f(A)|, |f(0)|)), marked
✗ above the tolerance (float64: 1e-7, LIFT-CAM 1e-4; float32: 1e-3; for Ablation-CAM and
Score-CAM at least ten times the model's replay noise, the change of its outputs between lone
and batched evaluation, and ? where that noise makes any check meaningless); each method's time
in forward passes of the same images without autograd (in the order of the method
columns; the first call of each method, after the split was traced once for the path
column); whether the model's parameters, buffers, train/eval flags, .grad fields and
hooks were as before; the classes of the warnings raised (messages in zoo.json, which
also has how often the part before the layer ran per method). Random weights, 10
classes, the predicted class explained."""


def write(rows: List[dict], env: Dict[str, str], out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "zoo.json").write_text(json.dumps({"environment": env, "command": command,
                                              "rows": rows}, indent=1, default=str))
    (out / "zoo.md").write_text(markdown(rows, env, command))


# ----------------------------------------------------------------------------


def selected(args: argparse.Namespace) -> List[Case]:
    cases = list(QUICK) if args.quick else all_cases()
    if args.cases:
        wanted = args.cases.split(",")
        cases = [c for c in cases if any(w in c.name for w in wanted)]
    done = {r["case"] for folder in args.skip or () for r in _rows_in(folder)}
    index, count = (int(n) for n in args.shard.split("/"))
    return [c for c in cases if c.name not in done][index - 1::count]


def _rows_in(folder: Path) -> List[dict]:
    file = folder / "zoo.json"
    return json.loads(file.read_text())["rows"] if file.exists() else []


def merged(folders: Sequence[Path]) -> Tuple[Dict[str, str], List[dict], str]:
    r"""The environment, rows (in case order) and commands of shard runs."""
    runs = [json.loads((folder / "zoo.json").read_text()) for folder in folders
            if (folder / "zoo.json").exists()]
    order = {case.name: i for i, case in enumerate(all_cases())}
    rows = sorted((r for run in runs for r in run["rows"]),
                  key=lambda r: order.get(r["case"], len(order)))
    rows = [unresolved_in_float32(r) for r in rows]
    return runs[0]["environment"], rows, " & ".join(run["command"] for run in runs)


def unresolved_in_float32(row: dict) -> dict:
    r"""An incorrect row of an earlier run that did not measure the replay
    noise, graded as a run now grades it: the noise is measured (now) in the
    row's dtype, and a row whose failures are replay methods within ten
    times it is correct, or unresolved where it swamps any check."""
    if row.get("status") != "incorrect" or "replay_noise" in row or not row["model_as_found"]:
        return row
    dtype = getattr(torch, row["dtype"])
    model, forward, layer = build(case_named(row["case"]))
    model.to(dtype)
    x = torch.randn(row["images"], 3, row["size"], row["size"],
                    generator=torch.Generator().manual_seed(1)).to(dtype)
    noise = replay_noise(forward, x)
    failing = [name for name, m in row["methods"].items() if m["correct"] is False]
    if any(name not in ("Ablation-CAM", "Score-CAM") for name in failing):
        return {**row, "replay_noise": noise}
    if 10 * noise > UNRESOLVABLE:
        return {**row, "replay_noise": noise, "status": "unresolved", "note": (
            f"the random model's outputs move by {noise:.1e} of f(x) - f(0) between lone and "
            f"batched evaluation in {row['dtype']} (measured when merging), so the replay "
            f"methods cannot be checked on it; the others are correct; {incorrect_parts(row)}")}
    passed = all(row["methods"][name]["error"] <= 10 * noise for name in failing)
    return {**row, "replay_noise": noise, "status": "correct" if passed else "incorrect"}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="",
                        help="comma-separated substrings of case names; all by default")
    parser.add_argument("--quick", action="store_true",
                        help="the subset that tests/test_zoo.py runs (a few minutes)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--list", action="store_true", help="print the case names and stop")
    parser.add_argument("--shard", default="1/1", metavar="I/N",
                        help="every N-th case from the I-th, for N processes (default 1/1)")
    parser.add_argument("--skip", type=Path, nargs="+", metavar="FOLDER",
                        help="leave out the cases already in these folders' zoo.json")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="FOLDER",
                        help="write --out from the zoo.json of shard runs, and stop")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.merge:
        env, rows, command = merged(args.merge)
        write(rows, env, args.out, command)
        return
    cases = selected(args)
    if args.list:
        print("\n".join(c.name for c in cases))
        return
    torch.set_num_threads(args.threads)
    command = " ".join(["python benchmarks/zoo.py", *sys.argv[1:]])
    env, rows = environment(args.threads), []
    for i, case in enumerate(cases, 1):
        rows.append(check_case(case))
        r = rows[-1]
        print(f"[{i}/{len(cases)}] {case.name}: {r['status']} {r.get('path', '')} "
              f"{incorrect_parts(r) if r['status'] == 'incorrect' else r.get('note', '')} "
              f"({r.get('seconds', 0):.1f} s)", flush=True)
        write(rows, env, args.out, command)


if __name__ == "__main__":
    main()
