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
(the vision transformers get a row saying where they are checked), the inner
blocks of ResNets, timm CNNs of many families at their default CAM layer, and
the hand-written models of ``benchmarks/zoo_models.py``, one per idiom of
third-party code. Random weights with lively BatchNorm statistics (nothing is
downloaded), 10 classes, random normal images, the predicted class explained.

For each case and method (every registered one, ``captum_xcam.list_methods()``,
and Captum's ``LayerGradCam``) the reference is computed here from the paper's
formula with our own hooks and loops, sharing no code with the library
(:data:`REFERENCES` maps each registry key to its check):

- from ``A`` and ``G = dy/dA`` of a forward hook and autograd: Grad-CAM
  ``w_k = mean(G)``, XGrad-CAM ``w_k = sum(A G) / sum(A)``, Grad-CAM++
  ``alpha = G^2 / (2 G^2 + sum(A) G^3)``, ``w_k = sum(alpha relu(G))``, on
  every channel; HiResCAM ``G A``, LayerCAM ``relu(G) A`` and Element-wise
  Grad-CAM ``relu(G A)`` per channel and position; EigenCAM's projection
  ``v_k (A_k - mean A_k)`` with ``v`` from the eigenvectors of the positions'
  Gram matrix (not an SVD of the activations), signed as documented;
- Ablation-CAM ``(y - y_k) / y``, the whole model re-run with channel ``k``
  zeroed by a hook, and Score-CAM ``f(X H_k) - f(0)``, the mask ``H_k`` built
  by hand (bilinear upsampling, ``align_corners=False``, min-max
  normalisation, zero baseline), SS-CAM the mean over its noisy masks
  ``H_k + delta_s`` (the documented seeded draw), IS-CAM the mean over the
  scaled masks ``(s / S) H_k``, on a few sampled channels per image;
- LIFT-CAM's completeness ``sum_k w_k = f(A) - f(0)``, relative to
  ``max(|f(A)|, |f(0)|)``, ``f(0)`` from a hook that zeroes the layer.

Each method's weights are read back from its per-channel maps
(``attr_dim_summation=False``) and the error is the largest difference from
the reference relative to the largest reference weight (for the methods with
a weight per position, and EigenCAM, the per-channel maps themselves are
compared). SS-CAM and IS-CAM run with fewer samples than their defaults
(:data:`ZOO_KWARGS`): each sample costs a Score-CAM, and the check is of the
formula. Besides: the path
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
import dataclasses
import inspect
import json
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from captum.attr import LayerGradCam  # noqa: E402

from benchmarks.common import (  # noqa: E402
    RESULTS,
    BenchmarkMethod,
    CaughtWarning,
    Environment,
    MethodCheck,
    ZooRow,
    benchmark_methods,
    command_line,
    per_example,
    recorded_warnings,
)
from benchmarks.zoo_models import HAND_WRITTEN, NUM_CLASSES  # noqa: E402
from captum_xcam import method_info, reshape_transform_for  # noqa: E402
from captum_xcam._utils.layer_tail import layer_tail  # noqa: E402
from captum_xcam.models import classification_models, default_cam_layer  # noqa: E402

#: Rows per forward pass of the perturbation methods (``perturbations_per_eval``
#: counts them per example: it is this divided by the number of images).
ROWS_PER_PASS = 64
#: SS-CAM's and IS-CAM's samples: each costs a Score-CAM; two check
#: the formula (the noise, the scales) as well as the defaults' 35 and 10.
ZOO_KWARGS = {"sscam": {"num_samples": 2}, "iscam": {"num_samples": 2}}
CAPTUM_GRAD_CAM = BenchmarkMethod(
    dataclasses.replace(method_info("gradcam"), cam=LayerGradCam), label="Captum")


def zoo_methods(n_images: int = 2) -> List[BenchmarkMethod]:
    r"""Every registered method with the zoo's settings, then Captum's
    ``LayerGradCam`` (checked against Grad-CAM's reference)."""
    return benchmark_methods(
        perturbation_kwargs={"perturbations_per_eval": per_example(ROWS_PER_PASS, n_images)},
        kwargs=ZOO_KWARGS,
    ) + [CAPTUM_GRAD_CAM]


TOLERANCE = {torch.float64: 1e-7, torch.float32: 1e-3}
LIFT_TOLERANCE = {torch.float64: 1e-4, torch.float32: 1e-3}
SAMPLED_CHANNELS = 3  # per image, for the perturbation methods
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


def hirescam_maps(ref: Reference) -> Tensor:
    return ref.G * ref.A


def layercam_maps(ref: Reference) -> Tensor:
    return torch.relu(ref.G) * ref.A


def elementwise_maps(ref: Reference) -> Tensor:
    return torch.relu(ref.G * ref.A)


def eigencam_maps(ref: Reference) -> Tuple[Tensor, Tensor]:
    r"""EigenCAM's per-channel maps ``v_k (A_k - mean A_k)`` (float64) and,
    per image, whether the documented sign rule cannot decide (the
    projection is uncorrelated with the channels' mean map). ``v`` comes
    from the top eigenvector ``u`` of the positions' Gram matrix ``M^T M``
    of the centred activations ``M`` (K x P): ``v = M u / sigma``, the
    projection ``sigma u``; signed so that the projection correlates
    non-negatively with the mean over the channels of ``A``."""
    A = ref.A.double()
    X = A.flatten(2)  # (N, K, P)
    M = X - X.mean(2, keepdim=True)
    values, vectors = torch.linalg.eigh(M.transpose(1, 2) @ M)  # ascending
    u, sigma = vectors[..., -1], values[..., -1].clamp_min(0).sqrt()
    v = (M @ u.unsqueeze(2)).squeeze(2) / sigma.clamp_min(1e-300).unsqueeze(1)
    projection = sigma.unsqueeze(1) * u
    mean_map = X.mean(1)
    centred = mean_map - mean_map.mean(1, keepdim=True)
    correlation = (projection * centred).sum(1)
    undecided = correlation.abs() <= 1e-9 * projection.norm(dim=1) * centred.norm(dim=1)
    sign = torch.where(correlation < 0, -1.0, 1.0).to(A.dtype)
    maps = (sign * torch.where(sigma > 0, 1.0, 0.0)).reshape(-1, 1, 1) * v.unsqueeze(2) * M
    return maps.reshape(A.shape), undecided


def ablation_weight(forward, layer, x, targets, ref: Reference, n: int, k: int) -> float:
    def zero_k(a: Tensor) -> Tensor:
        a = a.clone()
        a[:, k] = 0
        return a

    y_k = scores_with_layer(forward, layer, x[n:n + 1], targets[n:n + 1], zero_k)[0]
    return float((ref.y[n] - y_k) / ref.y[n])


def score_cam_mask(ref: Reference, x: Tensor, n: int, k: int) -> Tensor:
    r"""Score-CAM's mask ``H_k`` of image ``n``, at the input's resolution."""
    up = F.interpolate(ref.A[n, k][None, None], size=x.shape[2:], mode="bilinear",
                       align_corners=False)[0, 0]
    low, high = up.min(), up.max()
    # A constant map upsamples to a constant, whose mask is zero: test the map
    # itself, since bilinear interpolation of a 1x1 map varies by rounding
    # (1e-16), which min-max normalisation would blow up into a noise mask.
    constant = bool(ref.A[n, k].max() == ref.A[n, k].min())
    return torch.zeros_like(up) if constant or high == low else (up - low) / (high - low)


def setting(method: BenchmarkMethod, name: str) -> object:
    r"""The value of ``attribute``'s keyword ``name`` that ``method`` runs with."""
    if name in method.kwargs:
        return method.kwargs[name]
    return inspect.signature(method.info.cam.attribute).parameters[name].default


def score_cam_masks(method: BenchmarkMethod, mask: Tensor) -> List[Tensor]:
    r"""The masks whose score increases a Score-CAM variant averages:
    ``H``; SS-CAM's ``H + delta_s``, the noise drawn as its docstring says
    (one seeded float64 draw of shape (S, 1, height, width), times
    ``stddev``); IS-CAM's ``(s / S) H`` for s = 1..S."""
    if method.key == "scorecam":
        return [mask]
    samples = int(setting(method, "num_samples"))
    if method.key == "sscam":
        generator = torch.Generator().manual_seed(int(setting(method, "seed")))
        noise = torch.randn((samples, 1) + tuple(mask.shape), generator=generator,
                            dtype=torch.float64) * float(setting(method, "stddev"))
        return [mask + noise[s, 0].to(mask.dtype) for s in range(samples)]
    if method.key == "iscam":
        return [mask * ((s + 1) / samples) for s in range(samples)]
    raise KeyError(method.key)


@dataclass
class Replays:
    r"""The perturbation methods' references, one channel of one image at a
    time: the whole model re-run for each perturbation."""

    forward: Callable
    layer: nn.Module
    x: Tensor
    targets: Tensor
    ref: Reference

    def weight(self, method: BenchmarkMethod, n: int, k: int) -> float:
        if method.key == "ablationcam":
            return ablation_weight(self.forward, self.layer, self.x, self.targets, self.ref, n, k)
        masks = score_cam_masks(method, score_cam_mask(self.ref, self.x, n, k))
        image, target = self.x[n:n + 1], self.targets[n]
        with torch.no_grad():
            baseline = self.forward(torch.zeros_like(image))[0, target]
            masked = [self.forward(image * mask)[0, target] for mask in masks]
        return float(sum(score - baseline for score in masked) / len(masks))


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
# Checks: each method's per-channel maps against its reference


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


Check = Callable[[BenchmarkMethod, Tensor, Reference, Replays], Tuple[float, str]]


def weights_check(closed_form: Callable[[Reference], Tensor]) -> Check:
    r"""The weights read back from the maps against ``closed_form(ref)``, on
    every live channel."""

    def check(method, maps, ref, replays):
        live = live_channels(ref.A)
        return (relative_error(implied_weights(maps, ref.A)[live], closed_form(ref)[live]),
                f"{int(live.sum())} live channels")

    return check


def maps_check(closed_form: Callable[[Reference], Tensor]) -> Check:
    r"""The per-channel maps against ``closed_form(ref)``, everywhere."""

    def check(method, maps, ref, replays):
        return relative_error(maps.double(), closed_form(ref).double()), "per-channel maps"

    return check


def eigencam_check(method, maps, ref, replays) -> Tuple[float, str]:
    expected, undecided = eigencam_maps(ref)
    maps = maps.double()
    scale = max(float(expected.abs().max()), torch.finfo(torch.float64).tiny)
    gap = (maps - expected).flatten(1).abs().amax(1)
    flipped = (maps + expected).flatten(1).abs().amax(1)
    gap = torch.where(undecided, torch.minimum(gap, flipped), gap)
    return float(gap.max()) / scale, "per-channel maps, sign as documented"


def completeness_check(method, maps, ref, replays) -> Tuple[float, str]:
    total = (implied_weights(maps, ref.A) * live_channels(ref.A)).sum(1)
    scale = torch.maximum(ref.y.abs(), ref.f0.abs()).clamp_min(1e-300)
    return float(((total - (ref.y - ref.f0)).abs() / scale).max()), "completeness"


def replay_check(method, maps, ref, replays) -> Tuple[float, str]:
    weights = implied_weights(maps, ref.A)
    picked = sampled_channels(live_channels(ref.A), SAMPLED_CHANNELS)
    expected = torch.tensor([replays.weight(method, n, k) for n, k in picked],
                            dtype=torch.float64)
    actual = torch.tensor([float(weights[n, k]) for n, k in picked], dtype=torch.float64)
    return relative_error(actual, expected), f"{len(picked)} sampled channels"


#: The check of each registry key (Captum's Grad-CAM shares Grad-CAM's).
REFERENCES: Dict[str, Check] = {
    "gradcam": weights_check(gradcam_weights),
    "xgradcam": weights_check(xgrad_weights),
    "gradcampp": weights_check(gradcampp_weights),
    "hirescam": maps_check(hirescam_maps),
    "layercam": maps_check(layercam_maps),
    "elementwisegradcam": maps_check(elementwise_maps),
    "eigencam": eigencam_check,
    "liftcam": completeness_check,
    "ablationcam": replay_check,
    "scorecam": replay_check,
    "sscam": replay_check,
    "iscam": replay_check,
}


def method_error(method: BenchmarkMethod, maps: Tensor, ref: Reference,
                 replays: Replays) -> Tuple[float, str]:
    r"""The method's error against its reference, and what was compared."""
    if method.key not in REFERENCES:
        raise LookupError(f"no reference for {method.key!r} in benchmarks/zoo.py (REFERENCES)")
    return REFERENCES[method.key](method, maps, ref, replays)


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


# ----------------------------------------------------------------------------
# One case


def check_case(case: Case) -> ZooRow:
    r"""Runs every method on ``case`` and its references; returns the row:
    ``status`` ("correct", "incorrect", "unresolved", "no layer" or "error",
    with a ``note``), ``layer``, ``dtype``, ``images``, ``channels``, ``path``
    ("tail only" or "whole model") with ``reason``, ``forward_seconds``,
    ``methods`` (a :class:`MethodCheck` per method name), ``model_as_found``
    with ``changes``, ``warnings`` (:class:`CaughtWarning`) and
    ``layer_effect``."""
    row = ZooRow(case.name, case.source, case.model, case.size)
    start = time.perf_counter()
    try:
        model, forward, row.layer = build(case)
        if reshape_transform_for(model, model.get_submodule(row.layer)) is not None:
            raise NoCamLayer(
                "a vision transformer: its layer is reshaped to a grid, which this zoo's "
                "references do not do; tests/test_transformers.py checks every method on "
                "ViT, DeiT and Swin against references of their own")
        _check(case, model, forward, model.get_submodule(row.layer), row)
    except NoCamLayer as error:
        row.status, row.note = "no layer", str(error)
        return row
    except Exception as error:  # a case that cannot run at all: say why, go on
        row.status, row.note = "error", f"{type(error).__name__}: {_first_line(error)}"
    row.seconds = time.perf_counter() - start
    return row


def _check(case: Case, model: nn.Module, forward: Callable, layer: nn.Module,
           row: ZooRow) -> None:
    dtype, n_images, row.score_cam_gflop = precision(case, model, forward, layer)
    model.to(dtype)
    x = torch.randn(n_images, 3, case.size, case.size,
                    generator=torch.Generator().manual_seed(1)).to(dtype)
    row.dtype, row.images = str(dtype).replace("torch.", ""), n_images
    row.replay_noise = replay_noise(forward, x)
    before = snapshot(model)
    with torch.no_grad():
        targets = forward(x).argmax(1)
    runs = run_methods(zoo_methods(n_images), model, forward, layer, x, targets, row)
    ref = reference(forward, layer, x, targets)
    row.channels, row.layer_shape = ref.A.shape[1], list(ref.A.shape[1:])
    row.layer_effect = layer_effect(ref)
    replays = Replays(forward, layer, x, targets, ref)
    row.methods = {method.name: graded(method, entry, maps, dtype, ref, replays, row)
                   for method, entry, maps in runs}
    row.changes = changes(before, snapshot(model))
    row.model_as_found = not row.changes
    row.status, row.note = verdict(row)


def run_methods(methods: List[BenchmarkMethod], model: nn.Module, forward: Callable,
                layer: nn.Module, x: Tensor, targets: Tensor,
                row: ZooRow) -> List[Tuple[BenchmarkMethod, MethodCheck, Optional[Tensor]]]:
    r"""Every method's entry and maps, after the forward time and the path
    (which traces the split once, so that the methods' times do not include
    it) are in ``row``; the warnings go to ``row.warnings``."""
    counter = CallCounter(model, forward, x)
    try:
        row.forward_seconds = forward_seconds(forward, x)
        path_of(forward, layer, x, targets, row)
        counter.runs()
        return [(m, *run_method(m, forward, layer, x, targets, counter, row.warnings))
                for m in methods]
    finally:
        counter.handle.remove()


def verdict(row: ZooRow) -> Tuple[str, str]:
    r"""The row's status and note, from its methods' verdicts and the model's state."""
    verdicts = [m.correct for m in row.methods.values()]
    if not row.model_as_found or False in verdicts:
        return "incorrect", ""
    if None in verdicts:
        return "unresolved", (
            f"the random model's outputs move by {row.replay_noise:.1e} of f(x) - f(0) "
            f"between lone and batched evaluation in {row.dtype}, so the replay methods "
            "cannot be checked on it; the others are correct")
    return "correct", ""


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


def path_of(forward, layer, x, targets, row: ZooRow) -> None:
    r"""Which path the perturbation methods take, into ``row``."""
    start = time.perf_counter()
    with recorded_warnings(row.warnings, "path"):
        tail = layer_tail(forward, layer, (x,), None, targets, False)
    row.path, row.tail_class = tail.path, type(tail).__name__
    row.reason = getattr(tail, "reason", "")
    row.path_seconds = time.perf_counter() - start


def run_method(method: BenchmarkMethod, forward, layer, x, targets, counter: CallCounter,
               caught: List[CaughtWarning]) -> Tuple[MethodCheck, Optional[Tensor]]:
    r"""The method's entry (time, runs of the part before the layer, an
    exception) and its per-channel maps (None after an exception)."""
    maps, exception = None, None
    start = time.perf_counter()
    try:
        with recorded_warnings(caught, method.name):
            maps = method.explainer(forward, layer)(x, targets, attr_dim_summation=False).detach()
    except Exception as error:
        exception = f"{type(error).__name__}: {_first_line(error)}"
    seconds = time.perf_counter() - start
    return MethodCheck(seconds, counter.runs(), exception=exception), maps


def tolerance_of(method: BenchmarkMethod, dtype: torch.dtype, noise: float) -> float:
    r"""LIFT-CAM's completeness is looser; the replay methods' references run
    each perturbation alone, the methods in batches: their tolerance is at
    least ten times the model's :func:`replay_noise`."""
    tolerance = (LIFT_TOLERANCE if method.key == "liftcam" else TOLERANCE)[dtype]
    return max(tolerance, 10 * noise) if method.info.perturbation else tolerance


def graded(method: BenchmarkMethod, entry: MethodCheck, maps: Optional[Tensor],
           dtype: torch.dtype, ref: Reference, replays: Replays, row: ZooRow) -> MethodCheck:
    r"""The method's entry with its error, tolerance, verdict and time in
    forward passes."""
    tolerance = tolerance_of(method, dtype, row.replay_noise)
    entry = dataclasses.replace(entry, forward_passes=entry.seconds / row.forward_seconds,
                                tolerance=tolerance)
    if maps is None:
        return dataclasses.replace(entry, correct=False)
    try:
        error, compared = method_error(method, maps, ref, replays)
    except LookupError as missing:
        return dataclasses.replace(entry, correct=False, exception=str(missing))
    entry = dataclasses.replace(entry, error=error, compared=compared)
    if tolerance > UNRESOLVABLE:  # the model's own noise swamps any check
        return entry
    return dataclasses.replace(entry, correct=bool(error <= tolerance))


def _first_line(error: BaseException) -> str:
    return ((str(error).strip().splitlines() or [""])[0])[:300]


# ----------------------------------------------------------------------------
# Reporting


def summary(rows: List[ZooRow]) -> List[str]:
    checked = [r for r in rows if r.checked]
    lines = [f"- {len(rows)} cases: {len(checked)} checked, "
             f"{sum(r.status == 'correct' for r in rows)} correct in every method with "
             "the model left as found."]
    lines += [f"- Incorrect: {r.case}: {incorrect_parts(r)}." for r in rows
              if r.status == "incorrect"]
    whole = [r for r in checked if r.path == "whole model"]
    lines.append(f"- The whole model re-run for every replay in {len(whole)} case(s)"
                 + (":" if whole else "."))
    lines += [f"  - {r.case}: {r.reason or 'no reason given'}" for r in whole]
    lines += [f"- Not checked: {r.case}: {r.status}: {r.note}" for r in rows
              if r.status not in ("correct", "incorrect")]
    weak = [r.case for r in checked if r.layer_effect is not None and r.layer_effect < WEAK_EFFECT]
    if weak:
        lines.append(f"- Weak checks (zeroing the layer changes a score by less than "
                     f"{WEAK_EFFECT:.0%}): " + ", ".join(weak))
    counts: Dict[str, int] = {}
    for r in checked:
        for w in r.warnings:
            counts[w.category] = counts.get(w.category, 0) + 1
    if counts:
        lines.append("- Warnings: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
    return lines


def incorrect_parts(row: ZooRow) -> str:
    parts = [f"{name} ({entry.exception or format(entry.error, '.1e')})"
             for name, entry in row.methods.items() if entry.correct is False]
    if not row.model_as_found:
        parts.append("model changed (" + ", ".join(row.changes[:3]) + ")")
    return "; ".join(parts)


def method_cell(entry: Optional[MethodCheck]) -> str:
    if entry is None:
        return "—"  # a row of an earlier run, before the method was registered
    if entry.exception:
        return "✗ " + entry.exception[:60].replace("|", "/")
    mark = {True: "", False: "✗ ", None: "? "}[entry.correct]
    return mark + f"{entry.error:.0e}"


def table(rows: List[ZooRow]) -> List[str]:
    names = [m.name for m in zoo_methods()]
    lines = [
        "| case | layer | dtype, px, images | K | path | " + " | ".join(names)
        + " | time (x forward) | as found | warnings |",
        "| --- | --- | --- | ---: | --- |" + " ---: |" * len(names) + " --- | --- | --- |",
    ]
    for r in rows:
        if not r.checked:
            lines.append(f"| {r.case} | {r.layer} | {r.status}: {r.note[:160].replace('|', '/')} |"
                         + " |" * (len(names) + 5))
            continue
        path = r.path + (f": {r.reason}" if r.reason else "")
        times = " / ".join(f"{r.methods[n].forward_passes:.3g}" if n in r.methods else "—"
                           for n in names)
        kinds = sorted({w.category for w in r.warnings})
        lines.append(
            f"| {r.case} | {r.layer} | {r.dtype}, {r.size}, {r.images} | "
            f"{r.channels} | {path.replace('|', '/')} | "
            + " | ".join(method_cell(r.methods.get(n)) for n in names)
            + f" | {times} | {'yes' if r.model_as_found else 'NO'} | {', '.join(kinds)} |")
    return lines


def warning_lines(rows: List[ZooRow]) -> List[str]:
    r"""Each distinct warning (class and first line) with the cases it came from."""
    seen: Dict[Tuple[str, str], List[str]] = {}
    for r in rows:
        for w in r.warnings:
            cases = seen.setdefault((w.category, w.message), [])
            if r.case not in cases:
                cases.append(r.case)
    return [f"- {category}: {message} ({len(cases)} case(s): {', '.join(cases[:5])}"
            + (", ..." if len(cases) > 5 else "") + ")"
            for (category, message), cases in seen.items()]


def environment_line(env: Dict[str, object]) -> str:
    r"""The environment's line, also for the flat dict of an earlier run."""
    if "packages" in env:
        return Environment(**env).markdown()  # type: ignore[arg-type]
    return "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()) + "."


def markdown(rows: List[ZooRow], env: Dict[str, object], command: str) -> str:
    lines = ["# Model-zoo conformance", "", f"`{command}`", "", environment_line(env), "",
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
XGrad-CAM, Grad-CAM++ and Grad-CAM, sampled channels for the perturbation methods; of the
per-channel maps relative to their largest value for HiResCAM, LayerCAM, Element-wise
Grad-CAM and EigenCAM; for LIFT-CAM the completeness gap |sum_k w_k - (f(A) - f(0))| /
max(|f(A)|, |f(0)|)), marked ✗ above the tolerance (float64: 1e-7, LIFT-CAM 1e-4; float32:
1e-3; for the perturbation methods at least ten times the model's replay noise, the change
of its outputs between lone and batched evaluation, and ? where that noise makes any check
meaningless; — where the row is of an earlier run without the method); each method's time
in forward passes of the same images without autograd (in the order of the method
columns; the first call of each method, after the split was traced once for the path
column); whether the model's parameters, buffers, train/eval flags, .grad fields and
hooks were as before; the classes of the warnings raised (messages in zoo.json, which
also has how often the part before the layer ran per method). Random weights, 10
classes, the predicted class explained."""


def write(rows: List[ZooRow], env: Dict[str, object], out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "zoo.json").write_text(json.dumps(
        {"environment": env, "command": command, "rows": [r.to_json() for r in rows]},
        indent=1, default=str))
    (out / "zoo.md").write_text(markdown(rows, env, command))


# ----------------------------------------------------------------------------


def selected(args: argparse.Namespace) -> List[Case]:
    cases = list(QUICK) if args.quick else all_cases()
    if args.cases:
        wanted = args.cases.split(",")
        cases = [c for c in cases if any(w in c.name for w in wanted)]
    done = {r.case for folder in args.skip or () for r in _rows_in(folder)}
    index, count = (int(n) for n in args.shard.split("/"))
    return [c for c in cases if c.name not in done][index - 1::count]


def _rows_in(folder: Path) -> List[ZooRow]:
    file = folder / "zoo.json"
    if not file.exists():
        return []
    return [ZooRow.from_json(r) for r in json.loads(file.read_text())["rows"]]


def merged(folders: Sequence[Path]) -> Tuple[Dict[str, object], List[ZooRow], str]:
    r"""The environment, rows (in case order) and commands of shard runs."""
    runs = [json.loads((folder / "zoo.json").read_text()) for folder in folders
            if (folder / "zoo.json").exists()]
    order = {case.name: i for i, case in enumerate(all_cases())}
    rows = sorted((ZooRow.from_json(r) for run in runs for r in run["rows"]),
                  key=lambda r: order.get(r.case, len(order)))
    rows = [unresolved_in_float32(r) for r in rows]
    return runs[0]["environment"], rows, " & ".join(run["command"] for run in runs)


def unresolved_in_float32(row: ZooRow) -> ZooRow:
    r"""An incorrect row of an earlier run that did not measure the replay
    noise, graded as a run now grades it: the noise is measured (now) in the
    row's dtype, and a row whose failures are replay methods within ten
    times it is correct, or unresolved where it swamps any check."""
    if row.status != "incorrect" or row.replay_noise is not None or not row.model_as_found:
        return row
    dtype = getattr(torch, row.dtype)
    model, forward, layer = build(case_named(row.case))
    model.to(dtype)
    x = torch.randn(row.images, 3, row.size, row.size,
                    generator=torch.Generator().manual_seed(1)).to(dtype)
    noise = replay_noise(forward, x)
    replay_methods = {m.name for m in zoo_methods() if m.info.perturbation}
    failing = [name for name, m in row.methods.items() if m.correct is False]
    if any(name not in replay_methods for name in failing):
        return dataclasses.replace(row, replay_noise=noise)
    if 10 * noise > UNRESOLVABLE:
        return dataclasses.replace(row, replay_noise=noise, status="unresolved", note=(
            f"the random model's outputs move by {noise:.1e} of f(x) - f(0) between lone and "
            f"batched evaluation in {row.dtype} (measured when merging), so the replay "
            f"methods cannot be checked on it; the others are correct; {incorrect_parts(row)}"))
    passed = all(row.methods[name].error <= 10 * noise for name in failing)
    return dataclasses.replace(row, replay_noise=noise,
                               status="correct" if passed else "incorrect")


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
    command = command_line("zoo.py", argv)
    env = Environment.capture().to_json()
    rows: List[ZooRow] = []
    for i, case in enumerate(cases, 1):
        rows.append(check_case(case))
        r = rows[-1]
        print(f"[{i}/{len(cases)}] {case.name}: {r.status} {r.path} "
              f"{incorrect_parts(r) if r.status == 'incorrect' else r.note} "
              f"({r.seconds or 0:.1f} s)", flush=True)
        write(rows, env, args.out, command)


if __name__ == "__main__":
    main()
