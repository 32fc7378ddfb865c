"""captum-xcam: the Class Activation Mapping family as Captum layer attributions.

Every registered method is importable from here under its class name
(``from captum_xcam import LayerXGradCam``); :func:`list_methods` and
:func:`get_method` reach them by key."""
import warnings
from typing import Any

from captum_xcam._core.cam_attribution import (
    CamAttribution,
    GradientCamAttribution,
    PerturbationCamAttribution,
)
from captum_xcam._core.channel_selection import TopChannels
from captum_xcam._core.guided_layer_cam import GuidedLayerCam
from captum_xcam._core.lift_cam import LiftCompletenessWarning
from captum_xcam._core.multi_layer_cam import MultiLayerCam
from captum_xcam._core.registry import (
    MethodInfo,
    get_method,
    list_methods,
    method_info,
    register_method,
)
from captum_xcam._utils.layer_tail import WholeModelReplayWarning
from captum_xcam._version import __version__
from captum_xcam.reshape_transforms import ChannelsLast, TokenGrid, reshape_transform_for

_METHOD_CLASSES = {get_method(key).__name__: get_method(key) for key in list_methods()}
globals().update(_METHOD_CLASSES)


def __getattr__(name: str) -> Any:
    if name == "LayerCam":
        warnings.warn(
            "captum_xcam.LayerCam (the base of the CAM classes) is renamed CamAttribution, "
            "so that the name no longer collides with the LayerCAM method "
            "(captum_xcam.LayerLayerCam); the alias will be removed in the next release.",
            DeprecationWarning,
            stacklevel=2,
        )
        return CamAttribution
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CamAttribution",
    "ChannelsLast",
    "GradientCamAttribution",
    "PerturbationCamAttribution",
    "TokenGrid",
    "TopChannels",
    "GuidedLayerCam",
    "LiftCompletenessWarning",
    "MethodInfo",
    "MultiLayerCam",
    "WholeModelReplayWarning",
    "__version__",
    "get_method",
    "list_methods",
    "method_info",
    "register_method",
    "reshape_transform_for",
]
__all__ += sorted(_METHOD_CLASSES)
