r"""Captum's own explanation metrics applied to CAMs.

Captum already has ``captum.metrics.infidelity`` [Yeh et al., NeurIPS 2019,
https://arxiv.org/abs/1901.09392] and ``captum.metrics.sensitivity_max``
(the same paper's max-sensitivity). They are used as they are; this module
only supplies what a CAM needs to fit them.

**Max-sensitivity** calls the explanation function on inputs formatted as a
tuple and expects a tuple back, as Captum's input attributions return; a CAM
returns one tensor (as Captum's ``LayerGradCam`` does), which
``sensitivity_max`` would silently misread as one tensor per example.
:func:`explanation_func` wraps the CAM; keyword arguments pass through, the
targets being expanded with the perturbed copies by Captum::

    >>> from captum.metrics import sensitivity_max
    >>> cam = LayerXGradCam(model, model.layer4)
    >>> sens = sensitivity_max(explanation_func(cam), images, target=labels,
    ...                        perturb_radius=0.02, n_perturb_samples=10,
    ...                        relu_attributions=True)   # (N,)

**Infidelity** multiplies attributions and perturbations element-wise, so
both must be shaped like the inputs: :func:`expand_to_inputs` upsamples the
CAM and spreads each pixel's value evenly over the colour channels, and
:func:`pixel_noise` perturbs each pixel by the same amount in every channel,
so that ``sum(attribution * perturbation) = sum_p map_p * noise_p``::

    >>> from captum.metrics import infidelity
    >>> attr = cam.attribute(images, target=labels, relu_attributions=True)
    >>> infid = infidelity(model, pixel_noise(0.1), images,
    ...                    expand_to_inputs(attr, images), target=labels,
    ...                    normalize=True)   # (N,)

Small noise tests a map as a local linear model (gradient-like). For region
maps, the paper's *square removal* perturbation (:func:`square_removal`)
asks instead whether the map's total over a random square predicts the drop
of the output when the square is removed.
"""
from typing import Callable, Tuple

import torch
from captum.attr import LayerAttribution
from torch import Tensor

from captum_xcam.metrics._maps import input_resolution_maps


def explanation_func(cam: LayerAttribution) -> Callable[..., Tuple[Tensor, ...]]:
    r"""``cam.attribute`` returning a one-tuple, as ``captum.metrics.sensitivity_max``
    expects of an explanation function."""

    def explain(inputs: object, **kwargs: object) -> Tuple[Tensor, ...]:
        return (cam.attribute(inputs, **kwargs),)

    return explain


def expand_to_inputs(
    attributions: Tensor, inputs: Tensor, interpolate_mode: str = "bilinear"
) -> Tensor:
    r"""
    A CAM (N, 1, h, w) as an attribution shaped like the inputs (N, C, H, W):
    upsampled with ``LayerAttribution.interpolate`` to (H, W) and divided
    evenly among the C channels, so that a pixel's channels add up to the map's
    value there. An input-resolution attribution is returned unchanged.
    """
    if attributions.shape == inputs.shape:
        return attributions
    maps = input_resolution_maps(attributions, inputs.shape[2:], interpolate_mode)
    channels = inputs.shape[1]
    return (maps.unsqueeze(1) / channels).expand(-1, channels, -1, -1).to(inputs.dtype)


def pixel_noise(std: float = 0.1) -> Callable[[Tensor], Tuple[Tensor, Tensor]]:
    r"""
    A ``perturb_func`` for ``captum.metrics.infidelity``: Gaussian noise ``I``
    of standard deviation ``std`` drawn per pixel (shared by the colour
    channels, from torch's global generator), returned as
    ``(I, inputs - I)`` as infidelity expects.
    """

    def perturb(inputs: Tensor) -> Tuple[Tensor, Tensor]:
        shape = (inputs.shape[0], 1) + tuple(inputs.shape[2:])
        noise = torch.randn(shape, device=inputs.device, dtype=inputs.dtype) * std
        noise = noise.expand_as(inputs)
        return noise, inputs - noise

    return perturb


def square_removal(side: int, baseline: float = 0.0) -> Callable[[Tensor], Tuple[Tensor, Tensor]]:
    r"""
    A ``perturb_func`` for ``captum.metrics.infidelity``: the *square removal*
    perturbation of Yeh et al. [NeurIPS 2019, https://arxiv.org/abs/1901.09392,
    sec. 3]. Each copy of an image gets one square of ``side`` pixels, at a
    uniformly random position (torch's global generator), set to
    ``baseline``; the returned perturbation is the square's indicator, so that
    ``sum(attribution * I)`` is the attribution's total in the square, which
    should predict ``f(x) - f(x with the square removed)``. Use it with
    attributions that are contributions (CAMs, Integrated Gradients), not
    gradients.

    Returns:
        A function of the inputs (N, C, H, W) returning ``(I, perturbed inputs)``.
    """

    def perturb(inputs: Tensor) -> Tuple[Tensor, Tensor]:
        n, _, height, width = inputs.shape
        if not 1 <= side <= min(height, width):
            raise ValueError(f"side {side} does not fit images of {height}x{width}.")
        top = torch.randint(0, height - side + 1, (n, 1, 1, 1), device=inputs.device)
        left = torch.randint(0, width - side + 1, (n, 1, 1, 1), device=inputs.device)
        ys = torch.arange(height, device=inputs.device).reshape(1, 1, -1, 1)
        xs = torch.arange(width, device=inputs.device).reshape(1, 1, 1, -1)
        square = (ys >= top) & (ys < top + side) & (xs >= left) & (xs < left + side)
        indicator = square.expand_as(inputs).to(inputs.dtype)
        return indicator, torch.where(square, torch.as_tensor(baseline, dtype=inputs.dtype), inputs)

    return perturb
