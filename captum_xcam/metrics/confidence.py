r"""Average Drop and Increase in Confidence (Chattopadhyay et al., Grad-CAM++,
WACV 2018, sec. 4.1)."""
from typing import Callable, NamedTuple, Optional

import torch
from captum._utils.typing import TargetType
from torch import Tensor

from captum_xcam._utils.formatting import as_forward_args
from captum_xcam.metrics._maps import (
    check_batch,
    input_resolution_maps,
    min_max_normalized,
    target_scores,
)


class ConfidenceChange(NamedTuple):
    r"""Per-image results of :func:`confidence_change`, each of shape (N,).

    Attributes:
        drop (Tensor): ``100 max(0, Y - O) / Y``; its mean is the Average Drop (%).
        increase (Tensor): bool, ``O > Y``; its mean times 100 is the
                    Increase in Confidence (%).
        confidence (Tensor): ``Y``, the target's confidence on the image.
        masked_confidence (Tensor): ``O``, on the image times the map.
    """

    drop: Tensor
    increase: Tensor
    confidence: Tensor
    masked_confidence: Tensor


def confidence_change(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    additional_forward_args: Optional[object] = None,
    softmax: bool = True,
    interpolate_mode: str = "bilinear",
    reduce: str = "sum",
) -> ConfidenceChange:
    r"""
    Average Drop and Increase in Confidence [Chattopadhyay et al., "Grad-CAM++",
    WACV 2018, sec. 4.1, https://arxiv.org/abs/1710.11063]. With ``Y`` the
    target's confidence on image ``X`` and ``O`` its confidence on the image
    masked by the explanation, ``X * E`` with ``E`` the map at input
    resolution, min-max normalised to [0, 1] per image:

    .. math::
        \text{Average Drop} = \frac{100}{N} \sum_i \frac{\max(0, Y_i - O_i)}{Y_i},
        \qquad
        \text{Increase in Confidence} = \frac{100}{N} \sum_i [O_i > Y_i]

    Lower Average Drop and higher Increase are better. A constant map gives
    ``E = 0`` (it singles nothing out). Where ``Y = 0`` the drop is 0.

    Args:
        forward_func (Callable): The model, returning (N, classes) scores.
        inputs (Tensor): Images (N, C, H, W).
        attributions (Tensor): A CAM (N, 1, h, w) or an input-resolution
                    attribution (N, C, H, W); see :func:`input_resolution_maps`.
        target (int, list or Tensor, optional): The explained class of each
                    image, as in Captum.
        additional_forward_args (Any, optional): Further arguments of
                    forward_func. Default: None
        softmax (bool, optional): Compare softmax probabilities, as the paper
                    does; False compares the raw outputs. Default: True
        interpolate_mode (str, optional): Upsampling of CAMs. Default: "bilinear"
        reduce (str, optional): Reduction of input-resolution attributions over
                    colour channels, "sum" or "abs_sum". Default: "sum"

    Returns:
        :class:`ConfidenceChange` with per-image tensors, on the inputs' device.
    """
    args = as_forward_args(additional_forward_args)
    maps = input_resolution_maps(attributions, inputs.shape[2:], interpolate_mode, reduce)
    check_batch(inputs, maps)
    explanation = min_max_normalized(maps).to(inputs.device, inputs.dtype).unsqueeze(1)
    y = target_scores(forward_func, inputs, target, args, softmax)
    o = target_scores(forward_func, inputs * explanation, target, args, softmax)
    safe_y = torch.where(y != 0, y, torch.ones_like(y))
    drop = torch.where(y != 0, 100 * (y - o).clamp(min=0) / safe_y, torch.zeros_like(y))
    return ConfidenceChange(drop, o > y, y, o)
