"""The CAM family's shared plumbing: every CAM is ``sum_k w_k A_k``."""
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from captum._utils.gradient import compute_layer_gradients_and_eval
from captum._utils.typing import TargetType
from captum.attr import GradientAttribution, LayerAttribution, PerturbationAttribution
from captum.log import log_usage
from torch import Tensor
from torch.nn import DataParallel, Module

from captum_xcam._core.channel_selection import TopChannels, channel_criterion
from captum_xcam._utils.formatting import as_forward_args, as_tuple
from captum_xcam._utils.layer_grid import LayerGrid
from captum_xcam._utils.layer_hooks import differentiable_from
from captum_xcam._utils.layer_tail import LayerTail, layer_activations, layer_tail, single_record
from captum_xcam._utils.model_state import (
    model_of,
    modules_of,
    preserved_model_state,
    without_data_parallel,
)
from captum_xcam._utils.targets import scoring, select_target_scores
from captum_xcam._utils.user_warnings import warn
from captum_xcam._utils.validation import check_inputs, check_layer, check_layer_tensor
from captum_xcam.reshape_transforms import ReshapeTransform


class CamAttribution(LayerAttribution):
    r"""
    Base of the Class Activation Mapping family. For a layer with activations
    ``A`` of shape ``(N, K, *spatial)`` every method returns

    .. math::
        L = \sum_k w_k A_k \quad (\text{then } \mathrm{ReLU}(L)
        \text{ when } relu\_attributions=True)

    and the methods differ only in how they find the weights ``w``: one per
    channel, shape ``(N, K)`` (Grad-CAM, Score-CAM, ...), or one per channel
    and position, shape ``(N, K, *spatial)`` (HiResCAM, LayerCAM, ...). A
    subclass supplies them in :meth:`_activations_and_weights`; this class
    does Captum's plumbing: inputs, targets, hooks, the weighted sum, the ReLU,
    and leaving the model exactly as it was found (train/eval mode, buffers,
    ``.grad`` fields, hooks), also when an error is raised midway. A method
    registers itself with :func:`~captum_xcam.register_method`.
    """

    #: Whether the map depends on ``target``; a target-free method (EigenCAM)
    #: accepts one and warns that it is ignored.
    uses_target = True

    #: Whether the method gathers a layer's tensors from the devices of a
    #: forward function that applies ``DataParallel`` (``device_ids``); the
    #: others take a ``DataParallel`` model itself as ``forward_func``.
    _gathers_devices = False

    def __init__(
        self,
        forward_func: Callable,
        layer: Module,
        device_ids: Union[None, List[int]] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
    ) -> None:
        r"""
        Args:

            forward_func (Callable): The forward function of the model or any
                        modification of it.
            layer (torch.nn.Module): Layer for which attributions are computed.
                        Its output (or input, with
                        ``attribute_to_layer_input=True``) must be a single
                        tensor of shape ``(N, K, *spatial)``, usually the
                        last convolutional block of a CNN, or one that
                        ``reshape_transform`` turns into that shape.
            device_ids (list[int], optional): Device ID list, necessary only
                        if forward_func applies a DataParallel model.
            reshape_transform (Callable, optional): A function from the
                        layer's tensor to ``(N, K, *spatial)``, for layers of
                        another layout: a vision transformer's tokens
                        (:class:`~captum_xcam.TokenGrid`), Swin's
                        channels-last maps (:class:`~captum_xcam.ChannelsLast`).
                        Default: None (the built-in transform of a recognised
                        torchvision or timm ViT, DeiT or Swin, else none; a
                        transformer's token tensor without one is refused
                        with an error that says what to pass)
        """
        check_layer(forward_func, layer)
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        self.reshape_transform = reshape_transform
        self._grid = LayerGrid(layer, reshape_transform, model_of(forward_func))

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
        **method_kwargs: Any,
    ) -> Tensor:
        inputs = as_tuple(inputs)
        check_inputs(inputs)
        self._check_device_ids()
        if target is not None and not self.uses_target:
            warn(
                f"{type(self).__name__} is target-free: its map does not depend on target, "
                "which is ignored. Pass target=None, or use a class-discriminative method.",
                UserWarning,
            )
        args = as_forward_args(additional_forward_args)
        with preserved_model_state(modules_of(self.forward_func, self.layer)):
            activations, weights = self._activations_and_weights(
                inputs, target, args, attribute_to_layer_input, **method_kwargs
            )
        check_weights(weights, activations, type(self).__name__)
        if self._grid.transform is not None and not bool(weights.any()):
            warn_unreached_grid(type(self).__name__)
        return weighted_sum(weights, activations, attr_dim_summation, relu_attributions)

    def _activations_and_weights(self, *args: Any, **method_kwargs: Any) -> Tuple[Tensor, Tensor]:
        r"""The method's hook, called as ``_activations_and_weights(inputs,
        target, additional_forward_args, attribute_to_layer_input,
        **method_kwargs)`` with the inputs as a tuple, the additional forward
        arguments as a tuple or None, and the keywords the method's
        ``attribute`` passes to :meth:`_attribute`. Returns the layer
        activations ``A`` (N, K, *spatial) and the method's weights ``w``,
        (N, K) or (N, K, *spatial)."""
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
        r"""The model after the layer, for the explained examples, as a
        function of the layer's grid."""
        return layer_tail(
            self.forward_func,
            self.layer,
            inputs,
            additional_forward_args,
            target,
            attribute_to_layer_input,
            grid=self._grid,
        )

    def _activations_and_gradients(
        self,
        inputs: Tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Optional[Tuple[object, ...]],
        attribute_to_layer_input: bool,
        grad_kwargs: Dict[str, Any],
    ) -> Tuple[Tensor, Tensor]:
        r"""``A`` and ``G = dy/dA`` from one forward pass, in which only the
        part after the layer builds a graph, and a backward pass that stops at
        the layer: no parameter gradients are computed."""
        if self.device_ids or isinstance(self._model, DataParallel):
            return self._activations_and_gradients_per_device(
                inputs, target, additional_forward_args, attribute_to_layer_input, grad_kwargs
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
        (gradients,) = torch.autograd.grad(
            scores, activations, torch.ones_like(scores), **grad_kwargs
        )
        return activations.detach(), gradients

    def _activations_and_gradients_per_device(
        self,
        inputs: Tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Optional[Tuple[object, ...]],
        attribute_to_layer_input: bool,
        grad_kwargs: Dict[str, Any],
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
            **({"grad_kwargs": grad_kwargs} if grad_kwargs else {}),
        )
        where = "input" if attribute_to_layer_input else "output"
        activations = check_layer_tensor(evals, self.layer, where)
        return activations.detach(), gradients[0].detach()

    def _layer_grid(
        self,
        inputs: Tuple[Tensor, ...],
        additional_forward_args: Optional[Tuple[object, ...]],
        attribute_to_layer_input: bool,
    ) -> Tensor:
        r"""The layer's grid for the explained examples, from one forward pass
        without autograd."""
        activations, _ = layer_activations(
            without_data_parallel(self.forward_func),
            self.layer,
            inputs,
            additional_forward_args,
            attribute_to_layer_input,
        )
        return self._grid(activations)


class GradientCamAttribution(CamAttribution, GradientAttribution):
    r"""A CAM whose weights are a function of the activations ``A`` and of
    the gradient ``G`` of the target score with respect to them, both from one
    forward pass and a backward pass that stops at the layer. A method
    supplies :meth:`_weights`."""

    _gathers_devices = True

    def __init__(
        self,
        forward_func: Callable,
        layer: Module,
        device_ids: Union[None, List[int]] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
    ) -> None:
        CamAttribution.__init__(self, forward_func, layer, device_ids, reshape_transform)
        GradientAttribution.__init__(self, forward_func)

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Optional[object] = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        attr_dim_summation: bool = True,
        grad_kwargs: Optional[Dict[str, Any]] = None,
    ) -> Tensor:
        r"""
        Arguments as in :meth:`CamAttribution.attribute`, and:

            grad_kwargs (dict, optional): Further keywords of the
                        ``torch.autograd.grad`` call, as in Captum's
                        ``LayerGradCam``. Default: None

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
            grad_kwargs=grad_kwargs,
        )

    def _activations_and_weights(
        self,
        inputs: Tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Optional[Tuple[object, ...]],
        attribute_to_layer_input: bool,
        grad_kwargs: Optional[Dict[str, Any]] = None,
    ) -> Tuple[Tensor, Tensor]:
        activations, gradients = self._activations_and_gradients(
            inputs, target, additional_forward_args, attribute_to_layer_input, grad_kwargs or {}
        )
        grid = self._grid(activations)
        return grid, self._weights(grid, self._grid.gradient(gradients, activations, grid))

    def _weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        r"""The weights, (N, K) or (N, K, *spatial), from ``A`` and ``G``
        (N, K, *spatial)."""
        raise NotImplementedError


class PerturbationCamAttribution(CamAttribution, PerturbationAttribution):
    r"""A CAM whose weights come from replaying the model on perturbed copies
    of the explained examples or of the layer's tensor, in chunks of
    ``perturbations_per_eval`` (:func:`~captum_xcam._utils.chunks.evaluate_in_chunks`)."""

    def __init__(
        self,
        forward_func: Callable,
        layer: Module,
        device_ids: Union[None, List[int]] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
    ) -> None:
        CamAttribution.__init__(self, forward_func, layer, device_ids, reshape_transform)
        PerturbationAttribution.__init__(self, forward_func)

    def _unselected_channels(
        self,
        selection: Optional[TopChannels],
        activations: Tensor,
        inputs: Tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Optional[Tuple[object, ...]],
        attribute_to_layer_input: bool,
    ) -> Optional[Tensor]:
        r"""Where ``selection`` leaves a channel out, (N, K) True, from the
        layer's grid ``activations`` and, for the gradient criterion, the
        gradients of the target at the layer (one backward pass); None
        without a selection."""
        if selection is None:
            return None
        if not isinstance(selection, TopChannels):
            raise TypeError("channel_selection takes a captum_xcam.TopChannels, got a "
                            f"{type(selection).__name__}.")
        gradients = None
        if selection.by == "gradient":
            raw, raw_gradients = self._activations_and_gradients(
                inputs, target, additional_forward_args, attribute_to_layer_input, {})
            gradients = self._grid.gradient(raw_gradients, raw, activations)
        return selection.unselected(channel_criterion(selection.by, activations, gradients))


def spatial_sum(x: Tensor) -> Tensor:
    r"""Sum over the spatial dimensions: (N, K, *spatial) to (N, K)."""
    return x.flatten(2).sum(2)


def check_weights(weights: Tensor, activations: Tensor, method: str) -> None:
    r"""A ValueError unless ``weights`` is (N, K) or shaped like the
    activations (N, K, *spatial)."""
    if weights.shape not in (activations.shape[:2], activations.shape):
        raise ValueError(
            f"{method} gave weights of shape {tuple(weights.shape)} for activations of shape "
            f"{tuple(activations.shape)}: a CAM's weights are one per channel, "
            f"{tuple(activations.shape[:2])}, or one per channel and position, "
            f"{tuple(activations.shape)}."
        )


def warn_unreached_grid(method: str) -> None:
    r"""Says why a map through a reshape transform is zero everywhere."""
    warn(
        f"{method}: every weight is zero: the target score does not depend on the layer's "
        "grid. Either it depends only on what the reshape transform drops: in a ViT's last "
        "block only the class token feeds the head, so the patch tokens there get no "
        "gradient and zeroing them changes nothing; explain the last block's first "
        "LayerNorm instead (timm: blocks[-1].norm1, torchvision: encoder.layers[-1].ln_1), "
        "where attention still mixes the patch tokens into the class token. Or it depends "
        "on nothing the layer computes (a head of zeros, as torchvision initialises a ViT's).",
        UserWarning,
    )


def weighted_sum(
    weights: Tensor,
    activations: Tensor,
    attr_dim_summation: bool = True,
    relu_attributions: bool = False,
) -> Tensor:
    r"""``sum_k w_k A_k`` for weights (N, K) or (N, K, *spatial) (kept per
    channel without summation), then ReLU if asked."""
    if weights.dim() == 2:
        weights = weights.reshape(weights.shape + (1,) * (activations.dim() - 2))
    cam = weights.to(activations.dtype) * activations
    if attr_dim_summation:
        cam = cam.sum(1, keepdim=True)
    return F.relu(cam) if relu_attributions else cam
