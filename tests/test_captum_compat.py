"""Drop-in behaviour: called exactly as Captum's LayerGradCam."""
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, NoiseTunnel
from torch import nn

from captum_xcam import LayerLiftCam, LayerScoreCam, LayerXGradCam
from conftest import make_images, make_tiny
from registered import METHODS, PERTURBATION

CAMS = METHODS
# A target-free method (EigenCAM) takes every target form, and warns it is ignored.
pytestmark = pytest.mark.filterwarnings("ignore:.*is target-free:UserWarning")


@pytest.fixture(scope="module")
def resnet():
    return make_tiny()


@pytest.mark.parametrize("cam_class", CAMS)
def test_every_target_form_captum_accepts(cam_class, resnet):
    model, layer = resnet
    x = make_images(n=3, size=16)
    cam = cam_class(model, layer)
    per_row = cam.attribute(x, target=[4, 4, 4])
    for target in (4, (4,), torch.tensor(4), torch.tensor([4, 4, 4])):
        torch.testing.assert_close(cam.attribute(x, target=target), per_row)
    mixed = cam.attribute(x, target=torch.tensor([1, 4, 9]))
    torch.testing.assert_close(cam.attribute(x, target=[1, 4, 9]), mixed)
    torch.testing.assert_close(cam.attribute(x, target=[(1,), (4,), (9,)]), mixed)


@pytest.mark.parametrize("cam_class", CAMS)
def test_scalar_output_needs_no_target(cam_class, resnet):
    model, layer = resnet
    x = make_images(n=2, size=16)
    picked = cam_class(lambda inp: model(inp)[:, 6], layer).attribute(x)
    torch.testing.assert_close(picked, cam_class(model, layer).attribute(x, target=6))


@pytest.mark.parametrize("cam_class", CAMS)
def test_a_batch_equals_its_rows_one_by_one(cam_class, resnet):
    model, layer = resnet
    x = make_images(n=3, size=16)
    targets = [2, 0, 8]
    batch = cam_class(model, layer).attribute(x, target=targets)
    rows = torch.cat(
        [cam_class(model, layer).attribute(x[i : i + 1], target=t) for i, t in enumerate(targets)]
    )
    torch.testing.assert_close(batch, rows, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cam_class", CAMS)
def test_inputs_that_require_grad(cam_class, resnet):
    # Captum's attributions take inputs that require grad (a caller's leaf
    # tensor, Quantus's arrays, a guided variant's inputs) and give the
    # same map as for the detached inputs.
    model, layer = resnet
    x = make_images(n=2, size=16)
    expected = cam_class(model, layer).attribute(x, target=[3, 5])
    leaf = x.clone().requires_grad_()
    torch.testing.assert_close(cam_class(model, layer).attribute(leaf, target=[3, 5]), expected)
    assert leaf.grad is None


class TwoInputModel(nn.Module):
    r"""Takes two images and a per-example scale as an additional argument."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, a, b, scale, shift=0.0):
        return self.backbone(a + 0.5 * b) * scale[:, None] + shift


@pytest.mark.parametrize("cam_class", CAMS)
def test_tuple_inputs_and_additional_forward_args(cam_class, resnet):
    model, layer = resnet
    wrapped = TwoInputModel(model)
    a, b = make_images(n=2, size=16, seed=1), make_images(n=2, size=16, seed=2)
    scale = torch.tensor([2.0, 0.5], dtype=torch.float64)
    out = cam_class(wrapped, layer).attribute(
        (a, b), target=[1, 3], additional_forward_args=(scale, 0.25)
    )
    assert out.shape == (2, 1, 4, 4)
    # Example by example, with the extra arguments bound in a closure.
    for i, t in enumerate([1, 3]):

        def bound(a_, b_, i=i):
            return wrapped(a_, b_, scale[i].expand(len(a_)), 0.25)

        row = cam_class(bound, layer).attribute((a[i : i + 1], b[i : i + 1]), target=t)
        torch.testing.assert_close(out[i : i + 1], row, rtol=1e-9, atol=1e-12)
    # A per-example scale multiplies every gradient and score difference.
    if cam_class in (LayerXGradCam, LayerLiftCam, LayerScoreCam):
        unscaled = cam_class(lambda a_, b_: wrapped(a_, b_, torch.ones(len(a_)).double()), layer)
        expected = unscaled.attribute((a, b), target=[1, 3]) * scale[:, None, None, None]
        torch.testing.assert_close(out, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("cam_class", CAMS)
def test_attribute_to_layer_input(cam_class, resnet):
    # The input of ResNet's avgpool is the output of layer4.
    model, layer = resnet
    x = make_images(n=2, size=16)
    via_input = cam_class(model, model.avgpool).attribute(
        x, target=[5, 2], attribute_to_layer_input=True
    )
    via_output = cam_class(model, layer).attribute(x, target=[5, 2])
    torch.testing.assert_close(via_input, via_output, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cam_class", CAMS)
def test_relu_and_channel_summation(cam_class, resnet):
    model, layer = resnet
    x = make_images(n=2, size=16)
    cam = cam_class(model, layer)
    summed = cam.attribute(x, target=1)
    per_channel = cam.attribute(x, target=1, attr_dim_summation=False)
    assert per_channel.shape == (2, 12, 4, 4)
    torch.testing.assert_close(per_channel.sum(1, keepdim=True), summed)
    torch.testing.assert_close(cam.attribute(x, target=1, relu_attributions=True), F.relu(summed))


@pytest.mark.parametrize("cam_class", CAMS)
def test_noise_tunnel(cam_class, resnet):
    model, layer = resnet
    x = make_images(n=2, size=16)
    cam = cam_class(model, layer)
    plain = cam.attribute(x, target=[1, 2])
    smooth = NoiseTunnel(cam).attribute(
        x, nt_type="smoothgrad", nt_samples=3, stdevs=0.0, target=[1, 2]
    )
    torch.testing.assert_close(smooth, plain, rtol=1e-9, atol=1e-12)
    noisy = NoiseTunnel(cam).attribute(
        x, nt_type="smoothgrad_sq", nt_samples=2, stdevs=0.5, target=[1, 2]
    )
    assert noisy.shape == plain.shape and not torch.equal(noisy, plain)


@pytest.mark.parametrize("cam_class", CAMS)
def test_interpolate_to_input_size(cam_class, resnet):
    model, layer = resnet
    x = make_images(n=2, size=16)
    attr = cam_class(model, layer).attribute(x, target=1)
    up = LayerAttribution.interpolate(attr, x.shape[2:], interpolate_mode="bilinear")
    assert up.shape == (2, 1, 16, 16)
    torch.testing.assert_close(up, F.interpolate(attr, size=(16, 16), mode="bilinear"))


@pytest.mark.parametrize("cam_class", CAMS)
def test_float32_and_device(cam_class, resnet):
    model, layer = resnet
    model32 = make_tiny()[0].float()
    x = make_images(n=2, size=16).float()
    out = cam_class(model32, model32.layer4).attribute(x, target=1)
    assert out.dtype == torch.float32 and out.device == x.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("cam_class", CAMS)
def test_cuda_results_match_cpu(cam_class, resnet):
    model, layer = resnet
    x = make_images(n=2, size=16)
    cpu = cam_class(model, layer).attribute(x, target=[1, 2])
    model_gpu, _ = make_tiny()
    model_gpu = model_gpu.cuda()
    gpu = cam_class(model_gpu, model_gpu.layer4).attribute(x.cuda(), target=[1, 2])
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("cam_class", PERTURBATION)
def test_progress_bar(cam_class, resnet, capsys):
    model, layer = resnet
    cam_class(model, layer).attribute(make_images(n=1, size=16), target=0, show_progress=True)
    assert "channels" in capsys.readouterr().err
