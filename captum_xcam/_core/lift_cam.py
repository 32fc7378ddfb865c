"""LIFT-CAM: Jung & Oh, "Towards Better Explanations of Class Activation
Mapping", ICCV 2021."""
import warnings
from typing import Callable, List, Optional, Tuple, Union

import torch
from captum._utils.typing import TargetType
from captum.attr import DeepLift, GradientAttribution
from torch import Tensor
from torch.nn import Module

from captum_xcam._core.cam_attribution import CamAttribution, spatial_sum
from captum_xcam._core.registry import GRADIENT, register_method
from captum_xcam._utils.deeplift_rules import deeplift_tail
from captum_xcam._utils.layer_tail import LayerTail, TracedTail
from captum_xcam._utils.user_warnings import warn
from captum_xcam.reshape_transforms import ReshapeTransform


class LiftCompletenessWarning(UserWarning):
    r"""LIFT-CAM's channel weights do not add up to ``f(A) - f(0)``: the part of
    the model after the layer has an operation without an exact DeepLIFT
    rule. The message gives the measured gap."""


@register_method(
    "liftcam",
    name="LIFT-CAM",
    paper="Jung & Oh, ICCV 2021, https://arxiv.org/abs/2102.05228",
    family=GRADIENT,
    formula="w_k = sum_ij DeepLIFT contribution of A_k,ij, zero layer reference",
)
class LayerLiftCam(CamAttribution, GradientAttribution):
    r"""
    LIFT-CAM [Jung & Oh, ICCV 2021, https://arxiv.org/abs/2102.05228]. The
    ideal channel weights are the SHAP values of the activation maps, each
    channel being present or set to zero; LIFT-CAM approximates them with
    DeepLIFT (Rescale rule) contributions of the layer's activations,
    computed with Captum's :class:`~captum.attr.DeepLift`:

    .. math::
        w_k = \sum_{ij} C(A_{k,ij}), \qquad
        \sum_k w_k = f(A) - f(0)

    The reference is an all-zero *layer output* (everything before the layer
    kept as it is at the input), not the layer output at some input baseline,
    so the weights are complete: they add up to the target output minus the
    output with the whole layer zeroed. When the layer feeds global average
    pooling and one linear layer, they are the exact Shapley values of the
    channels.

    Captum's DeepLift alone applies the Rescale rule only to the nonlinear
    modules it knows, needs each of them called once, and treats every other
    operation as linear. Where ``torch.fx`` can split the model at the layer
    (``forward_func`` is the model, its ``forward``, or a Python function that
    calls it), DeepLift runs on a rewritten copy of the part after the layer
    (never the user's model), in which every operation that depends on the
    layer's tensor has an exact rule: a copy of a shared nonlinearity per
    call, Rescale for functional and elementwise activations (SiLU, GELU,
    Hardswish, ReLU6, Mish, ...), the Shapley split for products of two
    layer-dependent tensors (gates, squeeze-excitation), and an exact rule for
    LayerNorm (the table in :mod:`captum_xcam._utils.deeplift_rules`). The
    weights are then complete at any layer: ResNet ``layer1``-``layer3``,
    ConvNeXt stages, EfficientNet blocks. The part before the layer runs
    once, and DeepLift (a forward pass of twice the batch and a backward pass)
    runs on the part after it alone.

    Completeness is measured on every call (one more pass of the part after
    the layer): where an operation has no exact rule (softmax attention, an
    unusual function, or a model that must be re-run whole, whose functions
    cannot be rewritten), a :class:`LiftCompletenessWarning` gives the gap and
    the operations left to the gradient. A model re-run whole with a
    nonlinear module called more than once after the layer is refused with an
    error that says why.
    """

    def __init__(
        self,
        forward_func: Callable,
        layer: Module,
        device_ids: Union[None, List[int]] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
    ) -> None:
        CamAttribution.__init__(self, forward_func, layer, device_ids, reshape_transform)
        GradientAttribution.__init__(self, forward_func)

    def _activations_and_weights(
        self,
        inputs: Tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Optional[Tuple[object, ...]],
        attribute_to_layer_input: bool,
        **method_kwargs: object,
    ) -> Tuple[Tensor, Tensor]:
        tail = self._tail(inputs, target, additional_forward_args, attribute_to_layer_input)
        activations = tail.activations
        unruled: Optional[List[str]] = None
        if isinstance(tail, TracedTail):
            rewritten, unruled = deeplift_tail(tail.split.tail)
            module = tail.module(rewritten)
        else:
            module = tail.module()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Setting forward, backward hooks")
            try:
                contributions = DeepLift(module).attribute(
                    activations.clone().requires_grad_(),
                    baselines=torch.zeros_like(activations),
                    target=target,
                )
            except RuntimeError as error:
                if "being used more than once" not in str(error):
                    raise
                raise ValueError(
                    "LIFT-CAM: a nonlinear module after the layer is called more than once "
                    "per forward pass, which Captum's DeepLift cannot handle when the whole "
                    f"model is re-run; and the model cannot be split at the layer "
                    f"({getattr(tail, 'reason', '')}), which would give each call its own "
                    "copy. Make the model traceable by torch.fx, or explain a layer after "
                    "which each nonlinearity is its own module."
                ) from error
        weights = spatial_sum(contributions.detach())
        check_completeness(weights, tail, unruled)
        return activations, weights


def check_completeness(weights: Tensor, tail: LayerTail, unruled: Optional[List[str]]) -> None:
    r"""Warns with the measured gap when the weights (N, K) do not add up to
    ``f(A) - f(0)`` within the precision of their dtype."""
    n = len(weights)
    zeroed = tail.scores(torch.zeros_like(tail.activations), torch.arange(n, device=weights.device))
    scores = tail.target_scores.to(weights.dtype)
    zeroed = zeroed.to(weights.dtype)
    scale = torch.maximum(scores.abs(), zeroed.abs()).clamp_min(torch.finfo(weights.dtype).tiny)
    gap = float(((weights.sum(1) - (scores - zeroed)).abs() / scale).max())
    tolerance = 1e-6 if weights.dtype == torch.float64 else 1e-3
    if gap <= tolerance:
        return
    if unruled is None:
        culprits = "the whole model is re-run, so its functional operations cannot be given rules"
    else:
        culprits = ", ".join(sorted(set(unruled))) or "none recognised"
    warn(
        f"LIFT-CAM's channel weights add up to f(A) - f(0) only to within {gap:.1e} "
        f"(relative, worst example; {tolerance:.0e} expected for {weights.dtype}): the model "
        "after the layer has operations without an exact DeepLIFT rule (operations left to "
        f"the gradient: {culprits}). The weights approximate the channels' SHAP values less "
        "well; compare with captum_xcam.metrics.channel_shapley_values.",
        LiftCompletenessWarning,
    )
