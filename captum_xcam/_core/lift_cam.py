"""LIFT-CAM: Jung & Oh, "Towards Better Explanations of Class Activation
Mapping", ICCV 2021."""
import warnings
from typing import Callable, List, Optional, Tuple, Union

import torch
from captum._utils.typing import TargetType
from captum.attr import DeepLift
from captum.attr._utils.attribution import GradientAttribution
from torch import Tensor
from torch.nn import Module, ModuleList

from captum_xcam._core.layer_cam import LayerCam, spatial_sum
from captum_xcam._utils.layer_hooks import substituted


class LayerLiftCam(LayerCam, GradientAttribution):
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

    Captum's DeepLift applies the Rescale rule to the nonlinear modules it
    knows (ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus, max pooling,
    Softmax) and the plain gradient to everything else, including functional
    calls such as ``F.relu``. It needs every such module after the layer to be
    called once per forward pass: explaining ``layer3`` of a torchvision
    ResNet, whose blocks call one ReLU module three times, raises an error,
    while the usual ``layer4`` works.

    Costs one forward pass for the activations and one DeepLift pass (a
    forward pass of twice the batch and a backward pass).
    """

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
        activations, _ = self._layer_activations(
            inputs, target, additional_forward_args, attribute_to_layer_input
        )
        substituted_model = LayerSubstitutedModel(
            self.forward_func, self._model, self.layer, inputs, attribute_to_layer_input
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Setting forward, backward hooks")
            try:
                contributions = DeepLift(substituted_model).attribute(
                    activations.clone().requires_grad_(),
                    baselines=torch.zeros_like(activations),
                    target=target,
                    additional_forward_args=additional_forward_args,
                )
            except RuntimeError as error:
                if "being used more than once" not in str(error):
                    raise
                raise ValueError(
                    "LIFT-CAM: a nonlinear module after the layer is called more "
                    "than once per forward pass, which Captum's DeepLift cannot "
                    "handle (torchvision's ResNet blocks reuse one ReLU). Explain "
                    "a layer after which each nonlinearity is its own module, such "
                    "as a ResNet's layer4."
                ) from error
        return activations, spatial_sum(contributions.detach())


class LayerSubstitutedModel(Module):
    r"""The model as a function of the layer's output (or input): ``forward(a)``
    runs ``forward_func`` on the explained inputs with ``a`` in place of the
    layer tensor. A batch of ``a`` that is a multiple of the explained batch
    (DeepLift stacks the activations and the reference) reuses the inputs
    cyclically. The wrapped model is a child, so that DeepLift finds its
    nonlinear modules."""

    def __init__(
        self,
        forward_func: Callable,
        model: Optional[Module],
        layer: Module,
        inputs: Tuple[Tensor, ...],
        attribute_to_layer_input: bool,
    ) -> None:
        super().__init__()
        self.wrapped = ModuleList([model if model is not None else layer])
        # Plain attributes, not submodules: DeepLift hooks every module it
        # reaches through the module tree, and a nonlinearity reached twice
        # (through ``wrapped`` and through a ``forward_func`` that is the model)
        # would get two sets of hooks and fail in the backward pass.
        self.__dict__["forward_func"] = forward_func
        self.__dict__["layer"] = layer
        self.inputs = inputs
        self.attribute_to_layer_input = attribute_to_layer_input

    def forward(self, layer_value: Tensor, *additional_forward_args: object) -> Tensor:
        n = self.inputs[0].shape[0]
        rows = torch.arange(layer_value.shape[0]) % n
        inputs = tuple(x[rows.to(x.device)] for x in self.inputs)
        with substituted(self.layer, layer_value, self.attribute_to_layer_input):
            return self.forward_func(*inputs, *additional_forward_args)
