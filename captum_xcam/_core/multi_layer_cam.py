"""Multi-layer CAMs: one CAM on several layers, upsampled to the input and fused."""
import math
from typing import Any, Callable, List, Optional, Sequence, Tuple, Type, Union

import torch
from captum._utils.typing import TargetType
from captum.attr import Attribution, LayerAttribution
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from captum_xcam._core.grad_cam import LayerGradCam
from captum_xcam._core.registry import get_method
from captum_xcam._utils.formatting import as_tuple
from captum_xcam._utils.model_state import modules_of, preserved_model_state
from captum_xcam._utils.validation import check_layer

#: The fusions :class:`MultiLayerCam` knows, by name.
FUSIONS = ("mean", "max", "layercam")


class MultiLayerCam(Attribution):
    r"""
    One CAM on several layers, each map upsampled to the input's size and the
    maps fused into one, for maps that keep the deep layers' class
    localisation and the shallow layers' detail. With ``M_l`` the CAM of
    layer ``l`` (``L`` layers, shape ``(N, 1, *spatial_l)``), ``r(M_l)`` its
    rescaling (below), ``U`` the upsampling to the input's spatial size with
    ``LayerAttribution.interpolate`` (``interpolate_mode``, bilinear by
    default), the fused map is, per example and position:

    - ``"mean"``: :math:`\frac{1}{L} \sum_l U\big(M_l / \max|M_l|\big)`
    - ``"max"``: :math:`\max_l U\big(M_l / \max|M_l|\big)`
    - ``"layercam"``: :math:`\max_l U\big(\tanh(\gamma\, M_l / \max M_l)\big)`,
      ``gamma=2`` by default.

    ``max|M_l|`` and ``max M_l`` are taken per example over all positions of
    the layer's own map, before upsampling, so that they do not depend on the
    input size or the interpolation mode. The division makes layers of
    different magnitudes count alike (a deep layer's map can be orders of
    magnitude larger than a shallow one's); ``normalize=False`` leaves the
    maps as they are for ``"mean"`` and ``"max"`` (a one-layer ``"mean"`` is
    then exactly the upsampled CAM). An all-zero map has no maximum to divide
    by: it stays zero.

    ``"layercam"`` is the fusion of LayerCAM [Jiang et al., "LayerCAM:
    Exploring Hierarchical Class Activation Maps for Localization", IEEE TIP
    2021, Sec. III-C, Eq. 9, https://doi.org/10.1109/TIP.2021.3089943]. The
    paper scales the maps of the shallow layers, whose values are much smaller
    than those of the last layer, with :math:`\tanh(\gamma M / \max M)`,
    ``gamma=2``, and fuses the maps by their element-wise maximum. Like
    torchcam's ``LayerCAM.fuse_cams`` we scale every map, the deepest one
    included, so that the result does not depend on the raw magnitude of any
    layer: each scaled map peaks at :math:`\tanh(\gamma) \approx 0.96`
    (torchcam first min-max normalises each map to [0, 1]; we do not shift
    the maps, so a zero stays a zero). Like torchcam we scale at each layer's
    resolution and then upsample. The paper's maps are ReLU'd, so
    ``max M >= 0``, and ``max M = 0`` only for an all-zero map, which would
    give 0/0 = NaN: it stays zero here. Without ``relu_attributions=True`` a
    map may be all negative, and dividing by its (negative) maximum would
    flip it, its most negative position becoming its brightest: such a map
    is divided by ``max|M|`` instead, which keeps its order (its values stay
    in (-1, 0)). A map with some positive value is divided by its maximum,
    as in the paper. Pass ``relu_attributions=True`` for the paper's fusion.

    pytorch-grad-cam's multi-layer CAMs (a list of ``target_layers``) clip
    each map at zero, min-max normalise it, average the maps and min-max
    normalise the mean: ``"mean"`` with ``relu_attributions=True`` up to the
    final rescaling (and the shift of each map by its minimum, usually 0
    after the ReLU).

    Any CAM class of this library (or Captum's ``LayerGradCam``) works as
    ``cam``, or its registry key; keywords beyond those below go to every
    per-layer CAM's constructor. A target-free CAM (EigenCAM) handles the
    target as it does alone (it warns that a target is ignored). It is not a
    registered method: it composes them.

        >>> cam = MultiLayerCam(model, [model.layer2, model.layer3, model.layer4],
        ...                     cam=LayerLayerCam, fusion="layercam")
        >>> attr = cam.attribute(images, target=labels, relu_attributions=True)  # (N, 1, H, W)
    """

    def __init__(
        self,
        forward_func: Callable,
        layers: Sequence[Module],
        cam: Union[str, Type[LayerAttribution]] = LayerGradCam,
        fusion: str = "mean",
        *,
        device_ids: Union[None, List[int]] = None,
        interpolate_mode: str = "bilinear",
        normalize: bool = True,
        gamma: float = 2.0,
        **cam_kwargs: Any,
    ) -> None:
        r"""
        Args:

            forward_func (Callable): The forward function of the model or any
                        modification of it.
            layers (list[torch.nn.Module]): The layers whose maps are fused,
                        at least one, each as the CAM needs it (a single
                        tensor of shape ``(N, K, *spatial)``).
            cam (type or str, optional): The CAM class, for example
                        ``LayerLayerCam``, or its registry key
                        (``"layercam"``, see :func:`~captum_xcam.list_methods`).
                        Default: LayerGradCam
            fusion (str, optional): ``"mean"``, ``"max"`` or ``"layercam"``
                        (see the class). Default: "mean"
            device_ids (list[int], optional): Device ID list, necessary only
                        if forward_func applies a DataParallel model; passed
                        to every CAM.
            interpolate_mode (str, optional): How each map is upsampled to
                        the input's spatial size, as in
                        ``LayerAttribution.interpolate``. Default: "bilinear"
            normalize (bool, optional): For ``"mean"`` and ``"max"``, divide
                        each map per example by its maximum absolute value
                        first. ``"layercam"`` always divides (it is part of
                        its formula). Default: True
            gamma (float, optional): The ``"layercam"`` scaling strength, a
                        positive number. Default: 2.0 (the paper's)
            **cam_kwargs: Further keywords of every per-layer CAM's
                        constructor.
        """
        self.layers = _checked_layers(forward_func, layers)
        self.fusion = _checked_fusion(fusion, normalize)
        self.gamma = _checked_gamma(gamma)
        self.normalize = normalize
        self.interpolate_mode = interpolate_mode
        Attribution.__init__(self, forward_func)
        cam_class = _cam_class(cam)
        self.cams = [
            cam_class(forward_func, layer, device_ids=device_ids, **cam_kwargs)
            for layer in self.layers
        ]

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Optional[object] = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        **method_kwargs: Any,
    ) -> Tensor:
        r"""
        Args:

            inputs (Tensor or tuple[Tensor, ...]): Input for which attributions
                        are computed, as for the CAM; the maps are upsampled
                        to the spatial size of ``inputs[0]`` (its dimensions
                        after the first two).
            target, additional_forward_args, attribute_to_layer_input:
                        as for the CAM, passed to it for every layer.
            relu_attributions (bool, optional): Apply a ReLU to each layer's
                        map before the fusion, as the papers do.
                        Default: False (Captum's default)
            **method_kwargs: Further keywords of the CAM's ``attribute``, for
                        example ``perturbations_per_eval`` or ``num_samples``.

        Returns:
            *Tensor* of **attributions** of shape ``(N, 1, *spatial)``, the
            spatial size of ``inputs[0]``, on the device of ``inputs[0]``.
        """
        first = as_tuple(inputs)[0]
        size = _spatial_size(first)
        with preserved_model_state(self._roots()):
            maps = [
                cam.attribute(
                    inputs,
                    target=target,
                    additional_forward_args=additional_forward_args,
                    attribute_to_layer_input=attribute_to_layer_input,
                    relu_attributions=relu_attributions,
                    **method_kwargs,
                )
                for cam in self.cams
            ]
        upsampled = [self._upsampled(self._rescaled(m), size, first.device) for m in maps]
        return _reduce(upsampled, "mean" if self.fusion == "mean" else "max")

    def _rescaled(self, cam_map: Tensor) -> Tensor:
        r"""The map divided by its peak (or tanh-scaled), at its own resolution."""
        if self.fusion == "layercam":
            return torch.tanh(self.gamma * cam_map / _peak(cam_map, signed=True))
        return cam_map / _peak(cam_map, signed=False) if self.normalize else cam_map

    def _upsampled(self, cam_map: Tensor, size: Tuple[int, ...], device: torch.device) -> Tensor:
        if cam_map.dim() != len(size) + 2:
            raise ValueError(
                f"A CAM map of shape {tuple(cam_map.shape)} cannot be upsampled to the input's "
                f"spatial size {size}: the layers' maps must have as many spatial dimensions "
                "as inputs[0] (a (N, C, H, W) input needs (N, K, h, w) layers)."
            )
        return LayerAttribution.interpolate(cam_map, size, self.interpolate_mode).to(device)

    def _roots(self) -> List[Module]:
        return modules_of(self.forward_func, self.layers[0]) + self.layers[1:]

    def __repr__(self) -> str:
        option = f"gamma={self.gamma}" if self.fusion == "layercam" else (
            f"normalize={self.normalize}"
        )
        return (
            f"{type(self).__name__}(cam={type(self.cams[0]).__name__}, "
            f"layers={len(self.layers)}, fusion={self.fusion!r}, {option})"
        )


def _peak(cam_map: Tensor, signed: bool) -> Tensor:
    r"""Each example's divisor, shaped to broadcast over ``cam_map``: its
    maximum absolute value; with ``signed``, its maximum where that is
    positive (LayerCAM's ``max M``). 1 for an all-zero map, which stays
    zero."""
    flat = cam_map.detach().flatten(1)
    peak = flat.abs().amax(1)
    if signed:
        highest = flat.amax(1)
        peak = torch.where(highest > 0, highest, peak)
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    return peak.reshape((-1,) + (1,) * (cam_map.dim() - 1))


def _reduce(maps: List[Tensor], how: str) -> Tensor:
    r"""The element-wise mean or maximum of same-shaped maps, one at a time."""
    fused = maps[0]
    for cam_map in maps[1:]:
        fused = fused + cam_map if how == "mean" else torch.maximum(fused, cam_map)
    return fused / len(maps) if how == "mean" else fused


def _spatial_size(first: Tensor) -> Tuple[int, ...]:
    if not isinstance(first, Tensor) or first.dim() < 3:
        shape = tuple(first.shape) if isinstance(first, Tensor) else type(first).__name__
        raise ValueError(
            f"inputs[0] has shape {shape}: MultiLayerCam upsamples the maps to its spatial "
            "size (its dimensions after batch and channels), so it needs an (N, C, H, W)-like "
            "input."
        )
    return tuple(first.shape[2:])


def _checked_layers(forward_func: Callable, layers: Sequence[Module]) -> List[Module]:
    if isinstance(layers, Module) or not isinstance(layers, (list, tuple)):
        raise TypeError(
            f"layers must be a list of modules, got {type(layers).__name__}; for one layer "
            "pass [layer] (a Sequential is a module, not a list of layers)."
        )
    if not layers:
        raise ValueError(
            "layers is empty: pass the modules whose maps are fused, for example "
            "[model.layer2, model.layer3, model.layer4] of a ResNet."
        )
    for layer in layers:
        check_layer(forward_func, layer)
    return list(layers)


def _checked_fusion(fusion: str, normalize: bool) -> str:
    if fusion not in FUSIONS:
        raise ValueError(
            f"Unknown fusion {fusion!r}: use one of {', '.join(map(repr, FUSIONS))}."
        )
    if fusion == "layercam" and not normalize:
        raise ValueError(
            "fusion='layercam' divides each map by its maximum as part of its formula; "
            "normalize=False applies only to 'mean' and 'max'."
        )
    return fusion


def _checked_gamma(gamma: float) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not (
        math.isfinite(gamma) and gamma > 0
    ):
        raise ValueError(f"gamma must be a positive finite number, got {gamma!r}.")
    return float(gamma)


def _cam_class(cam: Union[str, Type[LayerAttribution]]) -> Type[LayerAttribution]:
    r"""The CAM class of a class or a registry key."""
    if isinstance(cam, str):
        return get_method(cam)
    if isinstance(cam, type) and issubclass(cam, LayerAttribution):
        return cam
    raise TypeError(
        f"cam must be a CAM class (a LayerAttribution subclass such as LayerGradCam, not an "
        f"instance) or a registry key such as 'layercam', got {type(cam).__name__}."
    )
