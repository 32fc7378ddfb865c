r"""Deletion and Insertion curves (Petsiuk et al., RISE, BMVC 2018)."""
import math
from typing import Callable, NamedTuple, Optional, Union

import torch
from captum._utils.typing import TargetType
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from captum_xcam._utils.chunks import evaluate_in_chunks
from captum_xcam._utils.formatting import as_forward_args
from captum_xcam._utils.targets import TargetSelector, rows_of
from captum_xcam.metrics._maps import check_batch, input_resolution_maps

SubstrateType = Union[str, float, Tensor, Callable[[Tensor], Tensor]]


class PixelCurves(NamedTuple):
    r"""Results of :func:`deletion` and :func:`insertion`.

    Attributes:
        curves (Tensor): (N, S + 1) the target's score after each step, the
                    first column on the unchanged start image.
        fractions (Tensor): (S + 1,) the share of pixels changed at each step,
                    from 0 to 1: the curves' x axis.
        auc (Tensor): (N,) area under each curve (trapezoidal rule over
                    ``fractions``).
    """

    curves: Tensor
    fractions: Tensor
    auc: Tensor


def deletion(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    additional_forward_args: Optional[object] = None,
    step: Optional[int] = None,
    substrate: SubstrateType = "zeros",
    softmax: bool = True,
    perturbations_per_eval: int = 64,
    interpolate_mode: str = "bilinear",
    reduce: str = "sum",
    show_progress: bool = False,
) -> PixelCurves:
    r"""
    The Deletion metric of RISE [Petsiuk et al., BMVC 2018,
    https://arxiv.org/abs/1806.07421, sec. 4.1]: starting from the image,
    replace ``step`` pixels at a time by the substrate, most salient first
    (ties broken by pixel order), and record the target's probability after
    each step. A faithful map makes it fall fast: **lower AUC is better**.

    Args:
        forward_func (Callable): The model, returning (N, classes) scores.
        inputs (Tensor): Images (N, C, H, W).
        attributions (Tensor): A CAM (N, 1, h, w) or an input-resolution
                    attribution (N, C, H, W), turned into one map per image by
                    :func:`input_resolution_maps` (``interpolate_mode``, ``reduce``).
        target (int, list or Tensor, optional): The explained class of each
                    image, as in Captum.
        additional_forward_args (Any, optional): Further arguments of
                    forward_func. Default: None
        step (int, optional): Pixels changed per step (all colour channels of
                    a pixel change together). Default: None (the image width,
                    as in the RISE code: 224 for 224x224 images)
        substrate (str, float, Tensor or Callable, optional): What removed
                    pixels become: "zeros" (the paper's choice for deletion),
                    "blur" (a Gaussian blur of the image, kernel 11, sigma 5), a
                    number, a tensor broadcastable to the inputs, or a function
                    of the inputs. Default: "zeros"
        softmax (bool, optional): Score the softmax probability, as the paper
                    does; False scores the raw output. Default: True
        perturbations_per_eval (int, optional): Modified copies of each
                    image per forward pass (as in Captum: N images make N
                    times as many rows). Default: 64
        show_progress (bool, optional): Show a progress bar. Default: False

    Returns:
        :class:`PixelCurves` with the curves (N, S + 1), their x axis and AUCs,
        ``S = ceil(H W / step)``.
    """
    return _pixel_curves(
        forward_func, inputs, attributions, target, additional_forward_args, step,
        substrate, softmax, perturbations_per_eval, interpolate_mode, reduce,
        show_progress, insert=False,
    )


def insertion(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    additional_forward_args: Optional[object] = None,
    step: Optional[int] = None,
    substrate: SubstrateType = "blur",
    softmax: bool = True,
    perturbations_per_eval: int = 64,
    interpolate_mode: str = "bilinear",
    reduce: str = "sum",
    show_progress: bool = False,
) -> PixelCurves:
    r"""
    The Insertion metric of RISE [Petsiuk et al., BMVC 2018,
    https://arxiv.org/abs/1806.07421, sec. 4.1]: starting from the substrate
    (by default the blurred image, as in the paper), put back ``step`` pixels
    of the image at a time, most salient first, and record the target's
    probability after each step. A faithful map makes it rise fast: **higher
    AUC is better**. Arguments and result as for :func:`deletion`, except the
    default ``substrate="blur"``.
    """
    return _pixel_curves(
        forward_func, inputs, attributions, target, additional_forward_args, step,
        substrate, softmax, perturbations_per_eval, interpolate_mode, reduce,
        show_progress, insert=True,
    )


def substrate_for(inputs: Tensor, substrate: SubstrateType) -> Tensor:
    r"""The substrate image for each input, shaped like the inputs."""
    if isinstance(substrate, str):
        if substrate == "zeros":
            return torch.zeros_like(inputs)
        if substrate == "blur":
            return gaussian_blur(inputs, kernel_size=[11, 11], sigma=[5.0, 5.0])
        raise ValueError(
            'substrate must be "zeros", "blur", a number, a tensor or a callable, '
            f"got {substrate!r}."
        )
    if callable(substrate):
        values = substrate(inputs)
    else:
        values = torch.as_tensor(substrate, dtype=inputs.dtype, device=inputs.device)
    try:
        return values.to(inputs.device, inputs.dtype).broadcast_to(inputs.shape)
    except RuntimeError:
        raise ValueError(
            f"The substrate of shape {tuple(values.shape)} does not broadcast to the "
            f"inputs' shape {tuple(inputs.shape)}."
        ) from None


def pixel_ranks(maps: Tensor) -> Tensor:
    r"""For maps (N, H, W), the rank (N, H W) of each pixel in decreasing order
    of saliency, 0 for the most salient; ties keep the pixels' order."""
    flat = maps.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return ranks.scatter_(1, order, positions)


def _pixel_curves(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType,
    additional_forward_args: Optional[object],
    step: Optional[int],
    substrate: SubstrateType,
    softmax: bool,
    perturbations_per_eval: int,
    interpolate_mode: str,
    reduce: str,
    show_progress: bool,
    insert: bool,
) -> PixelCurves:
    maps = input_resolution_maps(attributions, inputs.shape[2:], interpolate_mode, reduce)
    check_batch(inputs, maps)
    n, _, height, width = inputs.shape
    pixels = height * width
    step = width if step is None else step
    if not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be a positive int, got {step!r}.")
    args = as_forward_args(additional_forward_args)
    num_steps = math.ceil(pixels / step)
    changed = torch.clamp(torch.arange(num_steps + 1, device=inputs.device) * step, max=pixels)
    ranks = pixel_ranks(maps.to(inputs.device)).reshape(n, 1, height, width)
    background = substrate_for(inputs, substrate)
    start, end = (background, inputs) if insert else (inputs, background)
    select: Optional[TargetSelector] = None

    def modified_scores(rows: Tensor, steps: Tensor) -> Tensor:
        nonlocal select
        is_changed = ranks[rows] < changed[steps].reshape(-1, 1, 1, 1)
        modified = torch.where(is_changed, end[rows], start[rows])
        with torch.no_grad():
            output = forward_func(modified, *(rows_of(args, rows) or ()))
            if softmax:
                output = output.softmax(dim=1)
            select = select or TargetSelector.for_examples(target, output, n)
            return select(output, rows).to(inputs.dtype)

    # Every (image, step) pair is one modified image.
    curves = evaluate_in_chunks(
        n, num_steps + 1, modified_scores, perturbations_per_eval, inputs.device,
        show_progress, desc="Insertion" if insert else "Deletion",
    )
    fractions = changed.to(curves.dtype) / pixels
    return PixelCurves(curves, fractions, torch.trapezoid(curves, fractions, dim=1))
