"""LayerCAM against its formula, sum_k ReLU(G_k) * A_k per position."""
import torch

from captum_xcam import LayerLayerCam
from conftest import make_images, make_model
from reference import activations_and_gradients, summed_over_channels

TARGETS = [1, 7, 4]


def test_layer_cam_formula(architecture):
    model, layer = make_model(architecture)
    x = make_images()
    A, G = activations_and_gradients(model, layer, x, TARGETS)
    expected = summed_over_channels(A, G, lambda g, a: g.clamp(min=0) * a)
    actual = LayerLayerCam(model, layer).attribute(x, target=TARGETS)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)


def test_layer_cam_at_a_shallow_layer_keeps_its_resolution():
    model, _ = make_model("resnet18")
    x = make_images(n=2)
    A, G = activations_and_gradients(model, model.layer1, x, [3, 5])
    actual = LayerLayerCam(model, model.layer1).attribute(x, target=[3, 5])
    assert actual.shape == (2, 1) + A.shape[2:]
    torch.testing.assert_close(
        actual, (G.clamp(min=0) * A).sum(1, keepdim=True), rtol=1e-9, atol=1e-12
    )
