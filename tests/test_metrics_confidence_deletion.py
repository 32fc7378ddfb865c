"""Average Drop / Increase in Confidence, and Deletion / Insertion, against
hand-computed cases on a linear model."""
import math

import pytest
import torch

from captum_xcam.metrics import confidence_change, deletion, insertion
from tests.metrics_models import PixelLinear, TwoClassPixelLinear

V = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_average_drop_and_increase_by_hand():
    model = TwoClassPixelLinear(V)
    x = torch.ones(2, 1, 2, 2, dtype=torch.float64)
    x[1] = -1.0  # second image: logit -10, masking raises the confidence
    maps = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]] * 2, dtype=torch.float64)
    # E = [[0, .25], [.5, 1]]: masked logit = +-(2 * .25 + 3 * .5 + 4) = +-6
    result = confidence_change(model, x, maps, target=0)
    y = torch.tensor([sigmoid(10), sigmoid(-10)], dtype=torch.float64)
    o = torch.tensor([sigmoid(6), sigmoid(-6)], dtype=torch.float64)
    torch.testing.assert_close(result.confidence, y)
    torch.testing.assert_close(result.masked_confidence, o)
    torch.testing.assert_close(result.drop, torch.stack([100 * (y[0] - o[0]) / y[0], y[1] * 0]))
    assert result.increase.tolist() == [False, True]
    raw = confidence_change(model, x, maps, target=0, softmax=False)
    torch.testing.assert_close(raw.drop, torch.tensor([40.0, 0.0], dtype=torch.float64))


def test_a_constant_cam_masks_everything():
    model = TwoClassPixelLinear(V)
    x = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    cam = torch.full((1, 1, 1, 1), 3.0, dtype=torch.float64)  # layer resolution 1x1
    result = confidence_change(model, x, cam, target=[0])
    torch.testing.assert_close(result.masked_confidence, torch.tensor([0.5], dtype=torch.float64))


def pixel_model():
    return PixelLinear(V)


def test_deletion_and_insertion_curves_by_hand():
    x = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    perfect = V.reshape(1, 1, 2, 2)
    d = deletion(pixel_model(), x, perfect, target=0, step=1, softmax=False)
    torch.testing.assert_close(d.curves, torch.tensor([[10.0, 6, 3, 1, 0]], dtype=torch.float64))
    fractions = torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=torch.float64)
    torch.testing.assert_close(d.fractions, fractions)
    torch.testing.assert_close(d.auc, torch.tensor([3.75], dtype=torch.float64))
    i = insertion(pixel_model(), x, perfect, target=0, step=1, softmax=False, substrate="zeros")
    torch.testing.assert_close(i.curves, torch.tensor([[0.0, 4, 7, 9, 10]], dtype=torch.float64))
    torch.testing.assert_close(i.auc, torch.tensor([6.25], dtype=torch.float64))
    # A step that does not divide the pixel count: 3 pixels, then the last one.
    d3 = deletion(pixel_model(), x, perfect, target=0, step=3, softmax=False)
    torch.testing.assert_close(d3.curves, torch.tensor([[10.0, 1, 0]], dtype=torch.float64))
    trapezoids = 0.75 * (10 + 1) / 2 + 0.25 * (1 + 0) / 2
    torch.testing.assert_close(d3.auc, torch.tensor([trapezoids], dtype=torch.float64))


def test_reversed_map_deletes_the_least_important_first_and_scores_worse():
    x = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    reversed_map = -V.reshape(1, 1, 2, 2)
    d = deletion(pixel_model(), x, reversed_map, target=0, step=1, softmax=False)
    torch.testing.assert_close(d.curves, torch.tensor([[10.0, 9, 7, 4, 0]], dtype=torch.float64))
    assert d.auc.item() > 3.75


def test_substrates_ties_batches_and_chunks():
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64)
    maps = torch.rand(3, 1, 2, 2, dtype=torch.float64)
    model = PixelLinear(torch.rand(4, 4, dtype=torch.float64))
    one = deletion(model, x, maps, target=0, step=5, softmax=False, perturbations_per_eval=1)
    many = deletion(model, x, maps, target=0, step=5, softmax=False, perturbations_per_eval=64)
    torch.testing.assert_close(one.curves, many.curves)
    for k in range(3):  # each image alone gives its own row
        alone = deletion(model, x[k : k + 1], maps[k : k + 1], target=0, step=5, softmax=False)
        torch.testing.assert_close(alone.curves[0], one.curves[k])
    # A constant substrate: the curve ends at the model's output on it.
    half = deletion(model, x, maps, target=0, step=5, softmax=False, substrate=0.5)
    torch.testing.assert_close(half.curves[:, -1], model(torch.full_like(x, 0.5))[:, 0])
    # A blurred constant image is the same image: a flat curve.
    flat = torch.full((1, 3, 8, 8), 0.3, dtype=torch.float64)
    blurred = deletion(PixelLinear(torch.ones(8, 8, dtype=torch.float64)), flat,
                       torch.rand(1, 1, 8, 8, dtype=torch.float64), target=0, substrate="blur",
                       softmax=False)
    torch.testing.assert_close(blurred.curves, torch.full_like(blurred.curves, 0.3 * 3 * 64),
                               rtol=1e-6, atol=0)  # torchvision < 0.19: a float32 kernel
    # A constant map removes pixels in row-major order.
    tie = deletion(pixel_model(), torch.ones(1, 1, 2, 2, dtype=torch.float64),
                   torch.zeros(1, 1, 2, 2, dtype=torch.float64), target=0, step=1, softmax=False)
    torch.testing.assert_close(tie.curves, torch.tensor([[10.0, 9, 7, 4, 0]], dtype=torch.float64))


def test_softmax_probabilities_and_bad_arguments():
    model = TwoClassPixelLinear(V)
    x = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    d = deletion(model, x, V.reshape(1, 1, 2, 2), target=0, step=2)
    expected = torch.tensor([[sigmoid(10), sigmoid(3), sigmoid(0)]], dtype=torch.float64)
    torch.testing.assert_close(d.curves, expected)
    with pytest.raises(ValueError, match="step"):
        deletion(model, x, V.reshape(1, 1, 2, 2), target=0, step=0)
    with pytest.raises(ValueError, match="substrate"):
        deletion(model, x, V.reshape(1, 1, 2, 2), target=0, substrate="noise")
