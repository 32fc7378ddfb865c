"""Element-wise Grad-CAM against its formula, sum_k ReLU(G_k * A_k)."""
import torch

from captum_xcam import LayerElementWiseGradCam
from conftest import make_images, make_model
from reference import activations_and_gradients, summed_over_channels

TARGETS = [1, 7, 4]


def test_element_wise_grad_cam_formula(architecture):
    model, layer = make_model(architecture)
    x = make_images()
    A, G = activations_and_gradients(model, layer, x, TARGETS)
    expected = summed_over_channels(A, G, lambda g, a: torch.clamp(g * a, min=0))
    actual = LayerElementWiseGradCam(model, layer).attribute(x, target=TARGETS)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)
    assert (actual >= 0).all()  # non-negative before any ReLU of the map
    per_channel = LayerElementWiseGradCam(model, layer).attribute(
        x, target=TARGETS, attr_dim_summation=False
    )
    torch.testing.assert_close(per_channel, torch.clamp(G * A, min=0), rtol=1e-9, atol=1e-12)
