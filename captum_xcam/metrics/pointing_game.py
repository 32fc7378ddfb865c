r"""Localisation against ground truth: the pointing game (Zhang et al., 2016)
and the energy-based pointing game (Wang et al., Score-CAM, 2020)."""
import torch
from torch import Tensor

from captum_xcam.metrics._maps import input_resolution_maps


def _check_regions(maps: Tensor, regions: Tensor) -> None:
    if regions.dtype != torch.bool or regions.dim() != 3:
        raise ValueError(
            "regions must be boolean masks (N, H, W); turn boxes into masks with "
            f"boxes_to_masks. Got {regions.dtype} of shape {tuple(regions.shape)}."
        )
    if maps.shape[0] != regions.shape[0]:
        raise ValueError(f"Got {maps.shape[0]} maps and {regions.shape[0]} regions.")


def pointing_game(
    attributions: Tensor,
    regions: Tensor,
    tolerance: float = 15,
    interpolate_mode: str = "bilinear",
    reduce: str = "sum",
) -> Tensor:
    r"""
    The pointing game [Zhang et al., "Top-down Neural Attention by Excitation
    Backprop", ECCV 2016, https://arxiv.org/abs/1608.00507, sec. 5.1]: a hit
    when the map's maximum lies within ``tolerance`` pixels (Euclidean
    distance) of the ground-truth region; the accuracy is the share of hits.

    The maximum is taken on the map at the regions' resolution (CAMs are
    upsampled first); of several equal maxima the first in row-major order
    counts. A constant map points nowhere and counts as a miss.

    Args:
        attributions (Tensor): A CAM (N, 1, h, w) or an input-resolution
                    attribution (N, C, H, W); see :func:`input_resolution_maps`.
        regions (Tensor): (N, H, W) bool ground-truth masks (use
                    :func:`boxes_to_masks` for boxes).
        tolerance (float, optional): In pixels. Default: 15 (the paper's, for
                    images of about 224 pixels; scale it with the image size)
        interpolate_mode (str, optional): Upsampling of CAMs. Default: "bilinear"
        reduce (str, optional): Reduction over colour channels. Default: "sum"

    Returns:
        Tensor (N,) of bool hits, on the regions' device.
    """
    maps = input_resolution_maps(attributions, regions.shape[1:], interpolate_mode, reduce)
    _check_regions(maps, regions)
    maps = maps.to(regions.device)
    n, height, width = regions.shape
    flat = maps.flatten(1)
    peak = flat.argmax(1)
    py, px = (peak // width).reshape(n, 1, 1), (peak % width).reshape(n, 1, 1)
    ys = torch.arange(height, device=regions.device).reshape(1, -1, 1)
    xs = torch.arange(width, device=regions.device).reshape(1, 1, -1)
    squared = ((ys - py) ** 2 + (xs - px) ** 2).to(torch.float64)
    nearest = torch.where(regions, squared, torch.inf).flatten(1).amin(1)
    constant = flat.amax(1) == flat.amin(1)
    return (nearest <= float(tolerance) ** 2) & ~constant


def energy_pointing_game(
    attributions: Tensor,
    regions: Tensor,
    interpolate_mode: str = "bilinear",
    reduce: str = "sum",
) -> Tensor:
    r"""
    The energy-based pointing game [Wang et al., "Score-CAM", CVPR Workshops
    2020, https://arxiv.org/abs/1910.01279, sec. 5.2]: the share of the map's
    energy that falls inside the ground-truth region,

    .. math::
        \text{Proportion} = \frac{\sum_{(i,j) \in \text{bbox}} L_{ij}}
            {\sum_{(i,j) \in \text{bbox}} L_{ij} + \sum_{(i,j) \notin \text{bbox}} L_{ij}}

    with ``L`` the map at the regions' resolution, its negative values set to
    0 (a ReLU'd CAM is unchanged). A map with no positive energy scores 0.
    Score-CAM uses the bounding box as region (:func:`boxes_to_masks`).

    Args:
        attributions (Tensor): A CAM (N, 1, h, w) or an input-resolution
                    attribution (N, C, H, W); see :func:`input_resolution_maps`.
        regions (Tensor): (N, H, W) bool ground-truth masks.
        interpolate_mode (str, optional): Upsampling of CAMs. Default: "bilinear"
        reduce (str, optional): Reduction over colour channels. Default: "sum"

    Returns:
        Tensor (N,) of proportions in [0, 1], on the regions' device.
    """
    maps = input_resolution_maps(attributions, regions.shape[1:], interpolate_mode, reduce)
    _check_regions(maps, regions)
    energy = maps.to(regions.device).clamp(min=0).flatten(1)
    inside = (energy * regions.flatten(1)).sum(1)
    total = energy.sum(1)
    return torch.where(total > 0, inside / torch.where(total > 0, total, 1), 0)
