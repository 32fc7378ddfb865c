"""The scenes: deterministic per seed, balanced, objects apart and never drawn
over, sizes within their scale's radii, and the per-object rows."""
import math
from collections import Counter

import pytest
import torch

from captum_xcam.data import CLASS_NAMES, SCALE_NAMES, SceneSet, make_scenes
from captum_xcam.data.scenes import BLOCK, GAP, SCALE_RADII

N = 2 * BLOCK
SIZE = 64


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(N, seed=3)


def present(scenes):
    """(scene, object) index pairs of the objects that exist."""
    return [(i, j) for i in range(len(scenes)) for j in range(2) if scenes.labels[i, j] >= 0]


def test_same_seed_same_scenes_and_prefix(scenes):
    again = make_scenes(N, seed=3)
    shorter = make_scenes(BLOCK + 5, seed=3)
    for name in ("images", "labels", "masks", "boxes", "scales"):
        assert torch.equal(getattr(scenes, name), getattr(again, name))
        assert torch.equal(getattr(scenes, name)[: BLOCK + 5], getattr(shorter, name))
    assert not torch.equal(scenes.images, make_scenes(N, seed=4).images)


def test_shapes_and_types(scenes):
    assert scenes.images.shape == (N, 3, SIZE, SIZE) and scenes.images.dtype == torch.float32
    assert scenes.images.min() >= 0 and scenes.images.max() <= 1
    assert scenes.labels.shape == (N, 2) and scenes.labels.dtype == torch.int64
    assert scenes.masks.shape == (N, 2, SIZE, SIZE) and scenes.masks.dtype == torch.bool
    assert scenes.boxes.shape == (N, 2, 4) and scenes.boxes.dtype == torch.float32
    assert scenes.scales.shape == (N, 2) and scenes.scales.dtype == torch.int64
    assert scenes.class_names == CLASS_NAMES and len(scenes) == N
    small = scenes.subset([1, 4])
    assert isinstance(small, SceneSet) and len(small) == 2
    assert torch.equal(small.masks[1], scenes.masks[4])
    assert len(scenes.subset(slice(0, 3))) == 3


def test_absent_second_objects_are_empty_and_first_objects_exist(scenes):
    absent = scenes.labels[:, 1] < 0
    assert (scenes.labels[:, 0] >= 0).all()
    assert torch.equal(scenes.scales[:, 1] < 0, absent)
    assert not scenes.masks[absent, 1].any()
    assert (scenes.boxes[absent, 1] == 0).all()
    for i, j in present(scenes):
        assert scenes.masks[i, j].any()


def test_half_the_scenes_hold_two_objects_of_different_classes(scenes):
    two = scenes.labels[:, 1] >= 0
    assert two.sum() == N // 2
    assert (scenes.labels[two, 0] != scenes.labels[two, 1]).all()


def test_classes_and_scales_are_balanced(scenes):
    rows = present(scenes)
    pairs = Counter((int(scenes.labels[i, j]), int(scenes.scales[i, j])) for i, j in rows)
    # 1.5 objects per scene, spread evenly over the class x scale pairs.
    expected = len(rows) // (len(CLASS_NAMES) * len(SCALE_NAMES))
    assert len(rows) == 3 * N // 2
    assert pairs == Counter({(c, s): expected for c in range(4) for s in range(3)})
    singles = Counter(
        (int(scenes.labels[i, 0]), int(scenes.scales[i, 0]))
        for i in range(N) if scenes.labels[i, 1] < 0
    )
    assert set(singles.values()) == {N // 2 // 12}
    class_pairs = Counter(
        frozenset(scenes.labels[i].tolist()) for i in range(N) if scenes.labels[i, 1] >= 0
    )
    assert len(class_pairs) == 6 and len(set(class_pairs.values())) == 1


def test_two_masks_are_disjoint_with_the_gap(scenes):
    for i in range(N):
        if scenes.labels[i, 1] < 0:
            continue
        a = scenes.masks[i, 0].nonzero().float()
        b = scenes.masks[i, 1].nonzero().float()
        chebyshev = (a[:, None, :] - b[None, :, :]).abs().amax(-1)
        # GAP background pixels between them: the nearest pixels differ by GAP + 1.
        assert chebyshev.min() >= GAP + 1


def test_each_mask_is_exactly_the_pixels_of_its_colour(scenes):
    # Drawn last and apart, an object keeps one colour on all of its mask; any
    # pixel drawn over it or missing from the mask would break the equality.
    for i, j in present(scenes):
        image, mask = scenes.images[i], scenes.masks[i, j]
        colour = image[:, mask][:, :1]
        assert (image[:, mask] == colour).all()
        same = (image == colour[:, :, None]).all(0)
        assert torch.equal(same, mask)


def test_boxes_are_the_tight_boxes_of_the_masks(scenes):
    for i, j in present(scenes):
        ys, xs = scenes.masks[i, j].nonzero(as_tuple=True)
        expected = [xs.min(), ys.min(), xs.max(), ys.max()]
        assert scenes.boxes[i, j].tolist() == [float(v) for v in expected]


# Area of each shape of shape_mask as a multiple of radius ** 2.
AREA_PER_RADIUS2 = {
    0: math.pi,  # disk
    1: 1.4**2,  # square of half-side 0.7 r
    2: 3 * math.sqrt(3) / 4,  # equilateral triangle of circumradius r
    3: 2 * (2 * (2 / 3)) - (2 / 3) ** 2,  # two bars 2r x 2r/3, minus their overlap
}


def test_radii_measured_from_the_areas_are_within_their_scales(scenes):
    for i, j in present(scenes):
        label, scale = int(scenes.labels[i, j]), int(scenes.scales[i, j])
        area = scenes.masks[i, j].sum().item()
        radius = math.sqrt(area / AREA_PER_RADIUS2[label])
        low, high = (SIZE * f for f in SCALE_RADII[scale])
        # A digitised shape's area is off by about half its boundary pixels
        # at most, (perimeter / 2) px, i.e. a radius error below half a pixel.
        assert low - 0.5 <= radius <= high + 0.5, (i, j, label, scale, radius)


def test_scale_ranges_are_apart():
    bounds = [(SIZE * low, SIZE * high) for low, high in SCALE_RADII]
    assert bounds[0][0] == SIZE / 16 and bounds[0][1] == SIZE / 11
    assert bounds[1][0] == SIZE / 8 and bounds[2][1] == SIZE / 4
    for (_, high), (low, _) in zip(bounds, bounds[1:]):
        assert low - high > 1.0  # more than twice the tolerance above


def test_label_distribution(scenes):
    dist = scenes.label_distribution()
    assert dist.shape == (N, len(CLASS_NAMES))
    for i in range(N):
        labels = [c for c in scenes.labels[i].tolist() if c >= 0]
        expected = torch.zeros(len(CLASS_NAMES))
        for c in labels:
            expected[c] += 1 / len(labels)
        assert torch.equal(dist[i], expected)


def test_objects_rows_match_a_plain_loop(scenes):
    objects = scenes.objects()
    rows = present(scenes)
    assert objects.scene.tolist() == [i for i, _ in rows]
    assert len(objects.target) == len(rows)
    for k, (i, j) in enumerate(rows):
        other = 1 - j
        assert objects.target[k] == scenes.labels[i, j]
        assert objects.scale[k] == scenes.scales[i, j]
        assert torch.equal(objects.mask[k], scenes.masks[i, j])
        assert torch.equal(objects.box[k], scenes.boxes[i, j])
        assert torch.equal(objects.other_mask[k], scenes.masks[i, other])
        assert bool(objects.two_objects[k]) == bool(scenes.labels[i, 1] >= 0)
        assert objects.other_mask[k].any() == objects.two_objects[k]
    assert objects.scene.dtype == objects.target.dtype == objects.scale.dtype == torch.int64
    assert objects.two_objects.dtype == torch.bool


def test_other_sizes_and_small_n():
    small = make_scenes(3, seed=0, size=32)
    assert small.images.shape == (3, 3, 32, 32)
    assert torch.equal(make_scenes(1, seed=0).images[0], make_scenes(30, seed=0).images[0])


@pytest.mark.parametrize("n", [0, -1, 2.0, "3", True])
def test_bad_n_is_refused(n):
    with pytest.raises(ValueError, match="n must be a positive int"):
        make_scenes(n)


@pytest.mark.parametrize("size", [16, 31, 64.0, None])
def test_bad_size_is_refused(size):
    with pytest.raises(ValueError, match="size must be an int of at least 32"):
        make_scenes(2, size=size)
