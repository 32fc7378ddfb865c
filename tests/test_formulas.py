"""Each method against an independent computation of its paper's formula,
on five torchvision architectures with random weights."""
from types import SimpleNamespace

import pytest
import torch
from captum.attr import LayerGradCam

from captum_xcam import (
    LayerAblationCam,
    LayerGradCamPlusPlus,
    LayerLiftCam,
    LayerScoreCam,
    LayerXGradCam,
)
from conftest import make_images, make_model
from reference import (
    ablated_score,
    activations_and_gradients,
    gradcampp_weights,
    implied_weights,
    output_with_layer,
    score_cam_weight,
    scores_of,
    xgrad_weights,
)

TARGETS = [1, 7, 4]


def per_channel(cam_class, model, layer, x, **kwargs):
    r"""The method's weighted channels (N, K, ...), without summation."""
    return cam_class(model, layer).attribute(
        x, target=TARGETS, attr_dim_summation=False, **kwargs
    )


def first_conv_calls(model):
    r"""Counts the calls of the model's first convolution, which is before the
    layer (ResNet) or inside it (the others, whose layer is ``features``)."""
    counter = SimpleNamespace(calls=0)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))

    def count(module, inputs, output):
        counter.calls += 1

    conv.register_forward_hook(count)
    return counter


def test_xgrad_cam_formula(architecture):
    model, layer = make_model(architecture)
    x = make_images()
    A, G = activations_and_gradients(model, layer, x, TARGETS)
    expected = (xgrad_weights(A, G)[:, :, None, None] * A).sum(1, keepdim=True)
    actual = LayerXGradCam(model, layer).attribute(x, target=TARGETS)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)


def test_grad_cam_plus_plus_formula(architecture):
    model, layer = make_model(architecture)
    x = make_images(n=2)
    A, G = activations_and_gradients(model, layer, x, TARGETS[:2])
    expected = (gradcampp_weights(A, G)[:, :, None, None] * A).sum(1, keepdim=True)
    actual = LayerGradCamPlusPlus(model, layer).attribute(x, target=TARGETS[:2])
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)


def test_ablation_cam_brute_force(architecture):
    model, layer = make_model(architecture)
    x = make_images(n=2)
    targets = TARGETS[:2]
    with torch.no_grad():
        y = scores_of(model(x), targets)
    A, _ = activations_and_gradients(model, layer, x, targets)
    start = first_conv_calls(model)
    maps = LayerAblationCam(model, layer).attribute(
        x, target=targets, attr_dim_summation=False, perturbations_per_eval=61
    )
    # The model up to the layer ran once; only the part after it was replayed.
    assert start.calls == 1
    weights = implied_weights(maps, A)
    g = torch.Generator().manual_seed(1)
    for n, t in enumerate(targets):
        live = (A[n].flatten(1).abs().sum(1) > 0).nonzero().flatten()
        for k in live[torch.randperm(len(live), generator=g)[:6]].tolist():
            y_k = ablated_score(model, layer, x, n, k, t)
            expected = (float(y[n]) - y_k) / float(y[n])
            assert weights[n, k].item() == pytest.approx(expected, rel=1e-7, abs=1e-10)


def test_score_cam_brute_force(architecture):
    model, layer = make_model(architecture)
    x = make_images(n=2)
    baseline = torch.full_like(x, 0.3)
    A, _ = activations_and_gradients(model, layer, x, TARGETS[:2])
    maps = LayerScoreCam(model, layer).attribute(
        x, target=TARGETS[:2], attr_dim_summation=False, baselines=0.3, perturbations_per_eval=64
    )
    weights = implied_weights(maps, A)
    g = torch.Generator().manual_seed(2)
    for n, t in enumerate(TARGETS[:2]):
        for k in torch.randperm(A.shape[1], generator=g)[:5].tolist():
            expected = score_cam_weight(model, A, x, baseline, n, k, t)
            assert weights[n, k].item() == pytest.approx(expected, rel=1e-7, abs=1e-10)


def test_score_cam_channel_softmax_is_softmax_of_weights():
    model, layer = make_model("resnet18")
    x = make_images(n=2)
    A, _ = activations_and_gradients(model, layer, x, TARGETS[:2])
    plain = LayerScoreCam(model, layer).attribute(x, target=TARGETS[:2], attr_dim_summation=False)
    soft = LayerScoreCam(model, layer).attribute(
        x, target=TARGETS[:2], attr_dim_summation=False, channel_softmax=True
    )
    expected = torch.softmax(implied_weights(plain, A), dim=1)
    live = A.flatten(2).abs().sum(2) > 0  # the weight of an all-zero channel is invisible
    torch.testing.assert_close(
        implied_weights(soft, A)[live], expected[live], rtol=1e-9, atol=1e-12
    )


def test_score_cam_constant_channel_gets_zero_weight():
    # A layer whose output has a constant channel: its mask is zero, so the
    # masked input is the baseline and the weight is exactly 0.
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    ).double()
    with torch.no_grad():
        model[0].weight[2] = 0
        model[0].bias[2] = 0.5
    x = make_images(n=2, size=8)
    maps = LayerScoreCam(model, model[1]).attribute(x, target=0, attr_dim_summation=False)
    assert torch.all(maps[:, 2] == 0)
    assert torch.any(maps[:, 0] != 0)


def test_score_cam_mask_of_a_constant_map_is_zero_after_upsampling():
    # Bilinear upsampling of a 1x1 map varies by an ulp; normalised, that
    # rounding noise would become a full [0, 1] mask (it matters to SS-CAM,
    # which replays constant channels).
    from captum_xcam._core.score_cam import upsampled_masks

    maps = torch.tensor([[[0.7342 * 3.3]], [[0.5]]], dtype=torch.float64)
    masks = upsampled_masks(maps, (32, 32))
    assert torch.equal(masks, torch.zeros(2, 1, 32, 32, dtype=torch.float64))


def test_lift_cam_completeness(architecture):
    # sum_k w_k = f(A) - f(0): the DeepLIFT contributions add up to the
    # difference made by zeroing the whole layer output.
    model, layer = make_model(architecture)
    x = make_images()
    A, _ = activations_and_gradients(model, layer, x, TARGETS)
    start = first_conv_calls(model)
    maps = per_channel(LayerLiftCam, model, layer, x)
    assert start.calls == 1  # DeepLift ran on the part after the layer alone
    weights = implied_weights(maps, A)
    f_a = scores_of(output_with_layer(model, layer, x, A), TARGETS)
    f_0 = scores_of(output_with_layer(model, layer, x, torch.zeros_like(A)), TARGETS)
    torch.testing.assert_close(weights.sum(1), f_a - f_0, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("architecture", ["resnet18", "mobilenet_v2", "efficientnet_b0"])
def test_lift_cam_on_linear_tail_is_activation_times_gradient(architecture):
    # After these layers come pooling, dropout and one linear layer: every
    # DeepLIFT multiplier is the gradient, so C(A) = A * dy/dA.
    model, layer = make_model(architecture)
    x = make_images()
    A, G = activations_and_gradients(model, layer, x, TARGETS)
    expected = (A * G).flatten(2).sum(2)
    weights = implied_weights(per_channel(LayerLiftCam, model, layer, x), A)
    torch.testing.assert_close(weights, expected, rtol=1e-8, atol=1e-12)


def test_lift_cam_densenet_closed_form():
    # DenseNet: features -> relu -> global average pool -> linear. With the
    # zero reference the Rescale multiplier of that ReLU is relu(a)/a, so
    # w_k = W[t, k] * mean_ij relu(A_k,ij).
    model, layer = make_model("densenet121")
    x = make_images()
    A, _ = activations_and_gradients(model, layer, x, TARGETS)
    W = model.classifier.weight
    expected = torch.stack(
        [W[t] * torch.relu(A[n]).flatten(1).mean(1) for n, t in enumerate(TARGETS)]
    )
    weights = implied_weights(per_channel(LayerLiftCam, model, layer, x), A)
    torch.testing.assert_close(weights, expected.detach(), rtol=1e-8, atol=1e-12)


def test_lift_cam_vgg_rescale_chain():
    # VGG: features -> adaptive avg pool (linear) -> Linear, ReLU, Dropout,
    # Linear, ReLU, Dropout, Linear. DeepLIFT's Rescale rule by hand, with the
    # reference pushed through the same layers from a zero layer output.
    model, layer = make_model("vgg11_bn")
    x = make_images()
    A, _ = activations_and_gradients(model, layer, x, TARGETS)
    fc1, fc2, fc3 = model.classifier[0], model.classifier[3], model.classifier[6]
    expected = []
    for n, t in enumerate(TARGETS):
        a = A[n : n + 1].clone().requires_grad_()
        z = torch.flatten(model.avgpool(a), 1)
        with torch.no_grad():
            z0 = torch.zeros_like(z)
            h1, h1r = fc1(z), fc1(z0)
            r1, r1r = torch.relu(h1), torch.relu(h1r)
            h2, h2r = fc2(r1), fc2(r1r)
            r2, r2r = torch.relu(h2), torch.relu(h2r)
            m1 = torch.where((h1 - h1r).abs() > 1e-10, (r1 - r1r) / (h1 - h1r), (h1 > 0).double())
            m2 = torch.where((h2 - h2r).abs() > 1e-10, (r2 - r2r) / (h2 - h2r), (h2 > 0).double())
            mult_r2 = fc3.weight[t][None]
            mult_h2 = mult_r2 * m2
            mult_h1 = (mult_h2 @ fc2.weight) * m1
            mult_z = mult_h1 @ fc1.weight
        (mult_a,) = torch.autograd.grad(z, a, grad_outputs=mult_z)  # pooling is linear
        expected.append((A[n] * mult_a[0]).flatten(1).sum(1))
    weights = implied_weights(per_channel(LayerLiftCam, model, layer, x), A)
    torch.testing.assert_close(weights, torch.stack(expected), rtol=1e-8, atol=1e-12)


def test_xgrad_cam_equals_grad_cam_on_gap_linear_head():
    # ResNet layer4 feeds global average pooling and one linear layer: the
    # gradient is the same at every position, so the weights coincide.
    model, layer = make_model("resnet18")
    x = make_images()
    ours = LayerXGradCam(model, layer).attribute(x, target=TARGETS)
    captum = LayerGradCam(model, layer).attribute(x, target=TARGETS)
    torch.testing.assert_close(ours, captum, rtol=1e-9, atol=1e-12)
