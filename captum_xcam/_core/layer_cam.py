"""The CAM family's shared plumbing: every CAM is ``sum_k w_k A_k``."""
from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from captum._utils.common import (
    _format_additional_forward_args,
    _format_tensor_into_tuples,
)
from captum._utils.gradient import compute_layer_gradients_and_eval
from captum._utils.typing import TargetType
from captum.attr._utils.attribution import GradientAttribution, LayerAttribution
from captum.log import log_usage
from torch import Tensor
from torch.nn import DataParallel, Module

from captum_xcam._core.layer_tail import LayerTail, layer_tail, single_record
from captum_xcam._utils.layer_hooks import differentiable_from
from captum_xcam._utils.model_state import (
    model_of,
    modules_of,
    preserved_model_state,
    without_data_parallel,
)
from captum_xcam._utils.targets import scoring, select_target_scores
from captum_xcam._utils.validation import check_inputs, check_layer, check_layer_tensor


class LayerCam(LayerAttribution):
    r"""
    Base of the Class Activation Mapping family. For a layer with activations
    ``A`` of shape ``(N, K, *spatial)`` every method returns

    .. math::
        L = \sum_k w_k A_k \quad (\text{then } \mathrm{ReLU}(L)
        \text{ when } relu\_attributions=True)

    and the methods differ only in how they find the channel weights
    ``w_k`` (shape ``(N, K)``). A subclass supplies them in
    :meth:`_activations_and_weights`; this class does Captum's plumbing:
    inputs, targets, hooks, the weighted sum, the ReLU, and leaving the model
    exactly as it was found (train/eval mode, buffers, ``.grad`` fields, hooks),
    also when an error is raised midway.
    """

    #: Whether the method gathers a layer's tensors from the devices of a
    #: forward function that applies ``DataParallel`` (``device_ids``); the
    #: others take a ``DataParallel`` model itself as ``forward_func``.
    _gathers_devices = False

    def __init__(
        self,
        forward_func: Callable,
        layer: Module,
        device_ids: Union[None, List[int]] = None,
    ) -> None:
        r"""
        Args:

            forward_func (Callable): The forward function of the model or any
                        modification of it.
            layer (torch.nn.Module): Layer for which attributions are computed.
                        Its output (or input, with
                        ``attribute_to_layer_input=True``) must be a single
                        tensor of shape ``(N, K, *spatial)``, usually the
                        last convolutional block of a CNN.
            device_ids (list[int], optional): Device ID list, necessary only
                        if forward_func applies a DataParallel model.
        """
        check_layer(forward_func, layer)
        LayerAttribution.__init__(self, forward_func, layer, device_ids)

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Optional[object] = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        attr_dim_summation: bool = True,
    ) -> Tensor:
        r"""
        Args:

            inputs (Tensor or tuple[Tensor, ...]): Input for which attributions
                        are computed, as for Captum's ``LayerGradCam``: one
                        tensor, or a tuple of tensors if forward_func takes
                        several, dimension 0 being the examples.
            target (int, tuple, Tensor, or list, optional): Output indices for
                        which attributions are computed, in any form that
                        Captum accepts (an int or a tuple for all examples, a
                        list or a 1D tensor with one per example). May be
                        None only if the model returns one value per example.
                        Default: None
            additional_forward_args (Any, optional): Further arguments of
                        forward_func, passed after the inputs; no attributions
                        are computed for them. Default: None
            attribute_to_layer_input (bool, optional): Attribute to the
                        layer's input instead of its output. Default: False
            relu_attributions (bool, optional): Apply a ReLU to the map, as the
                        papers do. Default: False (Captum's default)
            attr_dim_summation (bool, optional): Sum the weighted activations
                        over the channel dimension. Default: True

        Returns:
            *Tensor* of **attributions** of shape ``(N, 1, *spatial)`` (or
            ``(N, K, *spatial)`` without summation) at the layer's resolution,
            on the device of the layer's activations. Upsample with
            ``LayerAttribution.interpolate``.
        """
        return self._attribute(
            inputs,
            target,
            additional_forward_args,
            attribute_to_layer_input,
            relu_attributions,
            attr_dim_summation,
        )

    def _attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType,
        additional_forward_args: Optional[object],
        attribute_to_layer_input: bool,
        relu_attributions: bool,
        attr_dim_summation: bool,
        **method_kwargs: object,
    ) -> Tensor:
        inputs = _format_tensor_into_tuples(inputs)
        check_inputs(inputs)
        self._check_device_ids()
        args = _format_additional_forward_args(additional_forward_args)
        with preserved_model_state(modules_of(self.forward_func, self.layer)):
            activations, weights = self._activations_and_weights(
                inputs, target, args, attribute_to_layer_input, **method_kwargs
            )
        return weighted_sum(weights, activations, attr_dim_summation, relu_attributions)

    def _activations_and_weights(
        self,
        inputs: Tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Optional[Tuple[object, ...]],
        attribute_to_layer_input: bool,
        **method_kwargs: object,
    ) -> Tuple[Tensor, Tensor]:
        r"""Returns the layer activations ``A`` (N, K, *spatial) and the channel
        weights ``w`` (N, K) of the method."""
        raise NotImplementedError

    def _check_device_ids(self) -> None:
        if not self.device_ids or self._gathers_devices:
            return
        if without_data_parallel(self.forward_func) is not self.forward_func:
            return  # the DataParallel model itself: its module is hooked
        raise ValueError(
            f"{type(self).__name__} does not gather a layer's tensors across devices "
            "(device_ids): its hooks must see the whole batch at once. Pass the "
            "DataParallel model itself as forward_func (its module then holds the hooks), "
            "or a forward function that does not apply DataParallel, without device_ids."
        )

    @property
    def _model(self) -> Optional[Module]:
        return model_of(self.forward_func)

    def _tail(
        self,
        inputs: Tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Optional[Tuple[object, ...]],
        attribute_to_layer_input: bool,
    ) -> LayerTail:
        r"""The model after the layer, for the explained examples."""
        return layer_tail(
            self.forward_func,
            self.layer,
            inputs,
            additional_forward_args,
            target,
            attribute_to_layer_input,
        )


class GradientLayerCam(LayerCam, GradientAttribution):
    r"""A CAM whose channel weights are a function of the activations ``A``
    and of the gradient ``G`` of the target score with respect to them, both
    from one forward pass and a backward pass that stops at the layer."""

    _gathers_devices = True

    def __init__(
        self,
        forward_func: Callable,
        layer: Module,
        device_ids: Union[None, List[int]] = None,
    ) -> None:
        LayerCam.__init__(self, forward_func, layer, device_ids)
        GradientAttribution.__init__(self, forward_func)

    def _activations_and_weights(
        self,
        inputs: Tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Optional[Tuple[object, ...]],
        attribute_to_layer_input: bool,
        **method_kwargs: object,
    ) -> Tuple[Tensor, Tensor]:
        activations, gradients = self._activations_and_gradients(
            inputs, target, additional_forward_args, attribute_to_layer_input
        )
        return activations, self._weights(activations, gradients)

    def _activations_and_gradients(
        self,
        inputs: Tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Optional[Tuple[object, ...]],
        attribute_to_layer_input: bool,
    ) -> Tuple[Tensor, Tensor]:
        r"""``A`` and ``G = dy/dA`` from one forward pass, in which only the
        part after the layer builds a graph, and a backward pass that stops at
        the layer: no parameter gradients are computed."""
        if self.device_ids or isinstance(self._model, DataParallel):
            return self._activations_and_gradients_per_device(
                inputs, target, additional_forward_args, attribute_to_layer_input
            )
        with torch.no_grad(), differentiable_from(self.layer, attribute_to_layer_input) as records:
            output = self.forward_func(*inputs, *(additional_forward_args or ()))
            scores = select_target_scores(output, target)  # on the graph, if any
        activations = single_record(records, self.layer, attribute_to_layer_input)
        if not scores.requires_grad:
            raise ValueError(
                f"The target output does not depend on the {type(self.layer).__name__} "
                "layer's tensor: explain a layer that the output is computed from."
            )
        (gradients,) = torch.autograd.grad(scores, activations, torch.ones_like(scores))
        return activations.detach(), gradients

    def _activations_and_gradients_per_device(
        self,
        inputs: Tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Optional[Tuple[object, ...]],
        attribute_to_layer_input: bool,
    ) -> Tuple[Tensor, Tensor]:
        r"""The same through Captum, which gathers a DataParallel model's
        per-device layer tensors."""
        gradients, evals = compute_layer_gradients_and_eval(
            scoring(self.forward_func, target),
            self.layer,
            inputs,
            None,
            additional_forward_args,
            device_ids=self.device_ids or getattr(self._model, "device_ids", None),
            attribute_to_layer_input=attribute_to_layer_input,
        )
        where = "input" if attribute_to_layer_input else "output"
        activations = check_layer_tensor(evals, self.layer, where)
        return activations.detach(), gradients[0].detach()

    def _weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        r"""The channel weights (N, K) from ``A`` and ``G`` (N, K, *spatial)."""
        raise NotImplementedError


def spatial_sum(x: Tensor) -> Tensor:
    r"""Sum over the spatial dimensions: (N, K, *spatial) to (N, K)."""
    return x.flatten(2).sum(2)


def weighted_sum(
    weights: Tensor,
    activations: Tensor,
    attr_dim_summation: bool = True,
    relu_attributions: bool = False,
) -> Tensor:
    r"""``sum_k w_k A_k`` (kept per channel without summation), then ReLU if asked."""
    weights = weights.to(activations.dtype).reshape(
        weights.shape + (1,) * (activations.dim() - 2)
    )
    cam = weights * activations
    if attr_dim_summation:
        cam = cam.sum(1, keepdim=True)
    return F.relu(cam) if relu_attributions else cam
