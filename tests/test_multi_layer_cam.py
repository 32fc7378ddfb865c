"""MultiLayerCam: one CAM on several layers, upsampled to the input and fused;
against the fusion formulas computed here from the single-layer CAMs, on
hand-made maps, with every registered method, and its errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution
from captum.attr import LayerGradCam as CaptumLayerGradCam
from torch import nn

from captum_xcam import LayerEigenCam, LayerGradCam, LayerLayerCam, LayerScoreCam
from captum_xcam._core.multi_layer_cam import MultiLayerCam
from conftest import make_images, make_model, make_tiny
from registered import METHODS, quick, target_for
from test_model_state import (
    FailsOnCall,
    assert_unchanged,
    model_in_train_mode_with_grads,
    snapshot,
)

TARGETS = [1, 7]
# Three stages of each architecture, at three resolutions (64x64 inputs).
STAGES = {
    "resnet18": lambda m: [m.layer2, m.layer3, m.layer4],  # 8x8, 4x4, 2x2
    "mobilenet_v2": lambda m: [m.features[6], m.features[13], m.features[18]],  # 8, 4, 2
}


@pytest.fixture(scope="module", params=list(STAGES))
def staged(request):
    r"""A model, its three stages, images, and each stage's LayerCAM map (no ReLU)."""
    model, _ = make_model(request.param)
    layers = STAGES[request.param](model)
    x = make_images(n=2)
    maps = [LayerLayerCam(model, layer).attribute(x, target=TARGETS) for layer in layers]
    return model, layers, x, maps


def upsampled(m, x):
    return F.interpolate(m, size=x.shape[2:], mode="bilinear", align_corners=False)


def per_example_peak(m, signed=False):
    flat = m.flatten(1)
    peak = flat.amax(1) if signed else flat.abs().amax(1)
    return peak.reshape(-1, 1, 1, 1)


def expected_fusion(maps, x, fusion):
    if fusion == "layercam":  # the paper's Eq. 9 on ReLU'd maps, then the maximum
        scaled = [torch.tanh(2 * m / per_example_peak(m, signed=True)) for m in maps]
        return torch.stack([upsampled(m, x) for m in scaled]).amax(0)
    normalised = torch.stack([upsampled(m / per_example_peak(m), x) for m in maps])
    return normalised.mean(0) if fusion == "mean" else normalised.amax(0)


@pytest.mark.parametrize("fusion, relu", [("mean", False), ("max", False), ("layercam", True)])
def test_fusion_against_its_formula(staged, fusion, relu):
    model, layers, x, maps = staged
    if relu:
        maps = [m.clamp(min=0) for m in maps]
    assert all((m.flatten(1).amax(1) > 0).all() for m in maps)  # no fallback in play
    # (MobileNet's stages differ in magnitude by 1e6: unnormalised, the last would dominate.)
    cam = MultiLayerCam(model, layers, cam=LayerLayerCam, fusion=fusion)
    actual = cam.attribute(x, target=TARGETS, relu_attributions=relu)
    assert actual.shape == (2, 1, 64, 64)
    torch.testing.assert_close(actual, expected_fusion(maps, x, fusion), rtol=1e-9, atol=1e-12)


def test_one_layer_mean_without_normalisation_is_the_upsampled_cam(staged):
    model, layers, x, maps = staged
    for mode in ("bilinear", "nearest"):
        cam = MultiLayerCam(
            model, [layers[1]], cam=LayerLayerCam, normalize=False, interpolate_mode=mode
        )
        expected = LayerAttribution.interpolate(maps[1], tuple(x.shape[2:]), mode)
        torch.testing.assert_close(cam.attribute(x, target=TARGETS), expected, rtol=0, atol=0)


# Hand-made maps: a CAM class that returns given maps, one per layer.


def fixed_cam(maps_by_layer):
    class FixedCam(LayerAttribution):
        calls = []

        def __init__(self, forward_func, layer, device_ids=None, **kwargs):
            super().__init__(forward_func, layer, device_ids)
            self.kwargs = kwargs

        def attribute(self, inputs, target=None, additional_forward_args=None,
                      attribute_to_layer_input=False, relu_attributions=False, **kwargs):
            self.calls.append(dict(
                inputs=inputs, target=target, additional_forward_args=additional_forward_args,
                attribute_to_layer_input=attribute_to_layer_input,
                relu_attributions=relu_attributions, **kwargs,
            ))
            m = maps_by_layer[self.layer]
            return m.clamp(min=0) if relu_attributions else m

    return FixedCam


def two_layer_model():
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)).double()


def hand_maps(model):
    # Example 0: M1 = [[0, 1], [2, 4]] (max 4), M2 = [[3, 0], [0, -3]] (max 3).
    # Example 1: M1 all zero, M2 all negative.
    m1 = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]], [[[0.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64)
    m2 = torch.tensor(
        [[[[3.0, 0.0], [0.0, -3.0]]], [[[-1.0, -2.0], [-4.0, -4.0]]]], dtype=torch.float64
    )
    return {model[0]: m1, model[1]: m2}


X2 = torch.zeros(2, 3, 2, 2, dtype=torch.float64)  # the maps' own size: no interpolation
t = math.tanh


@pytest.mark.parametrize("fusion, expected", [
    # tanh(2 M1 / 4) = tanh(0, .5, 1, 2); tanh(2 M2 / 3) = tanh(2, 0, 0, -2); their maximum.
    # Example 1: zeros (no NaN from 0 / 0) beat tanh of the negative map.
    ("layercam", [[[t(2), t(0.5)], [t(1), t(2)]], [[0, 0], [0, 0]]]),
    # M1 / 4 = (0, .25, .5, 1); M2 / 3 = (1, 0, 0, -1); example 1: 0 and M2 / 4.
    ("mean", [[[0.5, 0.125], [0.25, 0.0]], [[-0.125, -0.25], [-0.5, -0.5]]]),
    ("max", [[[1.0, 0.25], [0.5, 1.0]], [[0, 0], [0, 0]]]),
])
def test_fusions_on_hand_made_maps(fusion, expected):
    model = two_layer_model()
    cam = MultiLayerCam(model, [model[0], model[1]], cam=fixed_cam(hand_maps(model)), fusion=fusion)
    expected = torch.tensor(expected, dtype=torch.float64).unsqueeze(1)
    torch.testing.assert_close(cam.attribute(X2), expected, rtol=1e-12, atol=1e-15)


def test_layercam_scaling_keeps_an_all_negative_map_in_order():
    # max M = -1 < 0: dividing by it would flip the map; max|M| = 4 keeps its order.
    model = two_layer_model()
    cam = MultiLayerCam(model, [model[1]], cam=fixed_cam(hand_maps(model)), fusion="layercam")
    actual = cam.attribute(X2)[1, 0]
    expected = torch.tensor([[t(-0.5), t(-1)], [t(-2), t(-2)]], dtype=torch.float64)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-15)


def test_layercam_gamma_and_relu_reach_the_scaling():
    # With the ReLU the examples' M2 = (3, 0, 0, 0) and 0: tanh(gamma M2 / 3) alone.
    model = two_layer_model()
    cam = MultiLayerCam(
        model, [model[1]], cam=fixed_cam(hand_maps(model)), fusion="layercam", gamma=0.5
    )
    actual = cam.attribute(X2, relu_attributions=True)
    expected = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    expected[0, 0, 0, 0] = t(0.5)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-15)


def test_arguments_reach_every_layer_cam():
    model = two_layer_model()
    cam_class = fixed_cam(hand_maps(model))
    transform = object()
    cam = MultiLayerCam(model, [model[0], model[1]], cam=cam_class, reshape_transform=transform)
    assert [c.kwargs for c in cam.cams] == [{"reshape_transform": transform}] * 2
    extra = (torch.ones(1),)
    cam.attribute((X2,), target=[0, 1], additional_forward_args=extra,
                  attribute_to_layer_input=True, relu_attributions=True, num_samples=3)
    assert len(cam_class.calls) == 2
    for call in cam_class.calls:
        assert call["inputs"][0] is X2 and call["target"] == [0, 1]
        assert call["additional_forward_args"] is extra
        assert call["attribute_to_layer_input"] and call["relu_attributions"]
        assert call["num_samples"] == 3


# Every registered method, on a small model with two layers of two resolutions.


@pytest.mark.parametrize("cam_class", METHODS, ids=lambda c: c.method_info.key)
def test_every_method_works_as_cam(cam_class):
    model, layer = make_tiny()
    x = make_images(n=2, size=16)
    fused = MultiLayerCam(model, [model.stem, layer], cam=cam_class, fusion="layercam")
    attr = fused.attribute(
        x, target=target_for(cam_class, [1, 2]), relu_attributions=True, **quick(cam_class)
    )
    assert attr.shape == (2, 1, 16, 16)
    assert torch.isfinite(attr).all()


def test_a_registry_key_is_its_class():
    model, layer = make_tiny()
    x = make_images(n=2, size=16)
    by_key = MultiLayerCam(model, [model.stem, layer], cam="layercam", fusion="max")
    by_class = MultiLayerCam(model, [model.stem, layer], cam=LayerLayerCam, fusion="max")
    assert all(type(c) is LayerLayerCam for c in by_key.cams)
    torch.testing.assert_close(by_key.attribute(x, target=[1, 2]), by_class.attribute(x, [1, 2]))


def test_default_cam_is_grad_cam_and_tuple_inputs_work():
    model, layer = make_tiny()
    x = make_images(n=2, size=16)
    fused = MultiLayerCam(model, [model.stem, layer])
    assert all(type(c) is LayerGradCam for c in fused.cams)
    torch.testing.assert_close(fused.attribute((x,), target=[1, 2]), fused.attribute(x, [1, 2]))


def test_a_target_free_cam_handles_the_target_itself():
    model, layer = make_tiny()
    x = make_images(n=2, size=16)
    fused = MultiLayerCam(model, [model.stem, layer], cam=LayerEigenCam)
    expected = fused.attribute(x)
    with pytest.warns(UserWarning, match="target-free"):
        actual = fused.attribute(x, target=[1, 2])
    torch.testing.assert_close(actual, expected)


def test_repr_shows_cam_layers_and_fusion():
    model, layer = make_tiny()
    fused = MultiLayerCam(model, [model.stem, layer], cam="layercam", fusion="layercam")
    assert repr(fused) == "MultiLayerCam(cam=LayerLayerCam, layers=2, fusion='layercam', gamma=2.0)"
    assert "normalize=False" in repr(MultiLayerCam(model, [layer], normalize=False))


# Errors.


def test_errors_name_the_problem():
    model, layer = make_tiny()
    with pytest.raises(ValueError, match="'mean', 'max', 'layercam'"):
        MultiLayerCam(model, [layer], fusion="sum")
    with pytest.raises(ValueError, match="layers is empty"):
        MultiLayerCam(model, [])
    with pytest.raises(TypeError, match=r"pass \[layer\]"):
        MultiLayerCam(model, layer)
    with pytest.raises(ValueError, match="not a submodule"):
        MultiLayerCam(model, [layer, nn.Conv2d(3, 3, 1)])
    with pytest.raises(ValueError, match="Unknown CAM method"):
        MultiLayerCam(model, [layer], cam="gradcamm")
    with pytest.raises(TypeError, match="not an instance"):
        MultiLayerCam(model, [layer], cam=LayerGradCam(model, layer))
    with pytest.raises(ValueError, match="normalize=False applies only"):
        MultiLayerCam(model, [layer], fusion="layercam", normalize=False)
    with pytest.raises(ValueError, match="gamma"):
        MultiLayerCam(model, [layer], fusion="layercam", gamma=0)
    with pytest.raises(ValueError, match="spatial size"):
        MultiLayerCam(lambda v: v, [nn.Linear(2, 2)]).attribute(torch.ones(2, 2))


# The model is left as found.


@pytest.mark.parametrize("cam_class", [LayerGradCam, LayerScoreCam, CaptumLayerGradCam])
def test_model_unchanged_after_success(cam_class):
    # Captum's LayerGradCam runs a train-mode model as it is (BatchNorm
    # statistics move): MultiLayerCam restores it.
    model, layer = model_in_train_mode_with_grads()
    before = snapshot(model)
    x = make_images(n=2, size=16)
    MultiLayerCam(model, [model.stem, layer], cam=cam_class).attribute(x, target=[1, 2])
    assert_unchanged(before, snapshot(model))


@pytest.mark.parametrize("cam_class", [LayerGradCam, CaptumLayerGradCam])
def test_model_unchanged_after_an_exception_in_a_later_layer(cam_class):
    # One forward pass per layer: the second fails after the first layer's CAM.
    model, layer = model_in_train_mode_with_grads()
    handle = model.fc.register_forward_hook(FailsOnCall(2))
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        MultiLayerCam(model, [model.stem, layer], cam=cam_class).attribute(
            make_images(n=2, size=16), target=[1, 2]
        )
    assert_unchanged(before, snapshot(model))
    handle.remove()
