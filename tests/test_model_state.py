"""The model is left exactly as it was found, after success and after an
exception raised midway."""
import pytest
import torch
from torch import nn

from captum_xcam import (
    GuidedLayerCam,
    LayerAblationCam,
    LayerGradCamPlusPlus,
    LayerLiftCam,
    LayerScoreCam,
    LayerXGradCam,
)
from conftest import make_images, make_model, make_tiny

CAMS = [LayerXGradCam, LayerGradCamPlusPlus, LayerAblationCam, LayerScoreCam, LayerLiftCam]
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
    cam_class(model, layer).attribute(make_images(n=2, size=16), target=[1, 2])
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
    try:
        cam_class(model, layer).attribute(make_images(n=2, size=16), target=[1, 2])
    except RuntimeError as error:
        assert "boom" in str(error)
    else:  # the gradient methods may finish in fewer calls
        assert failing.calls < fail_on
    assert_unchanged(before, snapshot(model))
    handle.remove()


def test_in_place_relu_after_the_layer_sees_pre_relu_values():
    # vgg11_bn features[-3] is a BatchNorm followed by ReLU(inplace=True): the
    # map must use the BatchNorm output, negative values included.
    model, _ = make_model("vgg11_bn")
    layer = model.features[-3]
    assert isinstance(model.features[-2], nn.ReLU) and model.features[-2].inplace
    x = make_images(n=1, size=32)
    store = {}

    def record(module, inp, out):
        store["a"] = out.clone()

    handle = layer.register_forward_hook(record)
    with torch.no_grad():
        model(x)
    handle.remove()
    A = store["a"]
    assert (A < 0).any()
    for cam_class in CAMS:
        maps = cam_class(model, layer).attribute(x, target=1, attr_dim_summation=False)
        # w_k * A_k: wherever A is negative and the weight non-zero, the map is non-zero
        w = (maps * A).flatten(2).sum(2) / (A * A).flatten(2).sum(2)
        torch.testing.assert_close(maps, w[:, :, None, None] * A, rtol=1e-8, atol=1e-10)
