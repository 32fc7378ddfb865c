r"""Class discrimination on images with two objects of different classes: how
much of the map of one class falls on its own object rather than on the other
one, and how often its peak points at the other object."""
import torch
from torch import Tensor

from captum_xcam.metrics._maps import input_resolution_maps
from captum_xcam.metrics.pointing_game import _check_regions, pointing_game


def _check_other(maps: Tensor, masks: Tensor, other_masks: Tensor) -> None:
    _check_regions(maps, masks)
    _check_regions(maps, other_masks)
    if masks.shape != other_masks.shape:
        raise ValueError(
            f"masks {tuple(masks.shape)} and other_masks {tuple(other_masks.shape)} "
            "must have the same shape."
        )


def class_discrimination(
    attributions: Tensor,
    masks: Tensor,
    other_masks: Tensor,
    interpolate_mode: str = "bilinear",
    reduce: str = "sum",
) -> Tensor:
    r"""
    The share of a map's positive energy on the explained object among the
    energy on both objects of a two-object image, the energy-based pointing
    game [Wang et al., "Score-CAM", CVPR Workshops 2020,
    https://arxiv.org/abs/1910.01279, sec. 5.2] restricted to the two
    objects, in the spirit of Grad-CAM's class discrimination [Selvaraju et
    al., ICCV 2017, https://arxiv.org/abs/1610.02391]:

    .. math::
        D = \frac{\sum_{p \in \text{own}} L^+_p}
            {\sum_{p \in \text{own}} L^+_p + \sum_{p \in \text{other}} L^+_p}

    with ``L+`` the map at the masks' resolution, its negative values set to
    0. **Higher is better**: 1 when all the energy on the objects is on the
    explained one, 0.5 when split evenly, 0 when it is all on the other one.

    Conventions: a map with no positive energy on either object scores 0.5
    ("no preference"); an image whose ``other_masks`` row is empty (a single
    object) scores NaN, so that ``torch.nanmean`` leaves it out. A pixel in
    both masks counts for both.

    Args:
        attributions (Tensor): A CAM (N, 1, h, w) or an input-resolution
                    attribution (N, C, H, W) for the explained class; see
                    :func:`input_resolution_maps`.
        masks (Tensor): (N, H, W) bool masks of the explained object.
        other_masks (Tensor): (N, H, W) bool masks of the other object.
        interpolate_mode (str, optional): Upsampling of CAMs. Default: "bilinear"
        reduce (str, optional): Reduction over colour channels. Default: "sum"

    Returns:
        Tensor (N,) in [0, 1] (NaN without another object), on the masks' device.
    """
    maps = input_resolution_maps(attributions, masks.shape[1:], interpolate_mode, reduce)
    _check_other(maps, masks, other_masks)
    energy = maps.to(masks.device).clamp(min=0).flatten(1)
    own = (energy * masks.flatten(1)).sum(1)
    other = (energy * other_masks.flatten(1)).sum(1)
    total = own + other
    share = torch.where(total > 0, own / torch.where(total > 0, total, 1), 0.5)
    return torch.where(other_masks.flatten(1).any(1), share, torch.nan)


def mispointing(
    attributions: Tensor,
    other_masks: Tensor,
    tolerance: float = 15,
    interpolate_mode: str = "bilinear",
    reduce: str = "sum",
) -> Tensor:
    r"""
    The pointing game [Zhang et al., ECCV 2016, https://arxiv.org/abs/1608.00507,
    sec. 5.1] played against the *other* object of a two-object image: 1 when
    the map's maximum lies within ``tolerance`` pixels of the other object's
    mask, the error case of a map that does not tell the classes apart.
    **Lower is better.** Hits are those of :func:`pointing_game` (a constant
    map points nowhere: 0); an image whose ``other_masks`` row is empty
    scores NaN, left out by ``torch.nanmean``.

    Args:
        attributions (Tensor): A CAM (N, 1, h, w) or an input-resolution
                    attribution (N, C, H, W) for the explained class.
        other_masks (Tensor): (N, H, W) bool masks of the other object.
        tolerance (float, optional): In pixels. Default: 15 (the pointing
                    game's, for images of about 224 pixels)
        interpolate_mode (str, optional): Upsampling of CAMs. Default: "bilinear"
        reduce (str, optional): Reduction over colour channels. Default: "sum"

    Returns:
        Tensor (N,) float of 0 and 1 (NaN without another object), on the
        masks' device.
    """
    hits = pointing_game(attributions, other_masks, tolerance, interpolate_mode, reduce)
    return torch.where(other_masks.flatten(1).any(1), hits.float(), torch.nan)
