"""Class discrimination on two-object images, against hand-made maps and
masks, and the report's columns of the new metrics."""
import math

import pytest
import torch

from captum_xcam.metrics import class_discrimination, mispointing, pointing_game
from captum_xcam.metrics.report import COLUMNS, markdown_table


def two_objects():
    own = torch.zeros(4, 4, 4, dtype=torch.bool)
    other = torch.zeros(4, 4, 4, dtype=torch.bool)
    own[:, 0:2, 0:2] = True  # top left
    other[:, 2:4, 2:4] = True  # bottom right
    return own, other


def test_share_of_positive_energy_on_the_own_object():
    own, other = two_objects()
    maps = torch.zeros(4, 1, 4, 4, dtype=torch.float64)
    maps[0, 0, 0, 0], maps[0, 0, 3, 3] = 3.0, 1.0  # 3 on own, 1 on other: 3/4
    maps[0, 0, 0, 3] = 100.0  # outside both objects: not counted
    maps[1, 0, 2:4, 2:4] = 2.0  # all on the other object
    maps[1, 0, 0, 0] = -5.0  # negative values are clamped to 0
    maps[2] = -1.0  # no positive energy anywhere: no preference
    maps[3, 0, 0:2, 0:2] = 1.0  # everything on its own object, and half as much
    maps[3, 0, 2, 2] = 2.0  # on the other: 4 / (4 + 2)
    share = class_discrimination(maps, own, other)
    torch.testing.assert_close(share, torch.tensor([0.75, 0.0, 0.5, 4 / 6],
                                                   dtype=torch.float64))


def test_a_cam_is_upsampled_and_single_object_rows_are_nan():
    own, other = two_objects()
    other[1] = False  # the second image has one object only
    cam = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).reshape(1, 1, 2, 2).expand(4, 1, 2, 2)
    share = class_discrimination(cam, own, other, interpolate_mode="nearest")
    assert math.isnan(share[1].item())
    torch.testing.assert_close(share[[0, 2, 3]], torch.ones(3))
    assert torch.nanmean(share).item() == 1.0
    # An overlap counts on both sides.
    both = own.clone()
    share = class_discrimination(cam[:1], own[:1], both[:1], interpolate_mode="nearest")
    torch.testing.assert_close(share, torch.tensor([0.5]))


def test_mispointing_is_the_pointing_game_on_the_other_object():
    own, other = two_objects()
    maps = torch.zeros(4, 1, 4, 4)
    maps[0, 0, 0, 0] = 1.0  # peak on its own object
    maps[1, 0, 3, 3] = 1.0  # peak on the other object: the error
    maps[2, 0, 1, 3] = 1.0  # one pixel from the other object
    # maps[3] constant: points nowhere
    miss = mispointing(maps, other, tolerance=0)
    torch.testing.assert_close(miss, torch.tensor([0.0, 1.0, 0.0, 0.0]))
    near = mispointing(maps, other, tolerance=1)
    torch.testing.assert_close(near, torch.tensor([0.0, 1.0, 1.0, 0.0]))
    torch.testing.assert_close(near, pointing_game(maps, other, tolerance=1).float())
    other[0] = False
    assert math.isnan(mispointing(maps, other, tolerance=1)[0].item())


def test_bad_masks():
    own, other = two_objects()
    maps = torch.rand(4, 1, 4, 4)
    with pytest.raises(ValueError, match="boolean"):
        class_discrimination(maps, own, other.float())
    with pytest.raises(ValueError, match="same shape"):
        class_discrimination(maps, own, other[:, :3])
    with pytest.raises(ValueError, match="4 maps and 2 regions"):
        class_discrimination(maps, own[:2], other[:2])
    with pytest.raises(ValueError, match="boolean"):
        mispointing(maps, other.long())


def test_columns_of_the_new_metrics():
    order = list(COLUMNS)
    for key, better in (("discrimination", "↑"), ("mispointing", "↓"), ("road_morf", "↓"),
                        ("road_lerf", "↑"), ("randomization", "↓"), ("random_logit", "↓")):
        assert COLUMNS[key].better == better, key
    # localisation, then faithfulness, then sanity, then axioms, then time
    assert order.index("energy") < order.index("discrimination") < order.index("mispointing")
    assert order.index("mispointing") < order.index("average_drop")
    assert order.index("insertion") < order.index("road_morf") < order.index("road_lerf")
    assert order.index("road_lerf") < order.index("randomization")
    assert order.index("random_logit") < order.index("conservation")
    assert order[-1] == "ms_per_image"
    table = markdown_table({"A": {"discrimination": 0.625, "road_morf": 0.25}})
    assert table.splitlines()[0] == "| Method | Class discrimination (%) ↑ | ROAD MoRF ↓ |"
    assert table.splitlines()[2] == "| A | 62.5 | 0.250 |"
