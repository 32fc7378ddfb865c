"""Map preparation and the pointing games, against hand-computed cases."""
import pytest
import torch

from captum_xcam.metrics import (
    boxes_to_masks,
    energy_pointing_game,
    input_resolution_maps,
    min_max_normalized,
    pointing_game,
)


def test_cams_are_upsampled_and_input_attributions_reduced():
    cam = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]])
    up = input_resolution_maps(cam, (4, 4), interpolate_mode="nearest")
    expected = torch.tensor([[[1.0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]]])
    assert torch.equal(up, expected)
    ig = torch.tensor([[[[1.0, -2.0]], [[3.0, 1.0]]]])  # (1, 2 channels, 1, 2)
    assert torch.equal(input_resolution_maps(ig, (1, 2)), torch.tensor([[[4.0, -1.0]]]))
    absolute = input_resolution_maps(ig, (1, 2), reduce="abs_sum")
    assert torch.equal(absolute, torch.tensor([[[4.0, 3.0]]]))
    with pytest.raises(ValueError, match="channels at a resolution"):
        input_resolution_maps(torch.rand(1, 3, 2, 2), (4, 4))
    with pytest.raises(ValueError, match=r"\(N, C, h, w\)"):
        input_resolution_maps(torch.rand(2, 2), (4, 4))


def test_min_max_normalized_and_constant_maps():
    maps = torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])
    assert torch.equal(min_max_normalized(maps), torch.tensor([[0, 1, 0.5], [0, 0, 0]]))


def test_boxes_to_masks_includes_both_ends():
    masks = boxes_to_masks(torch.tensor([[1, 0, 2, 1]]), (3, 4))
    expected = torch.tensor([[[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]], dtype=torch.bool)
    assert torch.equal(masks, expected)


def test_pointing_game_hits_within_tolerance():
    maps = torch.zeros(3, 1, 6, 8)
    maps[:, 0, 2, 3] = 1.0  # the peak of every map at (y=2, x=3)
    regions = torch.zeros(3, 6, 8, dtype=torch.bool)
    regions[0, 2, 3] = True  # on the peak
    regions[1, 2, 5:] = True  # nearest pixel 2 to the right
    regions[2, 5, 6] = True  # 3 down, 3 right: distance sqrt(18) = 4.24
    assert pointing_game(maps, regions, tolerance=0).tolist() == [True, False, False]
    assert pointing_game(maps, regions, tolerance=2).tolist() == [True, True, False]
    assert pointing_game(maps, regions, tolerance=4.2).tolist() == [True, True, False]
    assert pointing_game(maps, regions, tolerance=4.25).tolist() == [True, True, True]


def test_pointing_game_upsamples_cams_and_a_constant_map_misses():
    cam = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    regions = torch.zeros(2, 4, 4, dtype=torch.bool)
    regions[:, 0:2, 2:4] = True  # the top-right quadrant
    hits = pointing_game(cam, regions, tolerance=0, interpolate_mode="nearest")
    assert hits.tolist() == [True, False]


def test_energy_pointing_game_is_the_share_of_positive_energy_in_the_region():
    maps = torch.tensor([[[[1.0, 2.0], [3.0, -4.0]]], [[[0.0, -1.0], [0.0, 0.0]]]])
    regions = torch.tensor([[[True, True], [False, False]]] * 2)
    proportion = energy_pointing_game(maps, regions)
    # (1 + 2) / (1 + 2 + 3), the -4 counting as 0; a map without positive energy: 0.
    torch.testing.assert_close(proportion, torch.tensor([0.5, 0.0]))


def test_regions_must_be_boolean_masks():
    with pytest.raises(ValueError, match="boolean masks"):
        energy_pointing_game(torch.rand(1, 1, 2, 2), torch.ones(1, 2, 2))
