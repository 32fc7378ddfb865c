"""Identities that must hold: exact Shapley values on a GAP+Linear head, and
the guided wrapper against Captum's GuidedGradCam."""
import itertools
import math
import warnings

import pytest
import torch
from captum.attr import GuidedBackprop, GuidedGradCam, LayerAttribution, LayerGradCam
from torch import nn

from captum_xcam import GuidedLayerCam, LayerAblationCam, LayerLiftCam
from conftest import make_images, make_model, make_tiny
from reference import output_with_layer
from registered import METHODS, quick, target_for

CAMS = METHODS


def tiny_gap_linear_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 4),
    ).double().eval()


def exact_channel_shapley(model, layer, x, target):
    r"""Shapley values of the K channels of the layer output, a channel being
    present or zeroed, by enumerating all 2^K coalitions."""
    store = {}

    def record(module, inp, out):
        store["a"] = out.detach().clone()

    handle = layer.register_forward_hook(record)
    with torch.no_grad():
        model(x)
    handle.remove()
    A = store["a"]
    K = A.shape[1]

    def value(coalition):
        keep = torch.zeros(K, dtype=A.dtype)
        keep[list(coalition)] = 1
        return output_with_layer(model, layer, x, A * keep[None, :, None, None])[:, target]

    phi = torch.zeros(x.shape[0], K, dtype=A.dtype)
    for k in range(K):
        others = [j for j in range(K) if j != k]
        for size in range(K):
            for subset in itertools.combinations(others, size):
                weight = math.factorial(size) * math.factorial(K - size - 1) / math.factorial(K)
                phi[:, k] += weight * (value(subset + (k,)) - value(subset))
    return A, phi


def channel_weights(cam_class, model, layer, x, target, A):
    maps = cam_class(model, layer).attribute(x, target=target, attr_dim_summation=False)
    den = (A * A).flatten(2).sum(2)
    return torch.where(den > 0, (maps * A).flatten(2).sum(2) / den.clamp_min(1e-300), 0)


def test_lift_cam_weights_are_exact_shapley_values_and_scaled_ablation():
    model = tiny_gap_linear_model()
    layer = model[1]
    x = make_images(n=3, size=6)
    target = 2
    A, shapley = exact_channel_shapley(model, layer, x, target)
    lift = channel_weights(LayerLiftCam, model, layer, x, target, A)
    ablation = channel_weights(LayerAblationCam, model, layer, x, target, A)
    with torch.no_grad():
        y = model(x)[:, target]
    live = A.flatten(2).abs().sum(2) > 0  # a dead channel's weight is irrelevant
    torch.testing.assert_close(lift[live], shapley[live], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close((y[:, None] * ablation)[live], shapley[live], rtol=1e-9, atol=1e-12)


def test_guided_layer_cam_with_captum_grad_cam_equals_guided_grad_cam():
    model, layer = make_model("resnet18")
    x = make_images(n=2)
    ours = GuidedLayerCam(model, layer, cam=LayerGradCam).attribute(x, target=[3, 5])
    captum = GuidedGradCam(model, layer).attribute(x, target=[3, 5])
    torch.testing.assert_close(ours, captum, rtol=0, atol=0)


@pytest.mark.parametrize("cam_class", CAMS)
def test_guided_layer_cam_is_guided_backprop_times_upsampled_relu_cam(cam_class):
    model, layer = make_tiny()
    x = make_images(n=2, size=16)
    guided = GuidedLayerCam(model, layer, cam=cam_class).attribute(
        x, target=[3, 5], interpolate_mode="bilinear", **quick(cam_class)
    )
    cam = cam_class(model, layer).attribute(x, target=target_for(cam_class, [3, 5]),
                                            **quick(cam_class))
    expected = GuidedBackprop(model).attribute(x, target=[3, 5]) * LayerAttribution.interpolate(
        torch.relu(cam), x.shape[2:], interpolate_mode="bilinear"
    )
    torch.testing.assert_close(guided, expected, rtol=1e-9, atol=1e-12)
    assert guided.shape == x.shape


def test_guided_layer_cam_says_which_nonlinearities_it_does_not_guide():
    # Captum's GuidedBackprop changes nn.ReLU only: a ReLU6 (MobileNet,
    # EfficientNet-Lite) passes the plain gradient, and the guided variant of
    # a model without nn.ReLU is gradient times CAM. That must not be silent.
    relu6 = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU6(), nn.Conv2d(4, 4, 3), nn.ReLU6(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.warns(UserWarning, match=r"ReLU6 x2.*no nn\.ReLU at all.*plain gradient"):
        GuidedLayerCam(relu6, relu6[2])
    mixed = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.SiLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.warns(UserWarning, match=r"1 nn\.ReLU modules are guided, but its SiLU x1"):
        GuidedLayerCam(mixed, mixed[2])
    model, layer = make_tiny()  # ReLUs only: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GuidedLayerCam(model, layer)
