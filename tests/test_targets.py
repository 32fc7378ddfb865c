"""Target wrappers beyond classification (captum_xcam.targets): structured
outputs, segmentation, detection, multi-label and regression. Every model has
random weights (weights=None, weights_backbone=None: nothing is downloaded) and
small inputs; the perturbation methods explain layers with few channels."""
import dataclasses
import functools
import warnings
from collections import OrderedDict
from typing import Callable, Dict, Tuple

import pytest
import torch
from torch import nn
from torchvision.models import detection, segmentation

from captum_xcam import (
    LayerGradCam,
    LayerHiResCam,
    LayerLiftCam,
    LayerXGradCam,
    LiftCompletenessWarning,
    WholeModelReplayWarning,
)
from captum_xcam.targets import (
    DetectionTarget,
    MultiLabelTarget,
    RegressionTarget,
    SegmentationTarget,
    masked_class_sums,
    matched_score,
    model_output,
)
from conftest import make_images, make_tiny
from registered import METHODS, PERTURBATION, quick, target_for

NUM_CLASSES = 3
GRADIENT_FREE = [cam for cam in METHODS if cam.method_info.family == "gradient-free"]


# --- model_output -------------------------------------------------------------------------


@dataclasses.dataclass
class Logits:
    logits: torch.Tensor
    hidden: torch.Tensor


@dataclasses.dataclass
class Pair:
    first: torch.Tensor
    second: torch.Tensor


@dataclasses.dataclass
class Single:
    value: torch.Tensor


A, B = torch.zeros(2, 3), torch.ones(2, 3)


@pytest.mark.parametrize("output, key, expected", [
    (A, None, A),
    ({"out": A, "aux": B}, None, A),
    ({"aux": B, "out": A}, "aux", B),
    (OrderedDict(out=A, aux=B), None, A),
    (OrderedDict(scores=B), None, B),
    ({"logits": A, "hidden": B}, None, A),
    ((A,), None, A),
    ([A, B], 1, B),
    ((A, B), -1, B),
    (Logits(A, B), None, A),
    (Logits(A, B), "hidden", B),
    (Single(B), None, B),
])
def test_model_output_picks_the_entry(output, key, expected):
    assert model_output(output, key) is expected


@pytest.mark.parametrize("output, key, error, match", [
    ({"a": A, "b": B}, None, ValueError,
     r"none is 'out' or 'logits'; its keys are \['a', 'b'\]: pass key="),
    ({"out": A}, "aux", ValueError, r"no entry 'aux'.*keys are \['out'\]"),
    ((A, B), None, ValueError, r"tuple of 2 elements.*pass key= with the int index"),
    ([A, B], 2, ValueError, r"list of 2 elements and key is 2"),
    ((A, B), "out", ValueError, r"int index"),
    (Pair(A, B), None, ValueError, r"Pair output has no attribute.*\['first', 'second'\]"),
    (Logits(A, B), "aux", ValueError, r"no attribute 'aux'"),
    (A, "out", ValueError, r"single tensor; pass key=None"),
    ({"out": [A]}, None, TypeError, r"dict output is a list, not a tensor: pass key="),
    (3, None, TypeError, r"type int: return a tensor, a dict"),
])
def test_model_output_errors_name_the_fix(output, key, error, match):
    with pytest.raises(error, match=match):
        model_output(output, key)


# --- masked_class_sums --------------------------------------------------------------------


def test_masked_class_sums_forms():
    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    pixels = torch.rand(4, 5) > 0.5
    expected = (logits * pixels).sum((2, 3))
    for mask in (pixels, pixels.expand(2, 4, 5), pixels.expand(2, 1, 4, 5), pixels.double()):
        torch.testing.assert_close(masked_class_sums(logits, mask), expected)
    torch.testing.assert_close(masked_class_sums(logits), logits.sum((2, 3)))
    labels = torch.randint(0, 3, (2, 4, 5))
    labels[0, 0, 0] = 255  # an ignore label counts for no class
    by_hand = torch.stack([(logits[:, c] * (labels == c)).sum((1, 2)) for c in range(3)], 1)
    torch.testing.assert_close(masked_class_sums(logits, labels), by_hand)


@pytest.mark.parametrize("logits, mask, match", [
    (torch.zeros(2, 3), None, r"per-pixel scores .* MultiLabelTarget"),
    (torch.zeros(2, 3, 4, 5), torch.ones(3, 4, 5, dtype=torch.bool), r"mask of shape \(4, 5\)"),
    (torch.zeros(2, 3, 4, 5), torch.ones(2, 5, 4), r"at the output's resolution"),
    (torch.zeros(2, 3, 4, 5), torch.zeros(4, 5, dtype=torch.long), r"label map .* \(2, 4, 5\)"),
])
def test_masked_class_sums_errors(logits, mask, match):
    with pytest.raises(ValueError, match=match):
        masked_class_sums(logits, mask)


# --- segmentation -------------------------------------------------------------------------

# name -> (a backbone layer for the gradient methods, a layer with few channels
# for the perturbation methods: the classifier's last conv, NUM_CLASSES channels)
SEGMENTERS: Dict[str, Tuple[Callable, Callable]] = {
    "fcn_resnet50": (lambda m: m.backbone.layer4, lambda m: m.classifier[4]),
    "deeplabv3_mobilenet_v3_large": (lambda m: m.backbone["16"], lambda m: m.classifier[4]),
    "lraspp_mobilenet_v3_large": (
        lambda m: m.backbone["16"], lambda m: m.classifier.high_classifier),
}


def calibrated(model: nn.Module, run: Callable[[torch.Tensor], object], size: int) -> nn.Module:
    r"""Random weights whose BatchNorm statistics are those of random images
    (``run`` on them in train mode, momentum 1): torchvision's own init of the
    MobileNet layers makes a random model's output independent of its input
    (to 1e-9), and random statistics do not always help."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.momentum = 1.0
    model.train()
    g = torch.Generator().manual_seed(0)
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        run(torch.rand(4, 3, size, size, generator=g, dtype=dtype))
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()


@functools.lru_cache(maxsize=None)
def segmenter(name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    build = getattr(segmentation, name)
    model = build(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    return calibrated(model.to(dtype), model, 32)


@functools.lru_cache(maxsize=None)
def segmentation_case(name: str) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, tuple]]:
    r"""Images, the model's predicted labels and the spatial size of each layer."""
    model = segmenter(name)
    x = make_images(2, 32).float()
    sizes: Dict[str, tuple] = {}
    layers = {"gradient": SEGMENTERS[name][0](model), "few": SEGMENTERS[name][1](model)}
    def record(kind):
        def hook(module, inputs, output):
            sizes[kind] = tuple(output.shape[2:])
        return hook

    handles = [layer.register_forward_hook(record(k)) for k, layer in layers.items()]
    try:
        labels = SegmentationTarget(model).predicted_labels(x)
    finally:
        for handle in handles:
            handle.remove()
    return x, labels, sizes


def most_frequent(labels: torch.Tensor) -> list:
    return [int(row.flatten().mode().values) for row in labels]


@pytest.mark.filterwarnings("error::captum_xcam.WholeModelReplayWarning")  # split at the layer
@pytest.mark.parametrize("cam_class", METHODS, ids=lambda c: c.method_info.key)
@pytest.mark.parametrize("name", list(SEGMENTERS))
def test_every_method_explains_a_segment(name, cam_class):
    model = segmenter(name)
    gradient_layer, few_channels = SEGMENTERS[name]
    few = cam_class in PERTURBATION + GRADIENT_FREE
    layer = few_channels(model) if few else gradient_layer(model)
    x, predicted, sizes = segmentation_case(name)
    assert predicted.shape == (2, 32, 32) and predicted.dtype == torch.long
    user_mask = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    user_mask[:, :, 8:24, 4:20] = True
    seg = SegmentationTarget(model)
    for mask in (user_mask, predicted):
        attr = cam_class(seg, layer).attribute(
            x, target=target_for(cam_class, most_frequent(predicted)),
            additional_forward_args=(mask,), **quick(cam_class))
        assert attr.shape == (2, 1, *sizes["few" if few else "gradient"])
        assert torch.isfinite(attr).all() and (attr != 0).any(), mask.dtype


def grad_cam_by_hand(model, layer, x, c, mask):
    r"""Grad-CAM with an own forward hook and torch.autograd.grad of the class
    logits summed over each example's pixels."""
    maps = []
    for i in range(len(x)):
        seen = []
        handle = layer.register_forward_hook(lambda m, inp, out: seen.append(out))
        try:
            logits = model(x[i:i + 1])["out"][0, c]
        finally:
            handle.remove()
        (gradient,) = torch.autograd.grad(logits[mask[i]].sum(), seen[0])
        maps.append((gradient.mean((2, 3), keepdim=True) * seen[0]).sum(1).detach())
    return torch.stack(maps)


def test_grad_cam_of_a_segment_matches_a_hand_computation():
    model = segmenter("fcn_resnet50", torch.float64)
    x = make_images(2, 32)
    seg = SegmentationTarget(model)
    user_mask = torch.zeros(2, 32, 32, dtype=torch.bool)
    user_mask[0, 4:12, 4:30] = True
    user_mask[1, 20:30, 2:9] = True
    labels = seg.predicted_labels(x)
    cam = LayerGradCam(seg, model.backbone.layer4)
    for c in range(NUM_CLASSES):
        for pixels, mask in ((user_mask, user_mask), (labels == c, labels)):
            expected = grad_cam_by_hand(model, model.backbone.layer4, x, c, pixels)
            attr = cam.attribute(x, target=c, additional_forward_args=(mask,))
            torch.testing.assert_close(attr, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cam_class", [LayerGradCam, LayerXGradCam, LayerHiResCam])
def test_maps_are_linear_in_the_mask(cam_class):
    r"""For a map linear in the gradient, a segment's map is the sum of its
    pixels' maps (each pixel a one-pixel mask on its own copy of the image)."""
    model = segmenter("lraspp_mobilenet_v3_large", torch.float64)
    x = make_images(1, 32)
    pixels = [(3, 4), (10, 20), (25, 7), (30, 31)]
    single = torch.zeros(len(pixels), 32, 32, dtype=torch.bool)
    for row, (i, j) in enumerate(pixels):
        single[row, i, j] = True
    cam = cam_class(SegmentationTarget(model), model.backbone["16"])
    per_pixel = cam.attribute(x.expand(len(pixels), -1, -1, -1), target=1,
                              additional_forward_args=(single,))
    segment = cam.attribute(x, target=1, additional_forward_args=(single.any(0, keepdim=True),))
    assert per_pixel.abs().amax() > 0
    torch.testing.assert_close(segment, per_pixel.sum(0, keepdim=True), rtol=1e-10, atol=1e-12)


def test_predicted_labels_leave_the_model_as_found():
    model = segmenter("lraspp_mobilenet_v3_large")
    x = make_images(2, 32).float()
    with torch.no_grad():
        assert torch.equal(SegmentationTarget(model).predicted_labels(x), model(x)["out"].argmax(1))
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    model.train()
    try:
        SegmentationTarget(model).predicted_labels(x)
        assert model.training and torch.equal(bn.running_mean, before)
    finally:
        model.eval()


# --- detection ----------------------------------------------------------------------------


def faster_rcnn() -> nn.Module:
    # The MobileNet version: its backbone costs a fraction of ResNet-50's. Few
    # proposals keep the box head (a 12544 x 1024 linear layer per box) cheap.
    return detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, min_size=64,
        max_size=64, box_score_thresh=0.0, rpn_pre_nms_top_n_test=20,
        rpn_post_nms_top_n_test=10, box_detections_per_img=10)


def retinanet() -> nn.Module:
    return detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, min_size=64,
        max_size=64, score_thresh=0.0, topk_candidates=20, detections_per_img=10)


def ssdlite() -> nn.Module:
    model = detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, score_thresh=0.0,
        topk_candidates=20, detections_per_img=10)
    model.transform.fixed_size = (96, 96)  # not 320 x 320: cheaper, same code paths
    return model


# name -> (builder, gradient layer, few-channel layer, its input rather than output?)
# RetinaNet's ResNet-50 has no layer of fewer than 64 channels; the input of its first
# conv, the resized and normalised image (3 channels), keeps its replays cheap.
DETECTORS: Dict[str, Tuple[Callable, Callable, Callable, bool]] = {
    "fasterrcnn_mobilenet_v3_large_fpn": (
        faster_rcnn, lambda m: m.backbone.body["16"], lambda m: m.backbone.body["0"], False),
    "retinanet_resnet50_fpn": (
        retinanet, lambda m: m.backbone.body.layer4, lambda m: m.backbone.body.conv1, True),
    "ssdlite320_mobilenet_v3_large": (
        ssdlite, lambda m: m.backbone.features[0], lambda m: m.backbone.features[0][0], False),
}


@functools.lru_cache(maxsize=None)
def detector(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = DETECTORS[name][0]()

    def run(images):
        features = model.backbone(model.transform(list(images))[0].tensors)
        if isinstance(model, detection.ssd.SSD):
            model.head(list(features.values()))

    return calibrated(model, run, 64)


def detection_images() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


#: What LIFT-CAM does on each detector (None: it works). Its DeepLift runs
#: through the whole detector (torch.fx cannot trace one).
LIFT_CAM_FAILS = {
    "retinanet_resnet50_fpn": "a nonlinear module after the layer is called more than once",
}


@pytest.mark.filterwarnings("ignore::captum_xcam.WholeModelReplayWarning")
@pytest.mark.filterwarnings("ignore::captum_xcam.LiftCompletenessWarning")
@pytest.mark.parametrize("cam_class", METHODS, ids=lambda c: c.method_info.key)
@pytest.mark.parametrize("name", list(DETECTORS))
def test_every_method_explains_a_detection(name, cam_class):
    model = detector(name)
    _, gradient_layer, few_channels, to_input = DETECTORS[name]
    cheap = cam_class in PERTURBATION + GRADIENT_FREE
    layer = few_channels(model) if cheap else gradient_layer(model)
    x = detection_images()
    # IoU threshold 0, the closest detection of the label: a random detector's
    # boxes move far when its image is masked (none is left at IoU >= 0.1).
    det = DetectionTarget(model, iou_threshold=0.0)
    boxes, labels = det.top_detections(x)
    assert boxes.shape == (2, 4) and labels.shape == (2,)
    assert (det(x, boxes, labels) > 0).all()
    cam = cam_class(det, layer)
    explain = functools.partial(
        cam.attribute, x, additional_forward_args=(boxes, labels),
        attribute_to_layer_input=cheap and to_input, **quick(cam_class))
    if cam_class is LayerLiftCam and name in LIFT_CAM_FAILS:
        with pytest.raises(ValueError, match=LIFT_CAM_FAILS[name]):
            explain()
        return
    attr = explain()
    assert attr.shape[:2] == (2, 1) and attr.dim() == 4
    assert torch.isfinite(attr).all() and (attr != 0).any()


class FakeDetector(nn.Module):
    r"""Fixed detections for every image, scores scaled by the image's mean so
    that they are on the autograd graph."""

    def __init__(self, detections):
        super().__init__()
        self.detections = detections

    def forward(self, images):
        return [
            {**d, "scores": d["scores"] * image.mean()}
            for d, image in zip(self.detections, images)
        ]


def fake_detector() -> FakeDetector:
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],   # label 1, IoU 10/12 with the query, score 0.9
        [0.0, 0.0, 10.0, 12.0],   # label 1, IoU 1, score 0.3
        [0.0, 0.0, 10.0, 12.0],   # label 2, IoU 1, score 0.8
        [30.0, 30.0, 40.0, 40.0],  # label 1, far away, score 0.7
    ])
    labels = torch.tensor([1, 1, 2, 1])
    scores = torch.tensor([0.9, 0.3, 0.8, 0.7])
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
             "scores": torch.zeros(0)}
    return FakeDetector([{"boxes": boxes, "labels": labels, "scores": scores}, empty]).eval()


def test_detection_target_matches_by_label_and_largest_iou():
    det = DetectionTarget(fake_detector())
    images = torch.ones(2, 3, 8, 8, requires_grad=True)
    query = torch.tensor([[0.0, 0.0, 10.0, 12.0]] * 2)

    def scored(box, label, threshold=0.5, image=0):
        det.iou_threshold = threshold
        return det(images, torch.stack([torch.tensor(box), query[1]]),
                   torch.tensor([label, 1]))[image]

    def score(*args, **kwargs):
        return float(scored(*args, **kwargs).detach())

    assert score([0.0, 0.0, 10.0, 12.0], 1) == pytest.approx(0.3)  # largest IoU, not score
    assert score([0.0, 0.0, 10.0, 12.0], 2) == pytest.approx(0.8)  # its own label only
    assert score([0.0, 0.0, 10.0, 10.0], 1) == pytest.approx(0.9)
    assert score([30.0, 30.0, 40.0, 40.0], 1) == pytest.approx(0.7)
    assert score([0.0, 0.0, 10.0, 12.0], 1, threshold=1.0) == pytest.approx(0.3)  # inclusive
    assert score([0.0, 0.0, 10.0, 13.0], 1, threshold=0.95) == 0  # best IoU 12/13
    assert score([0.0, 0.0, 10.0, 12.0], 3) == 0  # no detection of the label
    assert score([50.0, 50.0, 60.0, 60.0], 1) == 0  # no overlap
    assert score([0.0, 0.0, 10.0, 12.0], 1, image=1) == 0  # an image without detections
    unmatched = matched_score(det.model(images)[0], query[0], torch.tensor(3), 0.5)
    assert unmatched == 0 and not unmatched.requires_grad  # a constant, off the graph
    matched = scored([0.0, 0.0, 10.0, 12.0], 1)
    (gradient,) = torch.autograd.grad(matched, images)
    assert gradient[0].abs().sum() > 0 and gradient[1].abs().sum() == 0


def test_detection_target_errors():
    det = DetectionTarget(fake_detector())
    images = torch.ones(2, 3, 8, 8)
    boxes, labels = torch.zeros(2, 4), torch.ones(2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"found nothing in image 1: lower its score threshold"):
        det.top_detections(images)
    with pytest.raises(ValueError, match=r"one xyxy box \(2, 4\) and one label \(2,\)"):
        det(images, boxes[:1], labels)
    with pytest.raises(ValueError, match=r"one xyxy box"):
        det(images, boxes, labels.reshape(2, 1))
    det.model.train()
    with pytest.raises(ValueError, match=r"train mode.*call model.eval\(\)"):
        det(images, boxes, labels)
    with pytest.raises(TypeError, match=r"one dict of boxes, labels and scores per image"):
        DetectionTarget(nn.Identity().eval())(images, boxes, labels)


def test_top_detections_are_the_highest_scores():
    model = fake_detector()
    model.detections = model.detections[:1] * 2
    boxes, labels = DetectionTarget(model).top_detections(torch.ones(2, 3, 8, 8))
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 2))
    assert labels.tolist() == [1, 1]


# --- multi-label and regression -----------------------------------------------------------


@pytest.mark.filterwarnings("ignore::captum_xcam.WholeModelReplayWarning")
@pytest.mark.parametrize("cam_class", METHODS, ids=lambda c: c.method_info.key)
def test_multi_label_target_is_the_sigmoid(cam_class):
    model, layer = make_tiny()
    x = make_images(2, 32)
    target = target_for(cam_class, [3, 7])
    attr = cam_class(MultiLabelTarget(model), layer).attribute(x, target=target, **quick(cam_class))
    expected = cam_class(lambda inp: torch.sigmoid(model(inp)), layer).attribute(
        x, target=target, **quick(cam_class))
    assert (attr != 0).any()
    torch.testing.assert_close(attr, expected, rtol=1e-9, atol=1e-12)


class TwoHeads(nn.Module):
    r"""A regressor returning a dict: one value ``age`` (N,) and three ``pose`` (N, 3)."""

    def __init__(self):
        super().__init__()
        self.net, self.layer = make_tiny()

    def forward(self, x):
        values = self.net(x)
        return {"age": values[:, 0], "pose": values[:, 1:4]}


@pytest.mark.filterwarnings("ignore::captum_xcam.WholeModelReplayWarning")
@pytest.mark.parametrize("cam_class", METHODS, ids=lambda c: c.method_info.key)
def test_regression_target_is_the_value(cam_class):
    model = TwoHeads()
    x = make_images(2, 32)
    for key, target in (("age", None), ("pose", 2)):
        attr = cam_class(RegressionTarget(model, key=key), model.layer).attribute(
            x, target=target_for(cam_class, target), **quick(cam_class))
        expected = cam_class(lambda inp: model(inp)[key], model.layer).attribute(
            x, target=target_for(cam_class, target), **quick(cam_class))
        assert (attr != 0).any()
        torch.testing.assert_close(attr, expected, rtol=1e-9, atol=1e-12)
    assert RegressionTarget(model, key="age")(x).shape == (2, 1)


def test_wrappers_keep_the_model_reachable():
    model, layer = make_tiny()
    with pytest.raises(ValueError, match="not a submodule"):
        LayerGradCam(MultiLabelTarget(model), nn.Conv2d(3, 3, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", WholeModelReplayWarning)
        warnings.simplefilter("error", LiftCompletenessWarning)
        LayerLiftCam(RegressionTarget(model), layer).attribute(make_images(2, 32), target=1)
