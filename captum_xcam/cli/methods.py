r"""The CAM methods by their command-line names, and how each is run and timed."""
import time
from dataclasses import dataclass
from typing import Dict, List, Tuple, Type

import torch
from captum._utils.typing import TargetType
from captum.attr import LayerAttribution, LayerGradCam
from torch import Tensor, nn

from captum_xcam import (
    GuidedLayerCam,
    LayerAblationCam,
    LayerGradCamPlusPlus,
    LayerLiftCam,
    LayerScoreCam,
    LayerXGradCam,
)
from captum_xcam.cli.errors import CliError


@dataclass(frozen=True)
class CamMethod:
    r"""A CAM class under its command-line ``key`` and display ``name``;
    ``perturbation`` methods replay the model once per channel (Ablation-CAM
    the part after the layer, Score-CAM the whole model) and take
    ``perturbations_per_eval`` and ``show_progress``."""

    key: str
    name: str
    cam: Type[LayerAttribution]
    perturbation: bool = False


METHODS: Dict[str, CamMethod] = {m.key: m for m in (
    CamMethod("xgradcam", "XGrad-CAM", LayerXGradCam),
    CamMethod("gradcampp", "Grad-CAM++", LayerGradCamPlusPlus),
    CamMethod("ablationcam", "Ablation-CAM", LayerAblationCam, perturbation=True),
    CamMethod("scorecam", "Score-CAM", LayerScoreCam, perturbation=True),
    CamMethod("liftcam", "LIFT-CAM", LayerLiftCam),
    CamMethod("gradcam", "Grad-CAM (Captum)", LayerGradCam),
)}
PERTURBATIONS_PER_EVAL = 64


def parse_methods(text: str) -> List[CamMethod]:
    r"""Comma-separated keys of :data:`METHODS` ("all" for every one)."""
    keys = [key.strip().lower() for key in text.split(",") if key.strip()]
    if keys == ["all"]:
        return list(METHODS.values())
    unknown = [key for key in keys if key not in METHODS]
    if unknown or not keys:
        raise CliError(f"Unknown method {', '.join(unknown) or repr(text)}; choose from "
                       f"{','.join(METHODS)} (comma-separated) or all.")
    return [METHODS[key] for key in dict.fromkeys(keys)]


def attribute(
    method: CamMethod,
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
        attributions = method.cam(model, layer).attribute(
            inputs, target=target, relu_attributions=True, **kwargs)
    if attributions.device.type == "cuda":
        torch.cuda.synchronize(attributions.device)
    return attributions.detach(), time.perf_counter() - start
