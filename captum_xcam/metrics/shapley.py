r"""SHAP fidelity of channel weights: the Shapley values of a layer's channels
(each present, or set to zero) and how well a CAM's channel weights rank
like them, the central claim of LIFT-CAM (Jung & Oh, ICCV 2021)."""
import math
from typing import Callable, Optional

import torch
from captum._utils.typing import TargetType
from captum.attr import LayerActivation, LayerAttribution, ShapleyValueSampling
from torch import Tensor
from torch.nn import Module

from captum_xcam._utils.chunks import evaluate_in_chunks
from captum_xcam._utils.formatting import as_forward_args
from captum_xcam._utils.layer_tail import layer_tail
from captum_xcam._utils.targets import TargetSelector, rows_of
from captum_xcam.metrics._ranks import spearman


def channel_shapley_values(
    forward_func: Callable[..., Tensor],
    layer: Module,
    inputs: Tensor,
    target: TargetType = None,
    additional_forward_args: Optional[object] = None,
    attribute_to_layer_input: bool = False,
    method: str = "auto",
    n_samples: int = 25,
    perturbations_per_eval: int = 16,
    layer_forward_func: Optional[Callable[..., Tensor]] = None,
    max_exact_channels: int = 10,
    show_progress: bool = False,
) -> Tensor:
    r"""
    The Shapley values [Shapley, 1953; Lundberg & Lee, NeurIPS 2017] of the
    channels of a layer, the players being the K channels of the layer's
    output and the value of a coalition ``S`` the target output with the
    channels outside ``S`` set to zero:

    .. math::
        \phi_k = \sum_{S \subseteq \{1..K\} \setminus \{k\}}
            \frac{|S|!\,(K - |S| - 1)!}{K!}\,\big(v(S \cup \{k\}) - v(S)\big)

    LIFT-CAM [Jung & Oh, ICCV 2021, https://arxiv.org/abs/2102.05228] argues
    that these are the ideal CAM channel weights. ``method="exact"``
    enumerates all ``2^K`` coalitions; ``"sampling"`` estimates the values with
    Captum's :class:`~captum.attr.ShapleyValueSampling` from ``n_samples``
    random permutations (``n_samples (K + 1)`` evaluations per image, the
    permutations drawn from torch's global generator: seed it for
    reproducible estimates); ``"auto"`` is exact up to ``max_exact_channels``.

    Args:
        forward_func (Callable): The model.
        layer (torch.nn.Module): The layer whose channels are the players.
        inputs (Tensor): The images (N, ...).
        target (int, list or Tensor, optional): Output index per image.
        additional_forward_args (Any, optional): Further arguments of forward_func.
        attribute_to_layer_input (bool, optional): Players are the channels of
                    the layer's input. Default: False
        method (str, optional): "exact", "sampling" or "auto". Default: "auto"
        n_samples (int, optional): Permutations for sampling. Default: 25
        perturbations_per_eval (int, optional): Coalitions evaluated per
                    forward pass, for every image at once. Default: 16
        layer_forward_func (Callable, optional): The part of the model after
                    the layer, mapping the layer tensor (and the additional
                    forward args) to the output. Default: None (the model
                    after the layer, split off with ``torch.fx`` where it can
                    be, else the whole model run with the layer tensor
                    substituted)
        max_exact_channels (int, optional): Largest K for which "auto" is
                    exact. Default: 10
        show_progress (bool, optional): Show a progress bar. Default: False

    Returns:
        Tensor (N, K) of Shapley values, on the activations' device.
    """
    if method not in ("auto", "exact", "sampling"):
        raise ValueError(f'method must be "auto", "exact" or "sampling", got {method!r}.')
    args = as_forward_args(additional_forward_args)
    value: Callable[..., Tensor]
    if layer_forward_func is None:
        tail = layer_tail(forward_func, layer, (inputs,), args, target, attribute_to_layer_input)
        activations, value, value_args = tail.activations, tail.module(), None
    else:
        activations = LayerActivation(forward_func, layer).attribute(
            inputs, additional_forward_args=args, attribute_to_layer_input=attribute_to_layer_input
        ).detach()
        value, value_args = layer_forward_func, args
    if isinstance(activations, tuple) or activations.dim() < 3:
        raise ValueError("The layer must hold a single (N, K, *spatial) tensor.")
    channels = activations.shape[1]
    if method == "exact" or (method == "auto" and channels <= max_exact_channels):
        return _exact_shapley(
            value, activations, target, value_args, perturbations_per_eval, show_progress
        )
    feature_mask = torch.arange(channels, device=activations.device).reshape(
        (1, channels) + (1,) * (activations.dim() - 2)
    )
    with torch.no_grad():
        values = ShapleyValueSampling(value).attribute(
            activations,
            baselines=0.0,
            target=target,
            additional_forward_args=value_args,
            feature_mask=feature_mask,
            n_samples=n_samples,
            perturbations_per_eval=perturbations_per_eval,
            show_progress=show_progress,
        )
    return values.flatten(2)[:, :, 0]


def _exact_shapley(
    value: Callable[..., Tensor],
    activations: Tensor,
    target: TargetType,
    args: Optional[tuple],
    perturbations_per_eval: int,
    show_progress: bool,
) -> Tensor:
    r"""Enumerates all coalitions: ``v`` (N, 2^K), then the Shapley formula."""
    n, channels = activations.shape[:2]
    device = activations.device
    coalitions = 2**channels
    bits = 2 ** torch.arange(channels, device=device)
    members = (torch.arange(coalitions, device=device).reshape(-1, 1) & bits) > 0  # (2^K, K)
    spatial = (1,) * (activations.dim() - 2)
    select: Optional[TargetSelector] = None

    def coalition_values(rows: Tensor, subsets: Tensor) -> Tensor:
        nonlocal select
        layer_value = activations[rows] * members[subsets].reshape(-1, channels, *spatial)
        with torch.no_grad():
            output = value(layer_value, *(rows_of(args, rows) or ()))
        select = select or TargetSelector.for_examples(target, output, n)
        return select(output, rows).double()

    # Every chunk lists the examples in order, as a LayerTail's module expects.
    values = evaluate_in_chunks(
        n, coalitions, coalition_values, perturbations_per_eval, device, show_progress,
        desc="Exact Shapley coalitions",
    )  # (N, 2^K)
    sizes = members.sum(1)
    weight = torch.tensor(
        [math.factorial(s) * math.factorial(channels - s - 1) / math.factorial(channels)
         for s in range(channels)],
        dtype=torch.float64, device=device,
    )
    phi = torch.zeros(n, channels, dtype=torch.float64, device=device)
    for k in range(channels):
        without = ~members[:, k]
        subsets = torch.arange(coalitions, device=device)[without]
        gains = values[:, subsets + 2**k] - values[:, subsets]
        phi[:, k] = (gains * weight[sizes[subsets]]).sum(1)
    return phi.to(activations.dtype)


def channel_weights(
    cam: LayerAttribution,
    inputs: Tensor,
    target: TargetType = None,
    additional_forward_args: Optional[object] = None,
    attribute_to_layer_input: bool = False,
    **attribute_kwargs: object,
) -> Tensor:
    r"""
    The channel weights ``w`` (N, K) of any CAM object whose ``attribute``
    takes ``attr_dim_summation`` (this library's CAMs and Captum's
    ``LayerGradCam``), recovered from its per-channel map ``M_k = w_k A_k``
    and the activations ``A`` by least squares, exact where ``A_k != 0``:

    .. math::
        w_k = \frac{\langle M_k, A_k \rangle}{\langle A_k, A_k \rangle}

    and 0 for an all-zero channel (whose weight does not enter the map).

    Returns:
        Tensor (N, K).
    """
    per_channel = cam.attribute(
        inputs,
        target=target,
        additional_forward_args=additional_forward_args,
        attribute_to_layer_input=attribute_to_layer_input,
        relu_attributions=False,
        attr_dim_summation=False,
        **attribute_kwargs,
    )
    activations = LayerActivation(cam.forward_func, cam.layer).attribute(
        inputs,
        additional_forward_args=as_forward_args(additional_forward_args),
        attribute_to_layer_input=attribute_to_layer_input,
    )
    return weights_from_maps(per_channel.detach(), activations.detach())


def weights_from_maps(per_channel_maps: Tensor, activations: Tensor) -> Tensor:
    r"""``<M_k, A_k> / <A_k, A_k>`` per image and channel, 0 where ``A_k = 0``;
    see :func:`channel_weights`."""
    if per_channel_maps.shape != activations.shape:
        raise ValueError(
            f"Per-channel maps {tuple(per_channel_maps.shape)} and activations "
            f"{tuple(activations.shape)} must have the same shape."
        )
    a = activations.to(per_channel_maps.dtype)
    numerator = (per_channel_maps * a).flatten(2).sum(2)
    denominator = a.pow(2).flatten(2).sum(2)
    return torch.where(
        denominator > 0, numerator / torch.where(denominator > 0, denominator, 1), 0
    )


def rank_correlation(weights: Tensor, reference: Tensor) -> Tensor:
    r"""
    Spearman's rank correlation of each row of ``weights`` (N, K) with the
    same row of ``reference`` (N, K): the Pearson correlation of their
    average ranks [Spearman, 1904]. 1 means the same order. A row whose
    values are all equal carries no order; its correlation is 0.

    Returns:
        Tensor (N,) in [-1, 1], float64.
    """
    if weights.shape != reference.shape or weights.dim() != 2:
        raise ValueError(
            f"weights {tuple(weights.shape)} and reference {tuple(reference.shape)} "
            "must both be (N, K)."
        )
    return spearman(weights, reference)
