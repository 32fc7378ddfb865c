"""The tests' method lists, all read from the registry: a newly registered
method is in every shared test without editing them."""
from typing import Dict, List, Optional, Type

from captum.attr import LayerAttribution

from captum_xcam import get_method, list_methods

METHODS: List[Type[LayerAttribution]] = [get_method(key) for key in list_methods()]
#: Methods whose map depends on the target (the others ignore it, with a warning).
TARGETED = [cam for cam in METHODS if cam.method_info.uses_target]
#: Methods that replay the model per channel (perturbations_per_eval, show_progress).
PERTURBATION = [get_method(key) for key in list_methods(family="perturbation")]
#: Methods whose attribute() accepts grad_kwargs, as Captum's LayerGradCam does.
WITH_GRAD_KWARGS = [cam for cam in METHODS if "grad_kwargs" in cam.method_info.attribute_keywords]
#: Methods that gather a layer's tensors across devices with device_ids (the
#: others take a DataParallel model itself).
GATHERING = [cam for cam in METHODS if cam._gathers_devices]
NOT_GATHERING = [cam for cam in METHODS if not cam._gathers_devices]


def quick(cam_class: Type[LayerAttribution]) -> Dict[str, object]:
    r"""Keywords that keep a sampling method's tests short (fewer samples)."""
    keywords = cam_class.method_info.attribute_keywords
    return {"num_samples": 2} if "num_samples" in keywords else {}


def target_for(cam_class: Type[LayerAttribution], target: object) -> Optional[object]:
    r"""``target`` for a method that uses one, None for a target-free one."""
    return target if cam_class.method_info.uses_target else None
