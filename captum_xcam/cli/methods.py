r"""The CAM methods by their registry keys, and how each is run and timed."""
import time
from typing import List, Tuple

import torch
from captum._utils.typing import TargetType
from torch import Tensor, nn

from captum_xcam import GuidedLayerCam, MethodInfo, list_methods, method_info
from captum_xcam.cli.errors import CliError

PERTURBATIONS_PER_EVAL = 64


def parse_methods(text: str) -> List[MethodInfo]:
    r"""Comma-separated keys of the registry (:func:`captum_xcam.list_methods`),
    or "all" for every one."""
    keys = [key.strip().lower() for key in text.split(",") if key.strip()]
    known = list_methods()
    if keys == ["all"]:
        keys = known
    unknown = [key for key in keys if key not in known]
    if unknown or not keys:
        raise CliError(f"Unknown method {', '.join(unknown) or repr(text)}; choose from "
                       f"{','.join(known)} (comma-separated) or all.")
    return [method_info(key) for key in dict.fromkeys(keys)]


def attribute(
    method: MethodInfo,
    model: nn.Module,
    layer: nn.Module,
    inputs: Tensor,
    target: TargetType,
    guided: bool = False,
    show_progress: bool = False,
) -> Tuple[Tensor, float]:
    r"""
    The method's map of ``inputs`` for ``target`` (ReLU'd, at the layer's
    resolution), or with ``guided`` its guided variant at input resolution,
    and the seconds it took.
    """
    kwargs = {}
    if method.perturbation:
        kwargs = {"perturbations_per_eval": PERTURBATIONS_PER_EVAL,
                  "show_progress": show_progress}
    start = time.perf_counter()
    if guided:
        attributions = GuidedLayerCam(model, layer, cam=method.cam).attribute(
            inputs, target=target, **kwargs)
    else:
        # GuidedLayerCam itself drops the target of a target-free CAM (its
        # guided backpropagation still needs it); so does the plain call here.
        attributions = method.cam(model, layer).attribute(
            inputs, target=target if method.uses_target else None, relu_attributions=True,
            **kwargs)
    if attributions.device.type == "cuda":
        torch.cuda.synchronize(attributions.device)
    return attributions.detach(), time.perf_counter() - start
