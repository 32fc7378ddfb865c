"""Target wrappers for tasks beyond classification: segmentation, detection,
multi-label classification and regression.

A CAM explains one score per example, picked from ``forward_func``'s output by
``target``. Each wrapper here is a :class:`torch.nn.Module` around the user's
model whose output is a tensor of such scores, so that the library still finds
the model behind it (layer checks, the model state left as found, the split of
the model at the layer). Per-example data (a pixel mask, a box) is an argument
of the wrapper's ``forward`` and travels in ``additional_forward_args``, never
inside the wrapper: the perturbation methods call ``forward_func`` on
``N * perturbations_per_eval`` rows and index the rows of every tensor with a
batch dimension, as Captum expands them.
"""
import dataclasses
from collections.abc import Mapping
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, fx
from torch.nn import Module
from torchvision.ops import box_iou

from captum_xcam._utils.model_state import preserved_model_state

#: The entries picked from a structured output when no key is given, in order:
#: torchvision's segmentation models return {"out", "aux"}, Hugging Face
#: models an output object with ``logits``.
DEFAULT_KEYS = ("out", "logits")

Key = Union[None, str, int]


def model_output(output: Any, key: Key = None) -> Tensor:
    r"""
    The tensor in a model's structured output.

    Args:
        output: What the model returned: a tensor (returned as is); a dict
                    (OrderedDict, Hugging Face ``ModelOutput``), whose entry
                    ``key`` is taken, else ``"out"`` or ``"logits"`` if
                    present, else its only entry; a tuple or list, whose
                    element ``key`` (an int) is taken, else its only element;
                    a dataclass or other object with attributes, whose
                    attribute ``key`` is taken, else ``out`` or ``logits``,
                    else a dataclass's only field.
        key (str or int, optional): Which entry to take. Default: None

    Returns:
        The chosen tensor. A ValueError names the entries when the choice is
        ambiguous or ``key`` is not among them; a TypeError names the type of
        an output (or entry) that is not a tensor.
    """
    if isinstance(output, (Tensor, fx.Proxy)):  # a Proxy while torch.fx traces
        if key is not None:
            raise ValueError(f"The model returns a single tensor; pass key=None, not {key!r}.")
        return output  # type: ignore[return-value]
    if isinstance(output, Mapping):
        value = _mapping_entry(output, key)
    elif isinstance(output, (tuple, list)):
        value = _sequence_entry(output, key)
    elif dataclasses.is_dataclass(output) or hasattr(output, "__dict__"):
        value = _attribute_entry(output, key)
    else:
        raise TypeError(
            f"Cannot find a tensor in a model output of type {type(output).__name__}: "
            "return a tensor, a dict, a tuple or a dataclass, or wrap the model in a "
            "function that returns the tensor to explain."
        )
    if not isinstance(value, (Tensor, fx.Proxy)):
        raise TypeError(
            f"The chosen entry of the {type(output).__name__} output is a "
            f"{type(value).__name__}, not a tensor: pass key= to choose a tensor entry."
        )
    return value  # type: ignore[return-value]


def _mapping_entry(output: Mapping, key: Key) -> Any:
    keys = list(output.keys())
    if key is None:
        key = next((k for k in DEFAULT_KEYS if k in output), None)
        if key is None and len(keys) == 1:
            key = keys[0]
    if key is None or key not in output:
        why = "has no entry" if key is not None else "has several entries and none is"
        raise ValueError(
            f"The model's {type(output).__name__} output {why} {_wanted(key)}; its keys are "
            f"{keys}: pass key= with one of them."
        )
    return output[key]


def _sequence_entry(output: Sequence, key: Key) -> Any:
    if key is None and len(output) == 1:
        key = 0
    if not isinstance(key, int) or isinstance(key, bool) or not -len(output) <= key < len(output):
        raise ValueError(
            f"The model returns a {type(output).__name__} of {len(output)} elements and "
            f"key is {key!r}: pass key= with the int index of the tensor to explain "
            f"(0 to {len(output) - 1})."
        )
    return output[key]


def _attribute_entry(output: object, key: Key) -> Any:
    if dataclasses.is_dataclass(output):
        names = [f.name for f in dataclasses.fields(output)]
    else:
        names = [n for n in vars(output) if not n.startswith("_")]
    if key is None:
        key = next((k for k in DEFAULT_KEYS if getattr(output, k, None) is not None), None)
        if key is None and len(names) == 1:
            key = names[0]
    if not isinstance(key, str) or not hasattr(output, key):
        raise ValueError(
            f"The model's {type(output).__name__} output has no attribute {_wanted(key)}; "
            f"its fields are {names}: pass key= with one of them."
        )
    return getattr(output, key)


def _wanted(key: Key) -> str:
    return repr(key) if key is not None else " or ".join(map(repr, DEFAULT_KEYS))


def masked_class_sums(logits: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    r"""
    Each class's logits summed over pixels: (N, C, *spatial) to (N, C).

    Args:
        logits (Tensor): Per-pixel class scores (N, C, *spatial).
        mask (Tensor, optional): None (every pixel); a bool or float pixel
                    mask shaped ``spatial``, ``(N, *spatial)`` or
                    ``(N, 1, *spatial)``, the same pixels (or weights) for
                    every class; or an integer label map ``(N, *spatial)``,
                    each class summed over the pixels labelled with it
                    (labels outside ``[0, C)``, such as an ignore label 255,
                    count for no class). Default: None

    Returns:
        The sums (N, C).
    """
    if logits.dim() < 3:
        raise ValueError(
            f"SegmentationTarget needs per-pixel scores (N, C, H, W); the model gave shape "
            f"{tuple(logits.shape)}. Pass key= for another output, or use MultiLabelTarget "
            "or RegressionTarget for per-image outputs."
        )
    if mask is None:
        return logits.flatten(2).sum(2)
    mask = mask.to(logits.device)
    if mask.dtype.is_floating_point or mask.dtype == torch.bool:
        weights = _pixel_weights(mask, logits)
    else:
        weights = _label_weights(mask, logits)
    return (logits * weights).flatten(2).sum(2)


# torch.fx records a call of masked_class_sums instead of tracing its branches
# on the mask, so that a SegmentationTarget can still be split at a layer.
fx.wrap("masked_class_sums")


def _pixel_weights(mask: Tensor, logits: Tensor) -> Tensor:
    spatial = logits.shape[2:]
    n = len(logits)
    if mask.shape == spatial:
        return mask.to(logits.dtype).expand(n, 1, *spatial)
    if mask.shape in ((n, *spatial), (n, 1, *spatial)):
        return mask.to(logits.dtype).reshape(n, 1, *spatial)
    raise ValueError(
        f"The pixel mask has shape {tuple(mask.shape)}, the model's output "
        f"{tuple(logits.shape)}: pass a mask of shape {tuple(spatial)}, {(n, *spatial)} or "
        f"{(n, 1, *spatial)}, at the output's resolution. Through additional_forward_args "
        "give it one row per example, since the perturbation methods index its rows."
    )


def _label_weights(labels: Tensor, logits: Tensor) -> Tensor:
    n, c, *spatial = logits.shape
    if labels.shape != (n, *spatial):
        raise ValueError(
            f"The label map has shape {tuple(labels.shape)}; for the model's output "
            f"{tuple(logits.shape)} pass one label per pixel, shape {(n, *spatial)}, such as "
            "SegmentationTarget.predicted_labels(inputs), or a bool/float pixel mask."
        )
    classes = torch.arange(c, device=labels.device).reshape(1, c, *(1,) * len(spatial))
    return (labels.unsqueeze(1) == classes).to(logits.dtype)


class _OutputOf(Module):
    r"""A wrapper of ``model`` that reads its output's tensor ``key`` (see
    :func:`model_output`)."""

    def __init__(self, model: Module, key: Key = None) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def _output(self, inputs: Tensor) -> Tensor:
        return model_output(self.model(inputs), self.key)


class SegmentationTarget(_OutputOf):
    r"""
    A segmentation model as a classifier of regions: the score of class ``c``
    is the sum of its logits over a pixel mask, as in Captum's segmentation
    tutorial (``agg_segmentation_wrapper``). ``forward(inputs, mask=None)``
    returns ``(N, C)``, so ``target=c`` explains class ``c`` over the mask;
    the mask is one of the forms of :func:`masked_class_sums`: a user's pixel
    mask (the same pixels for every class) or a label map such as the
    model's own prediction (:meth:`predicted_labels`), each class summed over
    its own pixels.

    Args:
        model (Module): The segmentation model, returning per-pixel logits
                    (N, C, H, W), or a structure holding them (torchvision's
                    ``{"out", "aux"}``).
        key (str or int, optional): Which entry of a structured output to
                    explain, as in :func:`model_output`. Default: None
                    (``"out"`` for torchvision models)

    Returns:
        A module whose output is (N, C) for ``forward(inputs, mask)``.

    Example::

        >>> model = torchvision.models.segmentation.fcn_resnet50(num_classes=4).eval()
        >>> seg = SegmentationTarget(model)
        >>> mask = seg.predicted_labels(images)               # (N, H, W) labels
        >>> cam = LayerGradCam(seg, model.backbone.layer4)
        >>> attr = cam.attribute(images, target=2, additional_forward_args=(mask,))

    Pass the mask with one row per example, ``(N, H, W)`` or ``(N, 1, H, W)``,
    at the output's resolution (torchvision's models upsample to the input's).
    """

    def forward(self, inputs: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        r"""The class sums (N, C) over ``mask`` (see :func:`masked_class_sums`)."""
        return masked_class_sums(self._output(inputs), mask)

    def predicted_labels(self, inputs: Tensor) -> Tensor:
        r"""The model's predicted class per pixel, (N, H, W) long: the argmax of
        its logits, without autograd, the model's state left as found."""
        with torch.no_grad(), preserved_model_state([self.model]):
            return self._output(inputs).argmax(1)


class DetectionTarget(Module):
    r"""
    A torchvision detector (Faster R-CNN, RetinaNet, SSD, ..., in eval mode,
    returning one dict of ``boxes``, ``labels`` and ``scores`` per image) as a
    scorer of one object per image. ``forward(images, boxes, labels)`` returns
    (N,): for image ``i``, among the detections labelled ``labels[i]`` whose
    IoU with ``boxes[i]`` (xyxy, in the input image's coordinates) is at least
    ``iou_threshold``, the score of the one with the largest IoU; 0, a
    constant, if there is none. Explain it with ``target=None``.

    Every image's detection is matched again in each forward pass, so the
    perturbation methods follow the same object through their masked or
    ablated replays. Gradients reach the layer through the scores, which
    torchvision computes as a softmax or sigmoid of the class logits.
    torch.fx cannot trace a detector, so Ablation-CAM and LIFT-CAM re-run the
    whole detector for every replay (with a ``WholeModelReplayWarning``):
    prefer a layer with few channels for them. LIFT-CAM is refused on
    RetinaNet, whose head is shared across the FPN levels (Captum's DeepLift
    cannot take a module called more than once).

    The detector resizes each image (``min_size``, ``max_size``; SSD to its
    fixed size) and pads the batch to a multiple of its ``size_divisible``
    (32 for Faster R-CNN and RetinaNet), so a backbone layer's map covers
    that resized and padded image: upsampled to the input's size it lines up
    with the input only where no padding was added (an input whose resized
    sides are multiples of 32, or SSD).

    Args:
        model (Module): The detector, in eval mode.
        iou_threshold (float, optional): The least IoU of a matching
                    detection. Default: 0.5

    Returns:
        A module whose output is (N,) for ``forward(images, boxes, labels)``.

    Example::

        >>> detector = torchvision.models.detection.retinanet_resnet50_fpn().eval()
        >>> det = DetectionTarget(detector)
        >>> boxes, labels = det.top_detections(images)        # or your own
        >>> cam = LayerAblationCam(det, detector.backbone.body.layer4)
        >>> attr = cam.attribute(images, additional_forward_args=(boxes, labels))
    """

    def __init__(self, model: Module, iou_threshold: float = 0.5) -> None:
        super().__init__()
        self.model = model
        self.iou_threshold = iou_threshold

    def forward(self, images: Tensor, boxes: Tensor, labels: Tensor) -> Tensor:
        r"""The matched detection's score per image, (N,)."""
        detections = self._detect(images)
        if boxes.shape != (len(detections), 4) or labels.shape != (len(detections),):
            raise ValueError(
                f"Got boxes of shape {tuple(boxes.shape)} and labels of shape "
                f"{tuple(labels.shape)} for {len(detections)} images: pass one xyxy box "
                f"({len(detections)}, 4) and one label ({len(detections)},) per image, "
                "such as DetectionTarget.top_detections(images)."
            )
        return torch.stack([
            matched_score(d, box, label, self.iou_threshold)
            for d, box, label in zip(detections, boxes, labels)
        ])

    def top_detections(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        r"""Each image's highest-scoring detection: boxes (N, 4) and labels (N,),
        without autograd, the model's state left as found."""
        with torch.no_grad(), preserved_model_state([self.model]):
            detections = self._detect(images)
        for i, d in enumerate(detections):
            if len(d["scores"]) == 0:
                raise ValueError(
                    f"The detector found nothing in image {i}: lower its score threshold "
                    "(box_score_thresh for Faster R-CNN, score_thresh for RetinaNet and SSD), "
                    "or pass the boxes and labels to explain yourself."
                )
        best = [d["scores"].argmax() for d in detections]
        return (
            torch.stack([d["boxes"][b] for d, b in zip(detections, best)]),
            torch.stack([d["labels"][b] for d, b in zip(detections, best)]),
        )

    def _detect(self, images: Tensor) -> List[dict]:
        if self.model.training:
            raise ValueError(
                "The detector is in train mode, where torchvision detectors return losses: "
                "call model.eval() before explaining it."
            )
        detections = self.model(images)
        if not isinstance(detections, (list, tuple)) or not all(
            isinstance(d, Mapping) and {"boxes", "labels", "scores"} <= set(d) for d in detections
        ):
            raise TypeError(
                f"DetectionTarget needs a detector returning one dict of boxes, labels and "
                f"scores per image, as torchvision's do in eval mode; got a "
                f"{type(detections).__name__}."
            )
        return list(detections)


def matched_score(detection: Mapping, box: Tensor, label: Tensor, iou_threshold: float) -> Tensor:
    r"""
    The score of the detection that matches ``box`` and ``label`` best.

    Args:
        detection (dict): One image's ``boxes`` (D, 4), ``labels`` (D,) and
                    ``scores`` (D,).
        box (Tensor): The xyxy box to match (4,).
        label (Tensor): Its label, a scalar.
        iou_threshold (float): The least IoU of a match.

    Returns:
        A scalar: the score of the detection labelled ``label`` with the
        largest IoU with ``box``, if at least ``iou_threshold``; else a
        constant 0 (not on the autograd graph).
    """
    boxes, scores = detection["boxes"], detection["scores"]
    iou = box_iou(box.reshape(1, 4).to(boxes), boxes)[0]
    candidates = (detection["labels"] == label.to(boxes.device)) & (iou >= iou_threshold)
    if not bool(candidates.any()):
        return scores.new_zeros(()).detach()
    return scores[torch.where(candidates, iou, -1).argmax()]


def _as_columns(values: Tensor) -> Tensor:
    r"""An (N,) output as (N, 1); others as they are."""
    return values.unsqueeze(1) if values.dim() == 1 else values


fx.wrap("_as_columns")


class MultiLabelTarget(_OutputOf):
    r"""
    A multi-label classifier's probabilities: ``forward(inputs)`` is the
    sigmoid of its (N, L) logits, so ``target=l`` explains the probability of
    label ``l`` (each label on its own, unlike a softmax's classes).

    Args:
        model (Module): The classifier, returning (N, L) logits or a
                    structure holding them.
        key (str or int, optional): Which entry of a structured output, as in
                    :func:`model_output`. Default: None

    Returns:
        A module whose output is the (N, L) probabilities.

    Example::

        >>> cam = LayerGradCam(MultiLabelTarget(model), model.layer4)
        >>> attr = cam.attribute(images, target=3)
    """

    def forward(self, inputs: Tensor) -> Tensor:
        r"""The label probabilities (N, L). (One input, no ``*args``: torch.fx
        can then split the wrapper at a layer.)"""
        return torch.sigmoid(self._output(inputs))


class RegressionTarget(_OutputOf):
    r"""
    A regression model's values as scores: ``forward(inputs)`` is its (N, V)
    output (an (N,) output becomes (N, 1)), so ``target=v`` explains value
    ``v``, and ``target=None`` the single value of a model with one.

    Args:
        model (Module): The regressor, returning (N, V) or (N,) values, or a
                    structure holding them.
        key (str or int, optional): Which entry of a structured output, as in
                    :func:`model_output`. Default: None

    Returns:
        A module whose output is the (N, V) values.

    Example::

        >>> cam = LayerGradCam(RegressionTarget(age_model), age_model.layer4)
        >>> attr = cam.attribute(faces)                       # target=None: one value
    """

    def forward(self, inputs: Tensor) -> Tensor:
        r"""The values (N, V)."""
        return _as_columns(self._output(inputs))


__all__ = [
    "DetectionTarget",
    "MultiLabelTarget",
    "RegressionTarget",
    "SegmentationTarget",
    "masked_class_sums",
    "matched_score",
    "model_output",
]
