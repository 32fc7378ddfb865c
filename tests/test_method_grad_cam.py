"""Grad-CAM: the same maps as Captum's LayerGradCam, grad_kwargs included."""
import pytest
import torch
from captum.attr import LayerGradCam as CaptumLayerGradCam

from captum_xcam import LayerGradCam
from conftest import make_images, make_model
from reference import activations_and_gradients

TARGETS = [1, 7, 4]


def test_grad_cam_equals_captum(architecture):
    model, layer = make_model(architecture)
    x = make_images(n=2)
    targets = TARGETS[:2]
    ours = LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)
    captum = CaptumLayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)
    torch.testing.assert_close(ours, captum, rtol=1e-9, atol=1e-12)


def test_grad_cam_formula():
    model, layer = make_model("vgg11_bn")
    x = make_images()
    A, G = activations_and_gradients(model, layer, x, TARGETS)
    expected = (G.mean((2, 3), keepdim=True) * A).sum(1, keepdim=True)
    torch.testing.assert_close(
        LayerGradCam(model, layer).attribute(x, target=TARGETS), expected, rtol=1e-9, atol=1e-12
    )


def test_grad_kwargs_reach_autograd_as_in_captum():
    model, layer = make_model("resnet18")
    x = make_images(n=2)
    kwargs = {"retain_graph": True}
    ours = LayerGradCam(model, layer).attribute(x, target=[1, 2], grad_kwargs=kwargs)
    captum = CaptumLayerGradCam(model, layer).attribute(x, target=[1, 2], grad_kwargs=kwargs)
    torch.testing.assert_close(ours, captum, rtol=1e-9, atol=1e-12)
    with pytest.raises(TypeError, match="not_an_autograd_option"):
        LayerGradCam(model, layer).attribute(
            x, target=[1, 2], grad_kwargs={"not_an_autograd_option": 1}
        )
