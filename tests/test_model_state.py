"""The model is left exactly as it was found, after success and after an
exception raised midway."""
import pytest
import torch
from torch import nn

from captum_xcam import GuidedLayerCam
from conftest import make_images, make_tiny
from registered import METHODS, target_for

CAMS = METHODS
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
)


def snapshot(model: nn.Module):
    return {
        "state": {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()},
        "grads": {
            k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()
        },
        "grad_ids": {k: id(p.grad) for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "attributes": {k: sorted(m.__dict__) for k, m in model.named_modules()},
        "hooks": {
            k: [len(getattr(m, d, {})) for d in HOOK_DICTS] for k, m in model.named_modules()
        },
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
    }


def assert_unchanged(before, after):
    assert after["training"] == before["training"]
    assert after["attributes"] == before["attributes"]
    assert after["hooks"] == before["hooks"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["grad_ids"] == before["grad_ids"]
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k
    for k, g in before["grads"].items():
        assert (g is None and after["grads"][k] is None) or torch.equal(after["grads"][k], g), k


def model_in_train_mode_with_grads():
    model, layer = make_tiny()
    model.train()
    model.stem[1].eval()  # a mixed state must survive too
    for i, p in enumerate(model.parameters()):
        if i % 3 == 0:
            p.grad = torch.randn_like(p)
    return model, layer


@pytest.mark.parametrize("cam_class", CAMS)
def test_model_unchanged_after_success(cam_class):
    model, layer = model_in_train_mode_with_grads()
    before = snapshot(model)
    x = make_images(n=2, size=16)
    cam_class(model, layer).attribute(x, target=target_for(cam_class, [1, 2]))
    assert_unchanged(before, snapshot(model))


@pytest.mark.parametrize("cam_class", CAMS)
def test_guided_model_unchanged_after_success(cam_class):
    model, layer = model_in_train_mode_with_grads()
    before = snapshot(model)
    GuidedLayerCam(model, layer, cam=cam_class).attribute(make_images(n=2, size=16), target=[1, 2])
    assert_unchanged(before, snapshot(model))


class FailsOnCall:
    r"""A forward hook that raises from inside the model on the n-th call of
    its module, after the attribution's hooks are in place and BatchNorm
    statistics have moved. A module with a hook runs as a module on every
    path: the whole model, or the part before or after the layer alone."""

    def __init__(self, fail_on: int) -> None:
        self.fail_on = fail_on
        self.calls = 0

    def __call__(self, module, inputs, output):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("boom")


@pytest.mark.parametrize("cam_class", CAMS)
@pytest.mark.parametrize("where", ["stem", "fc"])  # before and after the layer
@pytest.mark.parametrize("fail_on", [1, 2, 3])
def test_model_unchanged_after_exception_midway(cam_class, where, fail_on):
    model, layer = model_in_train_mode_with_grads()
    failing = FailsOnCall(fail_on)
    handle = getattr(model, where).register_forward_hook(failing)
    before = snapshot(model)
    x = make_images(n=2, size=16)
    try:
        cam_class(model, layer).attribute(x, target=target_for(cam_class, [1, 2]))
    except RuntimeError as error:
        assert "boom" in str(error)
    else:  # the gradient methods may finish in fewer calls
        assert failing.calls < fail_on
    assert_unchanged(before, snapshot(model))
    handle.remove()


@pytest.mark.parametrize("cam_class", CAMS)
def test_in_place_relu_after_the_layer_sees_pre_relu_values(cam_class):
    # The layer is a BatchNorm followed by ReLU(inplace=True), as in VGG-BN's
    # features: the map must use the BatchNorm output, negative values
    # included, so it is the same as with that ReLU out of place.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 10), nn.ReLU(inplace=True),
        nn.Linear(10, 4),
    ).double().eval()
    layer, relu = model[1], model[2]
    x = make_images(n=2, size=8)
    with torch.no_grad():
        assert (layer(model[0](x)) < 0).any()
    target = target_for(cam_class, [1, 3])
    maps = cam_class(model, layer).attribute(x, target=target, attr_dim_summation=False)
    relu.inplace = False
    expected = cam_class(model, layer).attribute(x, target=target, attr_dim_summation=False)
    torch.testing.assert_close(maps, expected, rtol=1e-8, atol=1e-10)
