"""SS-CAM against brute force: each sampled channel's weight recomputed by
hand from the paper's formula, one noisy masked image at a time."""
import pytest
import torch

from captum_xcam import LayerScoreCam, LayerSmoothedScoreCam
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


def test_ss_cam_brute_force(architecture):
    model, layer = make_model(architecture)
    x = make_images(n=1)
    A = activations_of(model, layer, x)
    samples, stddev, seed = 2, 0.7, 5
    maps = LayerSmoothedScoreCam(model, layer).attribute(
        x, target=TARGET, attr_dim_summation=False, baselines=0.2, perturbations_per_eval=128,
        num_samples=samples, stddev=stddev, seed=seed,
    )
    weights = implied_weights(maps, A)
    # The documented noise: one image per sample from a generator seeded with seed.
    noise = torch.randn((samples, 1) + x.shape[2:], generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64) * stddev
    baseline = torch.full_like(x, 0.2)
    for k in sampled_channels(A, 0, seed=3):
        mask = score_cam_mask(A, x, 0, k)
        increases = [masked_increase(model, x, baseline, 0, mask + noise[s, 0], TARGET)
                     for s in range(samples)]
        expected = sum(increases) / samples
        assert weights[0, k].item() == pytest.approx(expected, rel=1e-7, abs=1e-10)


def test_ss_cam_is_reproducible_and_seeded():
    model, layer = make_tiny()
    x = make_images(n=2, size=16)
    cam = LayerSmoothedScoreCam(model, layer)
    first = cam.attribute(x, target=TARGETS, num_samples=2, seed=3)
    torch.testing.assert_close(cam.attribute(x, target=TARGETS, num_samples=2, seed=3), first,
                               rtol=0, atol=0)
    assert not torch.equal(cam.attribute(x, target=TARGETS, num_samples=2, seed=4), first)


def test_without_noise_it_is_score_cam():
    model, layer = make_tiny()
    x = make_images(n=2, size=16)
    torch.testing.assert_close(
        LayerSmoothedScoreCam(model, layer).attribute(x, target=TARGETS, num_samples=2, stddev=0.0),
        LayerScoreCam(model, layer).attribute(x, target=TARGETS),
    )


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_num_samples(bad):
    model, layer = make_model("resnet18")
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        LayerSmoothedScoreCam(model, layer).attribute(make_images(n=1), target=0, num_samples=bad)
    with pytest.raises(ValueError, match="stddev must be a non-negative number"):
        LayerSmoothedScoreCam(model, layer).attribute(make_images(n=1), target=0, stddev=-1.0)
