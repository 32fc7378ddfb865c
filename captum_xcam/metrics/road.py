r"""ROAD, RemOve And Debias (Rong et al., ICML 2022): pixels removed by their
rank and filled by noisy linear imputation, so that the shape of the removed
region does not tell the model the class."""
import math
import warnings
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from captum._utils.typing import TargetType
from torch import Tensor

from captum_xcam._utils.chunks import evaluate_in_chunks
from captum_xcam._utils.formatting import as_forward_args
from captum_xcam._utils.targets import TargetSelector, rows_of
from captum_xcam.metrics._maps import check_batch, input_resolution_maps
from captum_xcam.metrics.deletion_insertion import pixel_ranks

GeneratorType = Union[None, int, torch.Generator]

DEFAULT_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


class RoadCurves(NamedTuple):
    r"""Results of :func:`road`.

    Attributes:
        curves (Tensor): (N, P) the target's score with ``percentiles[j]`` %
                    of the pixels removed and imputed.
        percentiles (Tensor): (P,) the removed shares in percent: the x axis.
        mean (Tensor): (N,) the mean of each curve over the percentiles, the
                    paper's summary: **lower is better for MoRF, higher for
                    LeRF**.
    """

    curves: Tensor
    percentiles: Tensor
    mean: Tensor


def neighbour_sum(values: Tensor) -> Tensor:
    r"""``sum_j w_j values[neighbour j]`` for each pixel of (B, C, H, W)
    values, with the paper's weights (1/6 direct, 1/12 diagonal) and the
    neighbours outside the image left out (zero padding). The stencil is
    ``([1, 2, 1]^T [1, 2, 1] - 4 delta) / 12``: two 3-tap passes."""
    padded = F.pad(values, (1, 1, 1, 1))
    rows = padded[..., :, :-2] + 2 * padded[..., :, 1:-1] + padded[..., :, 2:]
    both = rows[..., :-2, :] + 2 * rows[..., 1:-1, :] + rows[..., 2:, :]
    return (both - 4 * values) / 12


def _generator_for(generator: GeneratorType, device: torch.device) -> Optional[torch.Generator]:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator(device=device).manual_seed(generator)
    raise TypeError(f"generator must be None, an int seed or a torch.Generator, got {generator!r}.")


def noisy_linear_imputation(
    images: Tensor,
    removed_mask: Tensor,
    noise: float = 0.01,
    generator: GeneratorType = None,
    *,
    tol: float = 1e-8,
    max_iter: Optional[int] = None,
) -> Tensor:
    r"""
    The noisy linear imputation of ROAD [Rong et al., "A Consistent and
    Efficient Evaluation Strategy for Attribution Methods", ICML 2022,
    https://arxiv.org/abs/2202.00449]: every removed pixel ``i``
    becomes the weighted mean of its neighbours ``N(i)`` inside the image,
    weight ``w = 1/6`` for the 4 direct and ``1/12`` for the 4 diagonal ones,

    .. math::
        x_i = \frac{\sum_{j \in N(i)} w_{ij} x_j}{\sum_{j \in N(i)} w_{ij}},

    solved jointly for all removed pixels (removed neighbours are unknowns,
    kept ones are the image's values), then Gaussian noise of standard
    deviation ``noise`` is added to the removed pixels only.

    Multiplied by ``d_i = sum_j w_ij``, the equations read ``(D - W_uu) x_u =
    W_uk x_k``: the graph Laplacian of the removed pixels with Dirichlet data
    from the kept ones. The weights are symmetric, so this matrix is
    symmetric, and positive definite whenever one pixel is kept (every
    connected set of removed pixels then touches a kept one). It is solved by
    conjugate gradients preconditioned with ``D`` (Jacobi), batched over
    images and channels with a 3x3 stencil, in float64 on the images' device,
    until ``||W_uk x_k - (D - W_uu) x_u||_2 <= tol ||W_uk x_k||_2`` for every
    image and channel (a warning when ``max_iter`` iterations do not reach it);
    the paper's code solves the same system with a sparse direct solver on the
    CPU. The noise is drawn independently for every pixel and channel.

    The paper's code imputes images in [0, 1], before normalisation, with
    ``noise=0.01``; for normalised inputs scale ``noise`` by the inverse of
    the normalisation's standard deviation (about 0.044 for ImageNet's).

    Args:
        images (Tensor): (N, C, H, W).
        removed_mask (Tensor): (N, H, W) or (N, 1, H, W) bool, True where a pixel
                    is removed (all its channels); at least one pixel of every
                    image must be kept.
        noise (float, optional): Standard deviation of the added noise.
                    Default: 0.01 (the paper's)
        generator (int or torch.Generator, optional): The noise's random
                    generator, or a seed for one on the images' device.
                    Default: None (torch's global generator)
        tol (float, optional): Relative residual at which to stop. Default: 1e-8
        max_iter (int, optional): Most iterations. Default: None
                    (``20 (H + W) + 100``)

    Returns:
        Tensor like ``images``: kept pixels unchanged, removed ones imputed.
    """
    mask = _check_imputation(images, removed_mask, noise)
    known = ~mask
    if not bool(known.flatten(1).any(1).all()):
        raise ValueError(
            "Every image must keep at least one pixel: with all pixels removed the "
            "imputation has no data (remove less than 100 %)."
        )
    height, width = images.shape[-2:]
    max_iter = 20 * (height + width) + 100 if max_iter is None else max_iter
    values = images.detach().to(torch.float64)
    m = mask.to(torch.float64)
    filled = _solve_laplace(values * (1 - m), m, tol, max_iter)
    if noise > 0:
        g = _generator_for(generator, images.device)
        where = g.device if g is not None else images.device
        draws = torch.randn(images.shape, generator=g, device=where, dtype=images.dtype)
        filled = filled + noise * draws.to(images.device, torch.float64) * m
    return filled.to(images.dtype)


def _check_imputation(images: Tensor, removed_mask: Tensor, noise: float) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError("images must be a floating point (N, C, H, W) tensor.")
    if not isinstance(removed_mask, Tensor) or removed_mask.dtype != torch.bool:
        raise ValueError("removed_mask must be a bool tensor (N, H, W), True where removed.")
    mask = removed_mask.unsqueeze(1) if removed_mask.dim() == 3 else removed_mask
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != images.shape[0] or (
        mask.shape[2:] != images.shape[2:]
    ):
        raise ValueError(
            f"removed_mask of shape {tuple(removed_mask.shape)} does not match images "
            f"{tuple(images.shape)}: pass (N, H, W) bool."
        )
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not noise >= 0:
        raise ValueError(f"noise must be a number >= 0, got {noise!r}.")
    return mask.to(images.device)


def _solve_laplace(data: Tensor, m: Tensor, tol: float, max_iter: int) -> Tensor:
    r"""``data`` (B, C, H, W) with its pixels where ``m`` (B, 1, H, W) is 1
    replaced by the solution of ``(D - W_uu) x_u = W_uk data_k``: one system
    per image and channel, each dropped from the iterations once solved
    (checked every 10 iterations)."""
    shape = data.shape
    data = data.reshape(-1, 1, *shape[2:])
    m = removed = m.expand(shape).reshape(data.shape)
    degree = neighbour_sum(torch.ones_like(data[:1]))  # d_i: the weights inside the image

    def laplacian(u: Tensor, mask: Tensor) -> Tensor:
        return mask * (degree * u - neighbour_sum(u))

    def dot(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).sum((2, 3), keepdim=True)

    b = m * neighbour_sum(data)
    limit = tol * dot(b, b).sqrt()
    # Start from the kept pixels' mean; from 0 where b = 0, the exact solution.
    mean = data.sum((2, 3), keepdim=True) / (1 - m).sum((2, 3), keepdim=True)
    x = torch.where(limit > 0, mean, 0) * m
    solution = x.clone()
    r = b - laplacian(x, m)
    p = r / degree
    rz = dot(r, p)
    active = torch.arange(len(data), device=data.device)
    for iteration in range(max_iter + 1):
        if iteration % 10 == 0 or iteration == max_iter:
            done = (dot(r, r).sqrt() <= limit).flatten()
            solution[active[done]] = x[done]
            keep = ~done
            active, x, r, p, rz, limit, m, b = (
                t[keep] for t in (active, x, r, p, rz, limit, m, b))
            if len(active) == 0 or iteration == max_iter:
                break
        q = laplacian(p, m)
        pq = dot(p, q)
        alpha = torch.where(pq > 0, rz / torch.where(pq > 0, pq, 1), 0)
        x = x + alpha * p
        r = r - alpha * q
        z = r / degree
        rz_next = dot(r, z)
        beta = torch.where(rz > 0, rz_next / torch.where(rz > 0, rz, 1), 0)
        p = z + beta * p
        rz = rz_next
    if len(active):
        solution[active] = x
        residual = b - laplacian(x, m)
        worst = (dot(residual, residual).sqrt() / dot(b, b).sqrt()).max()
        warnings.warn(
            f"noisy_linear_imputation: {max_iter} conjugate gradient iterations "
            f"reached a relative residual of {float(worst):.2e}, above tol={tol:g}; "
            "raise max_iter for a closer solution.",
            stacklevel=3,
        )
    return (data + solution * removed).reshape(shape)


def road(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Tensor,
    target: TargetType = None,
    additional_forward_args: Optional[object] = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    most_relevant_first: bool = True,
    noise: float = 0.01,
    softmax: bool = True,
    perturbations_per_eval: int = 9,
    generator: GeneratorType = None,
    show_progress: bool = False,
    *,
    interpolate_mode: str = "bilinear",
    reduce: str = "sum",
) -> RoadCurves:
    r"""
    ROAD, RemOve And Debias [Rong et al., "A Consistent and Efficient
    Evaluation Strategy for Attribution Methods", ICML 2022,
    https://arxiv.org/abs/2202.00449]: for each percentile ``p``, remove the
    ``floor(p H W / 100)`` pixels ranked most relevant (MoRF) or least
    relevant (LeRF) first, fill them by :func:`noisy_linear_imputation`, and
    score the target's softmax probability. Without retraining, the
    imputation keeps the removal's shape from leaking the class.

    **MoRF: a lower mean is better; LeRF: a higher mean is better.**

    Ranks are those of :func:`deletion`: decreasing saliency, ties broken by
    pixel order (row-major, earlier first). LeRF removes the end of the same
    order, so MoRF at ``p`` and LeRF at ``100 - p`` remove complementary sets,
    as in the paper's code. (pytorch-grad-cam's ``ROADMostRelevantFirst(p)``
    removes the top ``100 - p`` %; over the symmetric default percentiles the
    means agree.) The paper's code breaks ties with a small random
    perturbation of the map; this one is deterministic. The paper reports
    accuracy and the probability of the predicted class; this scores the
    ``target``.

    Args:
        forward_func (Callable): The model, returning (N, classes) scores.
        inputs (Tensor): Images (N, C, H, W).
        attributions (Tensor): A CAM (N, 1, h, w) or an input-resolution
                    attribution (N, C, H, W); see :func:`input_resolution_maps`.
        target (int, list or Tensor, optional): The explained class per image.
        additional_forward_args (Any, optional): Further arguments of forward_func.
        percentiles (sequence of float, optional): Shares of removed pixels, in
                    percent, each in [0, 100). Default: 10, 20, ..., 90 (the paper's)
        most_relevant_first (bool, optional): MoRF if True, LeRF if False.
                    Default: True
        noise (float, optional): Standard deviation of the imputation's noise,
                    in the inputs' units. Default: 0.01 (the paper's, on [0, 1]
                    images; see :func:`noisy_linear_imputation`)
        softmax (bool, optional): Score the softmax probability; False scores
                    the raw output. Default: True
        perturbations_per_eval (int, optional): Imputed copies of each image
                    per forward pass. Default: 9
        generator (int or torch.Generator, optional): Seed or generator of the
                    noise; its draws follow the chunks, so they change with
                    ``perturbations_per_eval``. Default: None (torch's global one)
        show_progress (bool, optional): Show a progress bar. Default: False
        interpolate_mode (str, optional): Upsampling of CAMs. Default: "bilinear"
        reduce (str, optional): Reduction over colour channels. Default: "sum"

    Returns:
        :class:`RoadCurves` with the curves (N, P), the percentiles (P,) and
        the mean score per image (N,).
    """
    maps = input_resolution_maps(attributions, inputs.shape[2:], interpolate_mode, reduce)
    check_batch(inputs, maps)
    n, _, height, width = inputs.shape
    pixels = height * width
    shares = _check_percentiles(percentiles)
    removed = torch.tensor([int(pixels * p / 100) for p in shares], device=inputs.device)
    ranks = pixel_ranks(maps.to(inputs.device)).reshape(n, 1, height, width)
    if not most_relevant_first:
        ranks = pixels - 1 - ranks
    args = as_forward_args(additional_forward_args)
    g = _generator_for(generator, inputs.device)
    select: Optional[TargetSelector] = None

    def imputed_scores(rows: Tensor, steps: Tensor) -> Tensor:
        nonlocal select
        is_removed = ranks[rows] < removed[steps].reshape(-1, 1, 1, 1)
        imputed = noisy_linear_imputation(inputs[rows], is_removed, noise, g)
        with torch.no_grad():
            output = forward_func(imputed, *(rows_of(args, rows) or ()))
            if softmax:
                output = output.softmax(dim=1)
            select = select or TargetSelector.for_examples(target, output, n)
            return select(output, rows).to(inputs.dtype)

    curves = evaluate_in_chunks(
        n, len(shares), imputed_scores, perturbations_per_eval, inputs.device,
        show_progress, desc="ROAD MoRF" if most_relevant_first else "ROAD LeRF",
    )
    axis = torch.tensor(shares, dtype=curves.dtype, device=curves.device)
    return RoadCurves(curves, axis, curves.mean(1))


def _check_percentiles(percentiles: Sequence[float]) -> list:
    shares = [float(p) for p in percentiles]
    if not shares or not all(math.isfinite(p) and 0 <= p < 100 for p in shares):
        raise ValueError(
            f"percentiles must be a non-empty sequence of numbers in [0, 100), got "
            f"{percentiles!r}."
        )
    return shares
