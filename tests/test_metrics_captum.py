"""Captum's infidelity and max-sensitivity applied to CAMs, as documented in
captum_xcam.metrics.captum_metrics."""
import torch
from captum.metrics import infidelity, sensitivity_max

from captum_xcam import LayerXGradCam
from captum_xcam.metrics import expand_to_inputs, explanation_func, pixel_noise, square_removal
from tests.metrics_models import ConvGapHead, PixelLinear


def test_expand_to_inputs_spreads_each_pixel_over_the_channels():
    cam = torch.tensor([[[[3.0, 6.0]]]])
    x = torch.zeros(1, 3, 2, 4)
    expanded = expand_to_inputs(cam, x, interpolate_mode="nearest")
    assert expanded.shape == x.shape
    torch.testing.assert_close(expanded.sum(1)[0], torch.tensor([[3.0, 3, 6, 6]] * 2))
    ig = torch.rand(1, 3, 2, 4)
    assert expand_to_inputs(ig, x) is ig


def test_infidelity_of_a_cam_that_is_the_exact_linear_explanation_is_zero():
    # f(x) = sum_{c,p} v_p x_cp with v constant on 2x2 blocks; per-pixel noise I
    # shared by the 3 channels changes f by 3 sum_p v_p I_p, which is what a
    # 2x2 CAM equal to 3 v (upsampled by "nearest") predicts.
    block = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    v = block.repeat_interleave(2, 0).repeat_interleave(2, 1)
    model = PixelLinear(v)
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    cam = (3 * block).expand(2, 1, 2, 2)
    torch.manual_seed(0)
    exact = infidelity(model, pixel_noise(0.1), x, expand_to_inputs(cam, x, "nearest"),
                       target=0, n_perturb_samples=4)
    torch.testing.assert_close(exact, torch.zeros(2, dtype=torch.float64))
    # A map of zeros predicts no change: infidelity is the mean squared change,
    # which the same noise (same seed) reproduces.
    torch.manual_seed(0)
    zero = infidelity(model, pixel_noise(0.1), x, torch.zeros_like(x), target=0,
                      n_perturb_samples=4)
    torch.manual_seed(0)
    noise = torch.randn(8, 1, 4, 4, dtype=torch.float64).mul(0.1)
    changes = (3 * noise[:, 0] * v).flatten(1).sum(1).reshape(2, 4)
    torch.testing.assert_close(zero, changes.pow(2).mean(1))


def test_sensitivity_max_of_a_cam_through_explanation_func():
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    model = ConvGapHead(head.double()).eval()
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    delta = 0.05 * torch.rand(1, 3, 4, 4, dtype=torch.float64)
    cam = LayerXGradCam(model, model.layer)
    sens = sensitivity_max(explanation_func(cam), x, perturb_func=lambda inp: inp + delta,
                           n_perturb_samples=1, target=[1, 0])
    # The definition: ||Phi(x + delta) - Phi(x)|| / ||Phi(x)||, Frobenius norm.
    before = cam.attribute(x, target=[1, 0]).flatten(1)
    after = cam.attribute(x + delta, target=[1, 0]).flatten(1)
    expected = (after - before).norm(dim=1) / before.norm(dim=1)
    torch.testing.assert_close(sens.double(), expected)
    assert (expected > 0).all()
    # With several perturbed copies the targets are expanded along: the same
    # deterministic perturbation three times gives the same maximum.
    again = sensitivity_max(explanation_func(cam), x, perturb_func=lambda inp: inp + delta,
                            n_perturb_samples=3, target=[1, 0])
    torch.testing.assert_close(again, sens)


def test_square_removal_perturbs_one_square_and_a_contribution_map_is_exact():
    torch.manual_seed(0)
    x = torch.rand(3, 2, 6, 6, dtype=torch.float64)
    indicator, perturbed = square_removal(3)(x)
    for k in range(3):
        square = indicator[k, 0].bool()
        rows, cols = torch.nonzero(square, as_tuple=True)
        assert square.sum() == 9 and rows.max() - rows.min() == 2 and cols.max() - cols.min() == 2
        assert torch.equal(indicator[k, 1], indicator[k, 0])
        assert torch.equal(perturbed[k][:, square], torch.zeros(2, 9, dtype=torch.float64))
        assert torch.equal(perturbed[k][:, ~square], x[k][:, ~square])
    # For f(x) = sum v_p x_cp the contributions v_p x_cp predict every square's
    # removal exactly: infidelity 0; a map of the weights alone does not.
    v = torch.rand(6, 6, dtype=torch.float64)
    model = PixelLinear(v)
    exact = infidelity(model, square_removal(3), x, v * x, target=0, n_perturb_samples=5)
    torch.testing.assert_close(exact, torch.zeros(3, dtype=torch.float64))
    weights_only = infidelity(model, square_removal(3), x, v.expand_as(x), target=0,
                              n_perturb_samples=5)
    assert (weights_only > 0).all()
