r"""XGrad-CAM's axioms (Fu et al., "Axiom-based Grad-CAM", BMVC 2020):
Conservation and Sensitivity, measured per image."""
from typing import Callable, NamedTuple, Optional, Tuple

from captum._utils.typing import TargetType
from captum.attr import LayerAttribution
from torch import Tensor
from torch.nn import Module

from captum_xcam._core.ablation_cam import ablated_channel_scores
from captum_xcam._utils.formatting import as_forward_args
from captum_xcam._utils.layer_tail import layer_tail


class AxiomErrors(NamedTuple):
    r"""Per-image errors (N,) of :func:`xgrad_cam_axioms`; 0 is perfect."""

    conservation: Tensor
    sensitivity: Tensor


def channel_ablation_scores(
    forward_func: Callable[..., Tensor],
    layer: Module,
    inputs: Tensor,
    target: TargetType = None,
    additional_forward_args: Optional[object] = None,
    attribute_to_layer_input: bool = False,
    perturbations_per_eval: int = 64,
    show_progress: bool = False,
) -> Tuple[Tensor, Tensor]:
    r"""
    The target score ``S`` (N,) and the scores ``S\k`` (N, K) with channel
    ``k`` of the layer's output (or input) set to zero, everything else
    unchanged, without softmax. Costs ``N K / perturbations_per_eval`` replays
    of the model after the layer (of the whole model where it cannot be split
    at the layer, as for Ablation-CAM); the result serves every method's
    axiom errors.
    """
    args = as_forward_args(additional_forward_args)
    tail = layer_tail(forward_func, layer, (inputs,), args, target, attribute_to_layer_input)
    ablated = ablated_channel_scores(
        tail, perturbations_per_eval, show_progress, desc="Channel ablations"
    )
    return tail.target_scores, ablated


def axiom_errors(per_channel_maps: Tensor, scores: Tensor, ablated_scores: Tensor) -> AxiomErrors:
    r"""
    XGrad-CAM's Conservation and Sensitivity errors [Fu et al., BMVC 2020,
    https://arxiv.org/abs/2008.02312, Eqs. 5-6 and the objective of Eq. 7],
    per image, relative to the score:

    .. math::
        \text{Conservation} = \frac{|S - \sum_{xy} \sum_k w_k A_k(x,y)|}{|S|},
        \qquad
        \text{Sensitivity} = \frac{1}{K} \sum_k
            \frac{|(S - S_{\setminus k}) - w_k \sum_{xy} A_k(x,y)|}{|S|}

    Args:
        per_channel_maps (Tensor): ``w_k A_k``, shape (N, K, *spatial): a CAM's
                    output with ``attr_dim_summation=False`` and
                    ``relu_attributions=False`` (the map before ReLU).
        scores (Tensor): ``S`` (N,), the target's score (before softmax).
        ablated_scores (Tensor): ``S\k`` (N, K); see :func:`channel_ablation_scores`.

    Returns:
        :class:`AxiomErrors` of per-image tensors; where ``S = 0`` they are inf
        (or nan when the numerator is 0 too).
    """
    if per_channel_maps.dim() < 3 or per_channel_maps.shape[:2] != ablated_scores.shape:
        raise ValueError(
            f"per_channel_maps {tuple(per_channel_maps.shape)} must be (N, K, *spatial) "
            f"for ablated_scores {tuple(ablated_scores.shape)}."
        )
    totals = per_channel_maps.flatten(2).sum(2).to(ablated_scores.dtype)
    s = scores.reshape(-1, 1).to(ablated_scores.dtype)
    conservation = (s[:, 0] - totals.sum(1)).abs() / s[:, 0].abs()
    sensitivity = ((s - ablated_scores) - totals).abs().mean(1) / s[:, 0].abs()
    return AxiomErrors(conservation, sensitivity)


def xgrad_cam_axioms(
    cam: LayerAttribution,
    inputs: Tensor,
    target: TargetType = None,
    additional_forward_args: Optional[object] = None,
    attribute_to_layer_input: bool = False,
    ablated: Optional[Tuple[Tensor, Tensor]] = None,
    perturbations_per_eval: int = 64,
    **attribute_kwargs: object,
) -> AxiomErrors:
    r"""
    :func:`axiom_errors` of a CAM object (any of this library's, or Captum's
    ``LayerGradCam``), with its map computed here before ReLU, per channel::

        >>> errors = xgrad_cam_axioms(LayerXGradCam(model, model.layer4), images, labels)
        >>> errors.conservation.mean(), errors.sensitivity.mean()

    Args:
        cam (LayerAttribution): The CAM; its ``forward_func`` and ``layer``
                    give ``S`` and ``S\k``.
        inputs (Tensor): Images (N, C, H, W).
        target, additional_forward_args, attribute_to_layer_input: as for the CAM.
        ablated (tuple[Tensor, Tensor], optional): ``(S, S\k)`` from
                    :func:`channel_ablation_scores`, to share between methods.
                    Default: None (computed here)
        perturbations_per_eval (int, optional): For the channel ablations.
        **attribute_kwargs: Further keywords of the CAM's ``attribute``.

    Returns:
        :class:`AxiomErrors` of per-image tensors.
    """
    if ablated is None:
        ablated = channel_ablation_scores(
            cam.forward_func, cam.layer, inputs, target, additional_forward_args,
            attribute_to_layer_input, perturbations_per_eval,
        )
    per_channel = cam.attribute(
        inputs,
        target=target,
        additional_forward_args=additional_forward_args,
        attribute_to_layer_input=attribute_to_layer_input,
        relu_attributions=False,
        attr_dim_summation=False,
        **attribute_kwargs,
    )
    return axiom_errors(per_channel, *ablated)
