r"""Turning any attribution into one saliency map per image at input resolution,
and the scores that the metrics compare."""
from typing import Callable, Optional, Sequence, Tuple

import torch
from captum._utils.typing import TargetType
from captum.attr import LayerAttribution
from torch import Tensor

from captum_xcam._utils.targets import select_target_scores

_REDUCTIONS = ("sum", "abs_sum")


def input_resolution_maps(
    attributions: Tensor,
    size: Sequence[int],
    interpolate_mode: str = "bilinear",
    reduce: str = "sum",
) -> Tensor:
    r"""
    One map per image at the input's resolution, from either kind of
    attribution:

    - a CAM at the layer's resolution, shape (N, 1, h, w): upsampled to
      ``size`` with :meth:`captum.attr.LayerAttribution.interpolate`;
    - an input-resolution attribution such as Integrated Gradients or
      Saliency, shape (N, C, H, W) with ``(H, W) == size``: reduced over the
      colour channels (summed, as Captum's ``visualize_image_attr`` does, or
      summed in absolute value).

    Args:
        attributions (Tensor): (N, C, h, w) attributions.
        size (tuple[int, int]): The input's height and width.
        interpolate_mode (str, optional): Upsampling mode for CAMs, as in
                    ``LayerAttribution.interpolate``. Default: "bilinear"
        reduce (str, optional): "sum" or "abs_sum" over channels. Default: "sum"

    Returns:
        Tensor (N, H, W) on the attributions' device.
    """
    if not isinstance(attributions, Tensor) or attributions.dim() != 4:
        shape = tuple(attributions.shape) if isinstance(attributions, Tensor) else None
        raise ValueError(
            "attributions must be a (N, C, h, w) tensor: a CAM (N, 1, h, w) or an "
            f"input-resolution attribution (N, C, H, W); got shape {shape}."
        )
    if reduce not in _REDUCTIONS:
        raise ValueError(f"reduce must be one of {_REDUCTIONS}, got {reduce!r}.")
    size = tuple(int(s) for s in size)
    maps = attributions.detach()
    if tuple(maps.shape[2:]) != size:
        if maps.shape[1] != 1:
            raise ValueError(
                f"attributions of shape {tuple(maps.shape)} have {maps.shape[1]} "
                f"channels at a resolution other than the input's {size}: pass a "
                "CAM (N, 1, h, w) or an input-resolution attribution."
            )
        maps = LayerAttribution.interpolate(
            maps.to(torch.promote_types(maps.dtype, torch.float32)),
            size,
            interpolate_mode=interpolate_mode,
        )
    if reduce == "abs_sum":
        maps = maps.abs()
    return maps.sum(1)


def min_max_normalized(maps: Tensor) -> Tensor:
    r"""Each map (N, *dims) scaled to [0, 1] by its own minimum and maximum; a
    constant map becomes all zeros."""
    flat = maps.flatten(1)
    low = flat.amin(1).reshape((-1,) + (1,) * (maps.dim() - 1))
    span = flat.amax(1).reshape((-1,) + (1,) * (maps.dim() - 1)) - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, 1), 0)


def boxes_to_masks(boxes: Tensor, size: Sequence[int]) -> Tensor:
    r"""
    Boolean masks (N, H, W) of boxes ``(x_min, y_min, x_max, y_max)`` in pixel
    indices with both ends included, the convention of
    :func:`torchvision.ops.masks_to_boxes`.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}.")
    height, width = (int(s) for s in size)
    ys = torch.arange(height, device=boxes.device).reshape(1, -1, 1)
    xs = torch.arange(width, device=boxes.device).reshape(1, 1, -1)
    x0, y0, x1, y1 = (boxes[:, i].reshape(-1, 1, 1) for i in range(4))
    return (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)


def target_scores(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    target: TargetType,
    additional_forward_args: Optional[Tuple[object, ...]] = None,
    softmax: bool = True,
) -> Tensor:
    r"""The target's output (N,), after a softmax over dimension 1 when
    ``softmax`` is True, without autograd."""
    with torch.no_grad():
        output = forward_func(inputs, *(additional_forward_args or ()))
        if softmax:
            output = output.softmax(dim=1)
        return select_target_scores(output, target)


def check_batch(inputs: Tensor, maps: Tensor) -> None:
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        raise ValueError("inputs must be a (N, C, H, W) image tensor.")
    if maps.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"Got attributions for {maps.shape[0]} images and {inputs.shape[0]} inputs."
        )
