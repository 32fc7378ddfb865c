"""XGrad-CAM's axioms, channel Shapley values, channel weights and rank
correlation, against hand-computed cases and independent computations."""
import math

import pytest
import torch
from captum.attr import LayerGradCam, ShapleyValues
from torch import nn

from captum_xcam import LayerLiftCam, LayerXGradCam
from captum_xcam.metrics import (
    axiom_errors,
    channel_ablation_scores,
    channel_shapley_values,
    channel_weights,
    rank_correlation,
    xgrad_cam_axioms,
)
from tests.metrics_models import ConvGapHead


def linear_head_model(seed: int = 0, channels: int = 3, bias: float = 0.7):
    torch.manual_seed(seed)
    head = nn.Linear(channels, 2).double()
    with torch.no_grad():
        head.bias.fill_(bias)
    return ConvGapHead(head).eval(), head


def test_axiom_errors_by_hand():
    maps = torch.tensor([[[[1.0]], [[2.0]]]], dtype=torch.float64)  # sum_xy w_k A_k = 1, 2
    errors = axiom_errors(maps, torch.tensor([4.0], dtype=torch.float64),
                          torch.tensor([[2.0, 3.0]], dtype=torch.float64))
    # Conservation |4 - 3| / 4; Sensitivity mean(|2 - 1|, |1 - 2|) / 4
    torch.testing.assert_close(errors.conservation, torch.tensor([0.25], dtype=torch.float64))
    torch.testing.assert_close(errors.sensitivity, torch.tensor([0.25], dtype=torch.float64))


def test_channel_ablation_scores_on_a_linear_head():
    model, head = linear_head_model()
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    scores, ablated = channel_ablation_scores(model, model.layer, x, target=1,
                                              perturbations_per_eval=2)
    means = x.mean((2, 3))
    expected_scores = means @ head.weight[1] + head.bias[1]
    torch.testing.assert_close(scores, expected_scores.detach())
    expected_ablated = expected_scores[:, None] - means * head.weight[1]
    torch.testing.assert_close(ablated, expected_ablated.detach())


def test_grad_cam_on_a_linear_head_is_sensitive_and_conserves_all_but_the_bias():
    # w_k = v_k / HW, so sum_xy w_k A_k = v_k mean(A_k) = S - S\k exactly and
    # S - sum_k sum_xy w_k A_k = b.
    model, head = linear_head_model(bias=0.7)
    x = torch.rand(3, 3, 4, 5, dtype=torch.float64)
    for cam in (LayerGradCam(model, model.layer), LayerXGradCam(model, model.layer)):
        errors = xgrad_cam_axioms(cam, x, target=0)
        s = (x.mean((2, 3)) @ head.weight[0] + 0.7).detach()
        torch.testing.assert_close(errors.conservation, 0.7 / s.abs())
        torch.testing.assert_close(errors.sensitivity, torch.zeros_like(s))


def relu_gate_model():
    # out = relu(m1 + m2 - 1) with m_k the mean of channel k.
    head = nn.Sequential(nn.Linear(2, 1), nn.ReLU()).double()
    with torch.no_grad():
        head[0].weight.fill_(1.0)
        head[0].bias.fill_(-1.0)
    return ConvGapHead(head).eval()


def test_shapley_values_of_a_two_channel_and_gate_by_hand():
    # v({}) = v({1}) = v({2}) = 0 and v({1,2}) = 1: each channel gets 1/2.
    model = relu_gate_model()
    x = torch.ones(1, 2, 3, 3, dtype=torch.float64)
    phi = channel_shapley_values(model, model.layer, x, method="exact")
    torch.testing.assert_close(phi, torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    # LIFT-CAM's DeepLift (Rescale) weights split the gain 1 in proportion to
    # the inputs' differences, here equally as well.
    weights = channel_weights(LayerLiftCam(model, model.layer), x)
    torch.testing.assert_close(weights, torch.tensor([[0.5, 0.5]], dtype=torch.float64))


def test_exact_shapley_values_equal_captums_permutation_enumeration():
    torch.manual_seed(1)
    head = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    model = ConvGapHead(head).eval()
    x = torch.rand(2, 4, 3, 3, dtype=torch.float64)
    ours = channel_shapley_values(model, model.layer, x, target=[2, 0], method="exact",
                                  perturbations_per_eval=3)
    mask = torch.arange(4).reshape(1, 4, 1, 1)
    captums = ShapleyValues(model).attribute(x, baselines=0.0, target=[2, 0], feature_mask=mask)
    torch.testing.assert_close(ours, captums.flatten(2)[:, :, 0].double(), rtol=1e-5, atol=1e-6)
    # Efficiency: the values add up to v(all) - v(none).
    with torch.no_grad():
        gap = model(x)[[0, 1], [2, 0]] - model(torch.zeros_like(x))[[0, 1], [2, 0]]
    torch.testing.assert_close(ours.sum(1), gap)
    # The part of the model after the layer gives the same values, cheaper.
    fast = channel_shapley_values(model, model.layer, x, target=[2, 0], method="exact",
                                  layer_forward_func=model.after_layer)
    torch.testing.assert_close(fast, ours)


def test_sampled_shapley_values_of_a_linear_head_are_exact():
    # Every marginal contribution of channel k is v_k mean(A_k), whatever the
    # permutation, so even one sample gives the closed form.
    model, head = linear_head_model(channels=12)
    x = torch.rand(2, 12, 3, 3, dtype=torch.float64)
    phi = channel_shapley_values(model, model.layer, x, target=1, n_samples=1)
    expected = x.mean((2, 3)) * head.weight[1]
    torch.testing.assert_close(phi.double(), expected.detach(), rtol=1e-5, atol=1e-6)


def test_channel_weights_recover_grad_cam_weights():
    # Captum's Grad-CAM weights are the spatial means of the gradients: v_k / HW.
    model, head = linear_head_model()
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    x[1, 2] = 0  # an all-zero channel gets weight 0
    weights = channel_weights(LayerGradCam(model, model.layer), x, target=1)
    expected = (head.weight[1] / 20).detach().expand(2, 3).clone()
    expected[1, 2] = 0
    torch.testing.assert_close(weights, expected)
    # A measurement, detached (Captum's LayerGradCam returns maps that require grad),
    # so that it plots and converts to numpy.
    assert not weights.requires_grad


def brute_force_spearman(a, b):
    def ranks(v):
        return [sum(w < u for w in v) + (sum(w == u for w in v) - 1) / 2 for u in v]

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((p - ma) * (q - mb) for p, q in zip(ra, rb))
    return cov / math.sqrt(sum((p - ma) ** 2 for p in ra) * sum((q - mb) ** 2 for q in rb))


def test_rank_correlation_by_hand_and_by_brute_force():
    a = torch.tensor([[1.0, 2, 3, 4], [1, 2, 3, 4], [1, 2, 2, 3], [5, 5, 5, 5]])
    b = torch.tensor([[10.0, 20, 30, 40], [4, 3, 2, 1], [1, 2, 3, 4], [1, 2, 3, 4]])
    rho = rank_correlation(a, b)
    torch.testing.assert_close(
        rho, torch.tensor([1.0, -1.0, 4.5 / math.sqrt(22.5), 0.0], dtype=torch.float64)
    )
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (5, 7), generator=g).float()
    y = torch.rand(5, 7, generator=g)
    for row in range(5):
        assert rank_correlation(x[row : row + 1], y[row : row + 1]).item() == pytest.approx(
            brute_force_spearman(x[row].tolist(), y[row].tolist())
        )
