"""The synthetic data set: deterministic per seed, with masks and boxes that
match the objects that decide the class."""
import math

import pytest
import torch

from captum_xcam.data import CLASS_NAMES, make_synthetic
from captum_xcam.data.synthetic import shape_mask


@pytest.fixture(scope="module")
def data():
    return make_synthetic(64, seed=3)


def test_same_seed_same_data_and_prefix(data):
    again = make_synthetic(64, seed=3)
    shorter = make_synthetic(20, seed=3)
    for name in ("images", "labels", "masks", "boxes"):
        assert torch.equal(getattr(data, name), getattr(again, name))
        assert torch.equal(getattr(data, name)[:20], getattr(shorter, name))
    other = make_synthetic(64, seed=4)
    assert not torch.equal(data.images, other.images)


def test_shapes_types_and_balance(data):
    assert data.images.shape == (64, 3, 64, 64) and data.images.dtype == torch.float32
    assert data.images.min() >= 0 and data.images.max() <= 1
    assert data.masks.shape == (64, 64, 64) and data.masks.dtype == torch.bool
    assert data.boxes.shape == (64, 4)
    assert torch.equal(data.labels.bincount(minlength=4), torch.full((4,), 16))
    assert data.class_names == CLASS_NAMES
    image, label = data[5]
    assert torch.equal(image, data.images[5]) and label == data.labels[5]
    assert len(data.subset([1, 2])) == 2


def test_boxes_are_the_tight_boxes_of_the_masks(data):
    for mask, box in zip(data.masks, data.boxes):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        expected = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()
        assert torch.equal(box, expected)


def test_the_object_has_one_colour_and_is_drawn_last(data):
    # Nothing is drawn over the object: all its pixels carry one colour.
    for image, mask in zip(data.images, data.masks):
        pixels = image[:, mask]
        assert pixels.shape[1] >= 0.015 * mask.numel()
        assert torch.equal(pixels, pixels[:, :1].expand_as(pixels))


def test_mask_area_matches_the_shape_geometry():
    # Areas of the shapes of radius r against their closed forms.
    r, size = 20.0, 64
    areas = [shape_mask(k, size, 31.5, 31.5, r, 0.3).sum().item() for k in range(4)]
    closed_forms = [
        math.pi * r**2,
        (1.4 * r) ** 2,
        3 * math.sqrt(3) / 4 * r**2,
        2 * (2 * r) * (2 * r / 3) - (2 * r / 3) ** 2,
    ]
    for area, expected in zip(areas, closed_forms):
        assert area == pytest.approx(expected, rel=0.04)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n must"):
        make_synthetic(0)
    with pytest.raises(ValueError, match="size"):
        make_synthetic(2, size=16)
