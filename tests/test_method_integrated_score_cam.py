"""IS-CAM against brute force: each sampled channel's weight recomputed by
hand from the formula, one scaled masked image at a time."""
import pytest
import torch

from captum_xcam import LayerIntegratedScoreCam, LayerScoreCam
from conftest import make_images, make_model, make_tiny
from reference import (
    activations_of,
    implied_weights,
    masked_increase,
    sampled_channels,
    score_cam_mask,
)

TARGET = 1
TARGETS = [1, 7]


# Three of the five architectures: IS-CAM scores Score-CAM's masks, scaled, so
# the Score-CAM and SS-CAM brute forces (test_formulas.py, test_method_smoothed_
# score_cam.py) already replay every architecture's masks; VGG-11 and DenseNet-121
# here took 2.5 of the suite's minutes.
@pytest.mark.parametrize("architecture", ["resnet18", "mobilenet_v2", "efficientnet_b0"])
def test_is_cam_brute_force(architecture):
    model, layer = make_model(architecture)
    x = make_images(n=1)
    A = activations_of(model, layer, x)
    steps = 3
    maps = LayerIntegratedScoreCam(model, layer).attribute(
        x, target=TARGET, attr_dim_summation=False, num_samples=steps, perturbations_per_eval=128
    )
    weights = implied_weights(maps, A)
    baseline = torch.zeros_like(x)
    for k in sampled_channels(A, 0, seed=10):
        mask = score_cam_mask(A, x, 0, k)
        expected = sum(
            masked_increase(model, x, baseline, 0, mask * s / steps, TARGET)
            for s in range(1, steps + 1)
        ) / steps
        assert weights[0, k].item() == pytest.approx(expected, rel=1e-7, abs=1e-10)


def test_one_step_is_score_cam():
    model, layer = make_tiny()
    x = make_images(n=2, size=16)
    torch.testing.assert_close(
        LayerIntegratedScoreCam(model, layer).attribute(x, target=TARGETS, num_samples=1),
        LayerScoreCam(model, layer).attribute(x, target=TARGETS),
    )


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_num_samples(bad):
    model, layer = make_model("resnet18")
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        LayerIntegratedScoreCam(model, layer).attribute(make_images(n=1), target=0, num_samples=bad)
