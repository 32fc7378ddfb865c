"""HiResCAM against its formula, sum_k G_k * A_k per position, from own hooks."""
import torch
from captum.attr import LayerGradCam

from captum_xcam import LayerHiResCam
from conftest import make_images, make_model
from reference import activations_and_gradients, summed_over_channels

TARGETS = [1, 7, 4]


def test_hires_cam_formula(architecture):
    model, layer = make_model(architecture)
    x = make_images()
    A, G = activations_and_gradients(model, layer, x, TARGETS)
    expected = summed_over_channels(A, G, lambda g, a: g * a)
    actual = LayerHiResCam(model, layer).attribute(x, target=TARGETS)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)
    per_channel = LayerHiResCam(model, layer).attribute(x, target=TARGETS, attr_dim_summation=False)
    torch.testing.assert_close(per_channel, G * A, rtol=1e-9, atol=1e-12)


def test_hires_cam_is_grad_cam_before_global_average_pooling_and_a_linear_layer():
    # ResNet's layer4 feeds GAP and fc: the gradient is constant over positions.
    model, layer = make_model("resnet18")
    x = make_images()
    torch.testing.assert_close(
        LayerHiResCam(model, layer).attribute(x, target=TARGETS),
        LayerGradCam(model, layer).attribute(x, target=TARGETS),
        rtol=1e-9,
        atol=1e-12,
    )


def test_hires_cam_sums_to_the_score_minus_the_bias_on_a_gap_linear_head():
    # y = b + W mean_ij A_ij and G = W / Z: sum_ij sum_k G A = y - b.
    model, layer = make_model("resnet18")
    x = make_images()
    with torch.no_grad():
        y = model(x)[torch.arange(3), TARGETS]
    cam = LayerHiResCam(model, layer).attribute(x, target=TARGETS)
    torch.testing.assert_close(cam.flatten(1).sum(1), y - model.fc.bias[TARGETS].detach())
