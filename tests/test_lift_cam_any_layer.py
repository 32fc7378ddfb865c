"""LIFT-CAM at any layer: every operation after the layer gets a DeepLIFT rule,
so the weights add up to f(A) - f(0) (summation to delta), checked against
the model run with its own hooks; equal to exact Shapley values (every subset
of channels enumerated) where the tail is linear; a warning with the measured
gap where an operation has no rule."""
import itertools
import math
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from captum_xcam import LayerLiftCam, LiftCompletenessWarning
from conftest import make_images, randomise
from reference import output_with_layer


def layer_output(model, layer, x):
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.setdefault("a", o.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return store["a"]


def lift_weights(model, layer, x, targets):
    r"""LIFT-CAM's channel weights, read back from its per-channel maps
    ``w_k A_k``, and the warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maps = LayerLiftCam(model, layer).attribute(x, target=targets, attr_dim_summation=False)
    a = layer_output(model, layer, x)
    norms = (a * a).flatten(2).sum(2)
    weights = torch.where(norms > 0, (maps * a).flatten(2).sum(2) / norms.clamp_min(1e-300), 0)
    return weights, a, [w for w in caught if issubclass(w.category, LiftCompletenessWarning)]


def completeness_gap(model, layer, x):
    r"""max over examples of |sum_k w_k - (f(A) - f(0))| / max(|f(A)|, |f(0)|)."""
    with torch.no_grad():
        targets = model(x).argmax(1).tolist()
    weights, a, caught = lift_weights(model, layer, x, targets)
    rows = torch.arange(len(x))
    with torch.no_grad():
        y = model(x)[rows, targets]
    y0 = output_with_layer(model, layer, x, torch.zeros_like(a))[rows, targets]
    gap = ((weights.sum(1) - (y - y0)).abs() / torch.maximum(y.abs(), y0.abs())).max()
    return float(gap), caught


class SharedActivation(nn.Module):
    r"""One nn.ReLU module called everywhere, before and after the layer."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.conv1, self.layer = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.conv3, self.fc1, self.fc2 = nn.Conv2d(8, 8, 3), nn.Linear(8, 8), nn.Linear(8, 5)

    def forward(self, x):
        h = self.layer(self.act(self.conv1(x)))
        h = self.act(self.conv3(self.act(h)))
        return self.fc2(self.act(self.fc1(h.mean((2, 3)))))


class FunctionalTail(nn.Module):
    r"""A tail written with functions, and activations Captum has no rule for,
    a gate (x * sigmoid(x)), squeeze-excitation and a quotient."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.layer = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.conv, self.se = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 8)
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 5)
        self.silu, self.gelu, self.hardswish = nn.SiLU(), nn.GELU(), nn.Hardswish()

    def forward(self, x):
        h = torch.relu(self.layer(F.relu(self.stem(x))))
        h = F.max_pool2d(h, 2)
        h = self.silu(self.conv(h)) + h * torch.sigmoid(h)
        scale = torch.sigmoid(self.se(h.mean((2, 3))))[:, :, None, None]
        h = F.gelu(h * scale) + self.hardswish(h).relu()
        z = self.gelu(self.fc1(h.mean((2, 3))))
        z = z / (1 + F.relu6(z).abs()) + F.silu(z)
        return self.fc2(F.layer_norm(z, (8,)))


def convnext_tiny_timm():
    model = timm.create_model("convnext_tiny", pretrained=False, num_classes=10)
    return model, model.stages[3]


def convnext_tiny_torchvision():
    model = models.convnext_tiny(num_classes=10)
    return model, model.features[7]


def resnet(name, layer):
    def make():
        model = getattr(models, name)(num_classes=10)
        return model, getattr(model, layer)

    return make


CASES = {
    "resnet18.layer2": resnet("resnet18", "layer2"),
    "resnet18.layer3": resnet("resnet18", "layer3"),
    "resnet50.layer3": resnet("resnet50", "layer3"),
    "convnext_tiny.features[7]": convnext_tiny_torchvision,
    "timm convnext_tiny.stages[3]": convnext_tiny_timm,
    "shared activation": lambda: (lambda m: (m, m.layer))(SharedActivation()),
    "functional tail": lambda: (lambda m: (m, m.layer))(FunctionalTail()),
}


@pytest.mark.parametrize("case", list(CASES))
def test_lift_cam_is_complete_at_any_layer(case):
    torch.manual_seed(0)
    model, layer = CASES[case]()
    model = randomise(model).double().eval()
    gap, caught = completeness_gap(model, layer, make_images(n=2, size=64))
    assert gap < 1e-4
    assert caught == []


def test_the_functional_tail_is_incomplete_with_the_gradient_alone():
    # The oracle above can fail: Captum's DeepLift on the untouched tail
    # (the whole model re-run, no rules for functions) misses by far.
    from captum.attr import DeepLift

    torch.manual_seed(0)
    model = randomise(FunctionalTail()).double().eval()
    x = make_images(n=2, size=16)
    a = layer_output(model, model.layer, x)

    class Tail(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, value):
            handle = model.layer.register_forward_hook(lambda m, i, o: value)
            try:
                return model(x.repeat(len(value) // len(x), 1, 1, 1))
            finally:
                handle.remove()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        contributions = DeepLift(Tail()).attribute(a.clone(), baselines=a * 0, target=0)
    y = output_with_layer(model, model.layer, x, a)[:, 0]
    y0 = output_with_layer(model, model.layer, x, a * 0)[:, 0]
    gap = ((contributions.sum((1, 2, 3)) - (y - y0)).abs() / torch.maximum(y.abs(), y0.abs()))
    assert gap.max() > 1e-3


class LinearTail(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU())
        self.layer = nn.Sequential(nn.Conv2d(6, 6, 3), nn.ReLU())
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(self.layer(self.stem(x)).mean((2, 3)))


def test_lift_cam_equals_exact_shapley_values_where_the_tail_is_linear():
    torch.manual_seed(0)
    model = LinearTail().double().eval()
    x = make_images(n=2, size=12)
    targets = [1, 3]
    weights, a, _ = lift_weights(model, model.layer, x, targets)
    k = a.shape[1]
    shapley = torch.zeros(2, k, dtype=torch.float64)
    for n, t in enumerate(targets):
        def value(kept):
            mask = torch.zeros(1, k, 1, 1, dtype=torch.float64)
            mask[0, list(kept)] = 1
            return float(output_with_layer(model, model.layer, x[n:n + 1], a[n:n + 1] * mask)[0, t])

        for channel in range(k):
            others = [c for c in range(k) if c != channel]
            for size in range(k):
                for subset in itertools.combinations(others, size):
                    share = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
                    shapley[n, channel] += share * (value(subset + (channel,)) - value(subset))
    torch.testing.assert_close(weights, shapley, rtol=1e-9, atol=1e-12)


class ErfTail(nn.Module):
    r"""``torch.erf`` has no DeepLIFT rule here."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Conv2d(3, 6, 3)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.erf(self.layer(x) * 3).mean((2, 3)) ** 1)


def test_an_operation_without_a_rule_warns_with_the_measured_gap():
    torch.manual_seed(0)
    model = ErfTail().double().eval()
    gap, caught = completeness_gap(model, model.layer, make_images(n=2, size=8))
    assert gap > 1e-6
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "erf" in message and "only to within" in message
    assert f"{gap:.1e}" in message
