"""Ablation-CAM: Desai & Ramaswamy, WACV 2020."""
from typing import Optional, Tuple, Union

import torch
from captum._utils.typing import TargetType
from captum.log import log_usage
from torch import Tensor

from captum_xcam._core.cam_attribution import PerturbationCamAttribution
from captum_xcam._core.channel_selection import TopChannels
from captum_xcam._core.registry import PERTURBATION, register_method
from captum_xcam._utils.chunks import evaluate_in_chunks
from captum_xcam._utils.layer_tail import LayerTail


@register_method(
    "ablationcam",
    name="Ablation-CAM",
    paper="Desai & Ramaswamy, WACV 2020, https://openaccess.thecvf.com/content_WACV_2020/html/Desai_Ablation-CAM_Visual_Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.html",
    family=PERTURBATION,
    formula="w_k = (y - y_k) / y, y_k with channel k zeroed",
)
class LayerAblationCam(PerturbationCamAttribution):
    r"""
    Ablation-CAM [Desai & Ramaswamy, WACV 2020,
    https://openaccess.thecvf.com/content_WACV_2020/papers/Desai_Ablation-CAM_Visual_Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.pdf].
    A gradient-free CAM: each channel is weighted by the relative drop of the
    target output when that channel of the layer's output is set to zero:

    .. math::
        w_k = \frac{y - y_k}{y}

    with ``y`` the target output and ``y_k`` the target output with channel
    ``k`` of the layer output zeroed, everything else unchanged.

    The division by ``y`` follows the paper literally. When ``y < 0`` it flips
    the sign of every weight, so that the ReLU'd map keeps the regions whose
    removal *raises* the score; when ``y == 0`` the ratio is undefined and all
    weights of that example are 0 (an all-zero map). Explain a score that is
    positive for the class of interest (a logit of a predicted class, or a
    probability through a softmax in ``forward_func``) to avoid both cases.

    Ablations are evaluated ``perturbations_per_eval`` channels of every
    example per replay (``N * perturbations_per_eval`` rows for N examples, as
    Captum counts). Where ``torch.fx`` can split the model at the layer
    (``forward_func`` is the model, its ``forward``, or a Python function that
    calls it, and traceable; batch sizes and shapes read before the layer are
    fine), the part before the layer runs once and only the part after it is
    replayed on the ablated tensors. Otherwise the whole model is re-run for
    each batch, with the same results, and a
    :class:`~captum_xcam.WholeModelReplayWarning` says why, once per layer.
    """

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Optional[object] = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        attr_dim_summation: bool = True,
        perturbations_per_eval: int = 16,
        show_progress: bool = False,
        channel_selection: Optional[TopChannels] = None,
    ) -> Tensor:
        r"""
        Arguments as in :meth:`CamAttribution.attribute`, and:

            perturbations_per_eval (int, optional): How many ablated copies
                        of each example are evaluated in one replay (as in
                        Captum: N examples make N times as many rows).
                        Default: 16
            show_progress (bool, optional): Show a progress bar over the
                        ablated channels. Default: False
            channel_selection (TopChannels, optional): Ablate only the top
                        channels of each example by a cheap criterion
                        (:class:`~captum_xcam.TopChannels`, as
                        pytorch-grad-cam's ``ratio_channels_to_ablate``); the
                        others get weight 0. Default: None (every channel)

        Returns:
            *Tensor* of **attributions**, shaped as by :meth:`CamAttribution.attribute`.
        """
        return self._attribute(
            inputs,
            target,
            additional_forward_args,
            attribute_to_layer_input,
            relu_attributions,
            attr_dim_summation,
            perturbations_per_eval=perturbations_per_eval,
            show_progress=show_progress,
            channel_selection=channel_selection,
        )

    def _activations_and_weights(
        self,
        inputs: Tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Optional[Tuple[object, ...]],
        attribute_to_layer_input: bool,
        perturbations_per_eval: int = 16,
        show_progress: bool = False,
        channel_selection: Optional[TopChannels] = None,
    ) -> Tuple[Tensor, Tensor]:
        tail = self._tail(inputs, target, additional_forward_args, attribute_to_layer_input)
        unselected = self._unselected_channels(
            channel_selection, tail.activations, inputs, target, additional_forward_args,
            attribute_to_layer_input)
        ablated = ablated_channel_scores(tail, perturbations_per_eval, show_progress,
                                         skip=unselected)
        return tail.activations, relative_drop(tail.target_scores, ablated)


def ablated_channel_scores(
    tail: LayerTail,
    perturbations_per_eval: int,
    show_progress: bool = False,
    desc: str = "Ablation-CAM channels",
    skip: Optional[Tensor] = None,
) -> Tensor:
    r"""The target score ``y_k`` (N, K) of every example with channel ``k`` of
    the layer tensor set to zero, ``perturbations_per_eval`` ablations of each
    example per replay of the model after the layer. Where ``skip`` (N, K) is
    True the channel is not ablated and ``y_k = y``."""
    activations = tail.activations

    def ablated_scores(rows: Tensor, channels: Tensor) -> Tensor:
        ablated = activations[rows]
        ablated[torch.arange(len(rows), device=ablated.device), channels] = 0
        return tail.scores(ablated, rows)

    scores = evaluate_in_chunks(
        activations.shape[0],
        activations.shape[1],
        ablated_scores,
        perturbations_per_eval,
        activations.device,
        show_progress,
        desc=desc,
        skip=skip,
    )
    if skip is None:
        return scores
    unablated = tail.target_scores.reshape(-1, 1).to(scores)
    return torch.where(skip.to(scores.device), unablated, scores)


def relative_drop(scores: Tensor, ablated_scores: Tensor) -> Tensor:
    r"""``(y - y_k) / y`` per example and channel; 0 where ``y == 0``."""
    y = scores.reshape(-1, 1).to(ablated_scores.dtype)
    safe_y = torch.where(y != 0, y, torch.ones_like(y))
    return ((y - ablated_scores) / safe_y).masked_fill(y == 0, 0)
