"""Guided CAMs: guided backpropagation times an upsampled CAM."""
import warnings
from collections import Counter
from typing import List, Optional, Tuple, Type, Union

import torch
from captum._utils.typing import TargetType
from captum.attr import GradientAttribution, GuidedBackprop, LayerAttribution
from captum.log import log_usage
from torch import Tensor, nn
from torch.nn import Module

from captum_xcam._core.xgrad_cam import LayerXGradCam
from captum_xcam._utils.formatting import as_tuple
from captum_xcam._utils.model_state import modules_of, preserved_model_state
from captum_xcam._utils.user_warnings import warn
from captum_xcam.reshape_transforms import ReshapeTransform


class GuidedLayerCam(GradientAttribution):
    r"""
    The guided variant of any CAM, as Captum's ``GuidedGradCam`` is of
    Grad-CAM [Selvaraju et al., ICCV 2017; Springenberg et al., 2015]: the
    element-wise product of guided backpropagation (Captum's
    :class:`~captum.attr.GuidedBackprop`) and the ReLU'd CAM upsampled to the
    input size with ``LayerAttribution.interpolate``. It combines the CAM's
    class-discriminative localisation with the fine detail of guided
    backpropagation; the XGrad-CAM paper calls its variant Guided XGrad-CAM.

    ``cam`` is any of this library's CAM classes or Captum's
    ``LayerGradCam``; with the latter this equals Captum's ``GuidedGradCam``.

    Guided backpropagation changes the backward pass of ``nn.ReLU`` modules
    only: other nonlinearities (ReLU6, SiLU, GELU, Hardswish, ...) pass the
    plain gradient, and on a model with no ``nn.ReLU`` the guided variant is
    the gradient times the CAM. The constructor warns, naming them (functional
    calls such as ``F.relu`` cannot be seen and are not guided either).

        >>> guided = GuidedLayerCam(model, model.layer4, cam=LayerScoreCam)
        >>> attr = guided.attribute(images, target=3, perturbations_per_eval=64)
    """

    def __init__(
        self,
        model: Module,
        layer: Module,
        cam: Type[LayerAttribution] = LayerXGradCam,
        device_ids: Union[None, List[int]] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
    ) -> None:
        r"""
        Args:

            model (nn.Module): The reference to the PyTorch model instance.
            layer (torch.nn.Module): Layer for which the CAM is computed.
            cam (type, optional): The CAM class. Default: LayerXGradCam
            device_ids (list[int], optional): Device ID list, necessary only
                        if model is a DataParallel model.
            reshape_transform (Callable, optional): The CAM's reshape
                        transform (a vision transformer's tokens to a grid).
                        Default: None (recognised for torchvision's and timm's
                        ViT, DeiT and Swin)
        """
        GradientAttribution.__init__(self, model)
        kwargs = {} if reshape_transform is None else {"reshape_transform": reshape_transform}
        self.cam = cam(model, layer, device_ids, **kwargs)
        self.guided_backprop = GuidedBackprop(model)
        _warn_unguided(model)

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Optional[object] = None,
        interpolate_mode: str = "nearest",
        attribute_to_layer_input: bool = False,
        **cam_kwargs: object,
    ) -> Union[Tensor, Tuple[Tensor, ...]]:
        r"""
        Args:

            inputs, target, additional_forward_args, attribute_to_layer_input:
                        as for the CAM class.
            interpolate_mode (str, optional): How the CAM is upsampled to each
                        input, as in ``LayerAttribution.interpolate``.
                        Default: "nearest" (as Captum's GuidedGradCam)
            **cam_kwargs: Further keywords of the CAM's ``attribute``, for
                        example ``perturbations_per_eval`` or ``baselines``.

        Returns:
            *Tensor* or *tuple[Tensor, ...]* of **attributions**, one per
            input and shaped like it. An input that the CAM cannot be
            interpolated to gets an empty tensor and a warning, as in Captum.
        """
        inputs_tuple = as_tuple(inputs)
        with preserved_model_state(modules_of(self.forward_func, self.cam.layer)):
            cam = self.cam.attribute.__wrapped__(
                self.cam,
                inputs_tuple,
                target=target if getattr(self.cam, "uses_target", True) else None,
                additional_forward_args=additional_forward_args,
                attribute_to_layer_input=attribute_to_layer_input,
                relu_attributions=True,
                **cam_kwargs,
            )
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*Setting backward hooks")
                guided = self.guided_backprop.attribute.__wrapped__(
                    self.guided_backprop,
                    inputs_tuple,
                    target=target,
                    additional_forward_args=additional_forward_args,
                )
        products = tuple(
            _guided_product(g, cam, x, interpolate_mode) for g, x in zip(guided, inputs_tuple)
        )
        return products if isinstance(inputs, tuple) else products[0]


#: Nonlinearities that Captum's GuidedBackprop leaves to the plain gradient.
UNGUIDED = (nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
            nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Tanh, nn.Sigmoid)


def _warn_unguided(model: Module) -> None:
    r"""Warns when ``model`` has nonlinearities that guided backpropagation
    does not change, saying how many ``nn.ReLU`` modules it does."""
    found = Counter(type(m).__name__ for m in model.modules() if isinstance(m, UNGUIDED))
    if not found:
        return
    relus = sum(type(m) is nn.ReLU for m in model.modules())
    names = ", ".join(f"{name} x{count}" for name, count in found.items())
    if relus == 0:
        found_text = (f"this model has {names}, whose gradient passes unchanged, and no "
                      "nn.ReLU at all: the guided variant is the plain gradient times the CAM.")
    else:
        found_text = (f"this model's {relus} nn.ReLU modules are guided, but its {names} "
                      "pass the plain gradient.")
    warn("Guided backpropagation (Captum's GuidedBackprop) changes only nn.ReLU modules; "
         + found_text, UserWarning)


def _guided_product(guided: Tensor, cam: Tensor, inp: Tensor, mode: str) -> Tensor:
    try:
        return guided * LayerAttribution.interpolate(
            cam, tuple(inp.shape[2:]), interpolate_mode=mode
        )
    except Exception:
        warnings.warn(
            "Couldn't interpolate the CAM to an input of shape "
            f"{tuple(inp.shape)}; returning an empty tensor for it.",
            stacklevel=3,
        )
        return torch.empty(0)


