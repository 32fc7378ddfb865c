r"""Any CAM of this library as a Quantus explanation function.

`Quantus <https://github.com/understandable-machine-intelligence-lab/Quantus>`_
[Hedström et al., JMLR 2023, https://jmlr.org/papers/v24/22-0142.html]
evaluates an explanation method through an ``explain_func`` that it calls as
``explain_func(model=model, inputs=x, targets=y, **explain_func_kwargs)`` with
NumPy arrays (images channel first, ``(N, C, H, W)``) and that must return a
NumPy array with one map per image at the input's resolution. Quantus's own
``quantus.explain`` reaches only Captum's ``LayerGradCam`` among CAMs (through
``gc_layer``, a string that it passes to ``eval``, and ``interpolate``);
:func:`quantus_explain_func` serves every registered method, by key or class::

    >>> import quantus
    >>> from captum_xcam.data import make_synthetic
    >>> from captum_xcam.metrics.quantus_adapter import explain_func_for
    >>> from captum_xcam.models import load_pretrained
    >>> model = load_pretrained()                  # SmallCNN, eval mode
    >>> data = make_synthetic(8, seed=1)
    >>> x, y = data.images.numpy(), data.labels.numpy()
    >>> metric = quantus.FaithfulnessCorrelation(nr_runs=10, subset_size=256,
    ...                                          return_aggregate=False)
    >>> scores = metric(model=model, x_batch=x, y_batch=y, a_batch=None,
    ...                 explain_func=explain_func_for("xgradcam", "block4"))  # 8 floats

or, the same, ``explain_func=quantus_explain_func`` with
``explain_func_kwargs={"method": "xgradcam", "layer": "block4"}``; further
options and the keywords of the method's ``attribute`` go with them
(``explain_func_for("scorecam", "layer4", perturbations_per_eval=64)``).
``quantus.evaluate`` passes each key of its ``xai_methods`` to the function as
``method``, so registry keys serve as keys::

    >>> quantus.evaluate(metrics={"sparseness": quantus.Sparseness()},
    ...                  xai_methods={"layercam": quantus_explain_func,
    ...                               "eigencam": quantus_explain_func},
    ...                  model=model, x_batch=x, y_batch=y,
    ...                  explain_func_kwargs={"layer": "block4"})

The traps:

- Give the layer by its dotted name (``"layer4"``, ``"blocks.11.norm1"``).
  Quantus's randomisation metrics (MPRT and its variants) explain deep copies
  of the model, in which a module object of the original is not found (an
  error says so).
- The model is left exactly as it was found (train/eval flag, buffers,
  ``.grad`` fields, ``requires_grad``, no hooks) and on its device: the
  inputs go to the model's device, the maps come back on the CPU. Quantus's
  own ``quantus.explain`` instead puts the model in eval mode and moves it to
  ``device``; Quantus's metrics refuse a model in train mode.
- Quantus refuses maps that are constant (``assert_attributions``); a
  ReLU'd CAM of a randomised model can be all zeros, and MPRT's rank
  correlations of such maps are NaN.
- This module does not import Quantus (it needs only NumPy), so Quantus
  stays an optional dependency.

Quantus 0.6.0 runs here with torch 2.14 and NumPy 2.4, except what calls
NumPy's removed aliases: its AUCs call ``np.trapz`` (``PixelFlipping`` with
``return_auc_per_sample=True``, the ``get_auc_score`` of ``PixelFlipping``,
``RegionPerturbation`` and ``Selectivity``, and ``IROF``), and ``Continuity``
with ``return_nan_when_prediction_changes=True`` writes ``np.NaN``. Take the
curves (``return_auc_per_sample=False``) and integrate them with
``np.trapezoid``, or restore the aliases (``np.trapz = np.trapezoid``,
``np.NaN = np.nan``) before calling Quantus.
"""
import difflib
import warnings
from typing import Any, Optional, Type, Union

import numpy as np
import torch
from captum.attr import LayerAttribution
from torch import Tensor
from torch.nn import DataParallel, Module
from torch.nn.parallel import DistributedDataParallel

from captum_xcam._core.guided_layer_cam import GuidedLayerCam
from captum_xcam._core.registry import method_info
from captum_xcam._utils.model_state import modules_of, preserved_model_state

Method = Union[str, Type[LayerAttribution]]
Layer = Union[str, Module]


def quantus_explain_func(
    model: Module,
    inputs: Union[np.ndarray, Tensor],
    targets: Any,
    *,
    method: Method = "xgradcam",
    layer: Layer,
    relu_attributions: bool = True,
    upsample: bool = True,
    interpolate_mode: str = "bilinear",
    guided: bool = False,
    channel_first: bool = True,
    reshape_transform: Optional[Any] = None,
    device: Union[None, str, torch.device] = None,
    **attribute_kwargs: Any,
) -> np.ndarray:
    r"""
    The CAM ``method`` of ``model`` at ``layer`` as Quantus expects of an
    ``explain_func``: ``cam = method(model, layer)``, then
    ``cam.attribute(inputs, target=targets, relu_attributions=...,
    **attribute_kwargs)`` upsampled to the input's height and width with
    ``LayerAttribution.interpolate``.

    Args:
        model (nn.Module): The model, also wrapped in ``DataParallel`` or
                    Quantus's ``PyTorchModel`` (unwrapped with ``get_model()``).
        inputs (ndarray or Tensor): (N, C, H, W) images, or (N, H, W, C) with
                    ``channel_first=False``.
        targets (int, sequence, ndarray or Tensor): One class index for all
                    images or one per image; anything else Captum accepts as
                    ``target`` (tuples, this library's target objects) passes
                    through unchanged. Ignored by a target-free method
                    (EigenCAM), whose map does not depend on it.
        method (str or type, optional): A registry key
                    (``captum_xcam.list_methods()``) or a class used as
                    Captum's ``LayerGradCam`` is, Captum's own included.
                    Default: "xgradcam"
        layer (str or nn.Module): The layer's dotted name in ``model`` (in the
                    module inside a ``DataParallel`` too), or the module.
        relu_attributions (bool, optional): ReLU the map, as the papers do.
                    Default: True
        upsample (bool, optional): Upsample to the input's resolution (Quantus
                    needs it); False returns the layer's resolution.
                    Default: True
        interpolate_mode (str, optional): As in ``LayerAttribution.interpolate``.
                    Default: "bilinear"
        guided (bool, optional): The guided variant
                    (:class:`~captum_xcam.GuidedLayerCam`: guided
                    backpropagation times the ReLU'd, upsampled CAM), summed
                    over the colour channels. Default: False
        channel_first (bool, optional): Whether ``inputs`` are (N, C, H, W);
                    the map comes back in the same layout, (N, H, W, 1) if
                    not. Default: True (Quantus's metrics always pass channel
                    first)
        reshape_transform (callable, optional): Passed to the CAM's
                    constructor (a vision transformer's tokens to a grid).
                    Default: None (recognised for torchvision's and timm's
                    ViT, DeiT and Swin)
        device (str or torch.device, optional): Accepted because Quantus's
                    metrics pass their ``device``; the computation runs on the
                    model's device and a different ``device`` is an error.
                    Default: None
        **attribute_kwargs: Further keywords of the method's ``attribute``
                    (``perturbations_per_eval``, ``additional_forward_args``,
                    ...).

    Returns:
        *ndarray* float32 of shape (N, 1, H, W), on the CPU.
    """
    cam_class = _cam_class(method)
    if guided and not (relu_attributions and upsample):
        raise ValueError(
            "guided=True always ReLUs the CAM and works at the input's resolution: "
            "leave relu_attributions and upsample True."
        )
    model = _unwrapped(model)
    module = _layer(model, layer)
    run_on = _device(model, device)
    x = _as_inputs(inputs, channel_first, run_on, model)
    target = _as_target(targets, run_on)
    constructor = {} if reshape_transform is None else {"reshape_transform": reshape_transform}
    with preserved_model_state(modules_of(model, module)):
        if guided:
            cam = GuidedLayerCam(model, module, cam=cam_class, **constructor)
            # Captum's guided backpropagation makes the inputs require
            # gradients, and says so: a detached view leaves the caller's
            # tensor alone.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"Input Tensor \d+ did not already")
                maps = cam.attribute(x.detach(), target=target,
                                     interpolate_mode=interpolate_mode, **attribute_kwargs)
            maps = maps.sum(1, keepdim=True)
        else:
            cam = cam_class(model, module, **constructor)
            # A target-free method (EigenCAM) would warn at every call that the
            # targets Quantus always passes are ignored.
            if not getattr(cam_class, "uses_target", True):
                target = None
            maps = cam.attribute(x, target=target, relu_attributions=relu_attributions,
                                 **attribute_kwargs)
            if upsample:
                maps = LayerAttribution.interpolate(
                    maps, tuple(x.shape[2:]), interpolate_mode=interpolate_mode
                )
    maps = maps.detach().to("cpu", torch.float32).numpy()
    return maps if channel_first else np.moveaxis(maps, 1, -1)


class CamExplainFunc:
    r"""A Quantus ``explain_func`` with its method, layer and options bound
    (:func:`explain_func_for` builds one); calling it is calling
    :func:`quantus_explain_func` with them. Keywords given at the call
    (Quantus's ``explain_func_kwargs``, its ``device``) override the bound
    ones, except ``method``: ``quantus.evaluate`` passes the name under which
    the function is listed, which this ignores."""

    def __init__(self, method: Method, layer: Layer, **options: Any) -> None:
        _cam_class(method)
        self.method = method
        self.layer = layer
        self.options = options

    def __call__(self, model: Module, inputs: Union[np.ndarray, Tensor], targets: Any,
                 **kwargs: Any) -> np.ndarray:
        kwargs.pop("method", None)
        options = {"layer": self.layer, **self.options, **kwargs}
        return quantus_explain_func(model, inputs, targets, method=self.method, **options)

    def __repr__(self) -> str:
        method = self.method if isinstance(self.method, str) else self.method.__name__
        layer = self.layer if isinstance(self.layer, str) else type(self.layer).__name__
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}(method={method!r}, layer={layer!r}{options})"


def explain_func_for(method: Method, layer: Layer, **options: Any) -> CamExplainFunc:
    r"""An ``explain_func`` for Quantus that computes ``method`` at ``layer``
    with ``options`` (the keywords of :func:`quantus_explain_func`); an
    unknown method is an error here, an unknown layer at the first call::

        >>> metric(model=model, x_batch=x, y_batch=y,
        ...        explain_func=explain_func_for("scorecam", "layer4",
        ...                                      perturbations_per_eval=64))
    """
    return CamExplainFunc(method, layer, **options)


def _cam_class(method: Method) -> Type[LayerAttribution]:
    if isinstance(method, str):
        return method_info(method).cam
    if isinstance(method, type) and hasattr(method, "attribute"):
        return method
    raise TypeError(
        "method must be a registry key (captum_xcam.list_methods()) or a CAM class "
        f"such as captum.attr.LayerGradCam, got {method!r}."
    )


def _unwrapped(model: Any) -> Module:
    if not isinstance(model, Module) and callable(getattr(model, "get_model", None)):
        model = model.get_model()  # Quantus's ModelInterface
    if not isinstance(model, Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    return model


def _layer(model: Module, layer: Layer) -> Module:
    inner = model.module if isinstance(model, (DataParallel, DistributedDataParallel)) else model
    if isinstance(layer, Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(
                f"The layer {type(layer).__name__} is not a submodule of the model "
                f"{type(model).__name__}. Quantus's randomisation metrics explain copies "
                "of the model: give the layer by its dotted name, for example 'layer4'."
            )
        return layer
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a dotted name or a torch.nn.Module, got {layer!r}.")
    for root in (model, inner):
        try:
            return root.get_submodule(layer)
        except AttributeError:
            pass
    names = [name for name, _ in inner.named_modules() if name]
    near = difflib.get_close_matches(layer, names, n=3)
    hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
    children = ", ".join(name for name, _ in inner.named_children())
    raise ValueError(
        f"{type(inner).__name__} has no layer {layer!r}.{hint} Its top-level layers "
        f"are {children} (dotted names reach nested ones)."
    )


def _device(model: Module, device: Union[None, str, torch.device]) -> torch.device:
    tensor: Optional[Tensor] = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    wanted = None if device is None else torch.device(device)
    if tensor is None:
        return wanted or torch.device("cpu")
    found = tensor.device
    if wanted is not None and (
        wanted.type != found.type or (wanted.index is not None and wanted.index != found.index)
    ):
        raise ValueError(
            f"device={str(wanted)!r}, but the model is on {str(found)!r}; the adapter "
            "explains the model where it is and does not move it: move the model, or "
            "pass the device it is on."
        )
    return found


def _as_inputs(inputs: Union[np.ndarray, Tensor], channel_first: bool, device: torch.device,
               model: Module) -> Tensor:
    if not isinstance(inputs, Tensor):
        inputs = torch.as_tensor(np.asarray(inputs))
    if inputs.dim() < 3:
        raise ValueError(
            f"inputs of shape {tuple(inputs.shape)}: pass a batch of images "
            "(N, C, H, W), or (N, H, W, C) with channel_first=False."
        )
    if not channel_first:
        inputs = inputs.movedim(-1, 1)
    parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = torch.float32 if parameter is None else parameter.dtype
    return inputs.to(device=device, dtype=dtype)


def _as_target(targets: Any, device: torch.device) -> Any:
    if isinstance(targets, (bool, np.bool_)):
        raise TypeError(f"targets must be class indices, got {targets!r}.")
    if isinstance(targets, (int, np.integer)):
        return int(targets)
    if isinstance(targets, list) and all(isinstance(t, (int, np.integer)) for t in targets):
        targets = np.asarray(targets, dtype=np.int64)
    if isinstance(targets, np.ndarray):
        if targets.dtype.kind not in "iu":
            raise TypeError(f"targets must be integer class indices, got dtype {targets.dtype}.")
        targets = torch.from_numpy(targets.astype(np.int64, copy=False).reshape(-1))
    if isinstance(targets, Tensor) and not targets.is_floating_point():
        return targets.reshape(-1).to(device) if targets.dim() else int(targets)
    return targets
