r"""Scenes with one or two objects at three scales, for benchmarks that ask
whether a map separates two objects and resolves a small one.

Each scene is drawn over the same clutter as :func:`make_synthetic` (a smooth
background, pixel noise, 3 to 6 distractors), then holds one object or two of
*different* classes, each at its own scale:

======== ================================ ==============================
scale    radius at image side ``s``       at ``s = 64``
======== ================================ ==============================
small    ``s / 16`` to ``s / 11``         4 to 5.8 px (about one 8x8 CAM
                                          cell, ``s / 8``, wide)
medium   ``s / 8`` to ``s / 5.5``         8 to 11.6 px
large    ``s / 5`` to ``s / 4``           12.8 to 16 px
======== ================================ ==============================

(``radius`` as in :func:`~captum_xcam.data.synthetic.shape_mask`: every point
of the shape lies within it of the centre.) Two objects never overlap: their
positions are redrawn until the masks are at least :data:`GAP` pixels apart,
so each mask is exactly the pixels of its object's colour.

Balance, per block of :data:`BLOCK` consecutive scenes (shuffled by the seed
and the block's index, so that a scene does not depend on ``n``): half the
scenes hold two objects; the 12 single objects are the 12 (class, scale)
pairs once each; the 12 pairs are the 12 ordered pairs of different classes
once each, and each class's 6 objects among them take each scale twice. Every
(class, scale) pair thus occurs 3 times per block.
"""
import math
from dataclasses import dataclass
from typing import List, NamedTuple, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import masks_to_boxes

from captum_xcam.data.synthetic import CLASS_NAMES, _colour, _uniform, clutter, shape_mask

SCALE_NAMES: Tuple[str, ...] = ("small", "medium", "large")
# Radius range of each scale as fractions (low, high) of the image side.
SCALE_RADII: Tuple[Tuple[float, float], ...] = ((1 / 16, 1 / 11), (1 / 8, 1 / 5.5), (1 / 5, 1 / 4))
GAP = 2  # background pixels at least between two objects, along rows, columns, diagonals
BLOCK = 24  # scenes per balanced block
MAX_ATTEMPTS = 10_000  # placements tried before giving up on a scene


class SceneObjects(NamedTuple):
    r"""
    One row per object of every scene, in scene order then object order.

    Attributes:
        scene (Tensor): (M,) int64 index of the object's scene (its image).
        target (Tensor): (M,) int64 class of the object.
        mask (Tensor): (M, H, W) bool mask of the object.
        box (Tensor): (M, 4) float32 box of the mask, as in :class:`SceneSet`.
        other_mask (Tensor): (M, H, W) bool mask of the scene's other
                    object, all False when the object is alone.
        scale (Tensor): (M,) int64 scale of the object, an index into
                    :data:`SCALE_NAMES`.
        two_objects (Tensor): (M,) bool whether the scene holds two objects.
    """

    scene: Tensor
    target: Tensor
    mask: Tensor
    box: Tensor
    other_mask: Tensor
    scale: Tensor
    two_objects: Tensor


@dataclass
class SceneSet:
    r"""
    A batch of scenes, every field indexed by scene, then by object (0, 1).

    Attributes:
        images (Tensor): (N, 3, H, W) float32 images with values in [0, 1].
        labels (Tensor): (N, 2) int64 class of each object, an index into
                    ``class_names``; -1 where there is no second object.
        masks (Tensor): (N, 2, H, W) bool pixel mask of each object (nothing
                    is drawn over an object); all False where absent.
        boxes (Tensor): (N, 2, 4) float32 box of each mask as
                    ``(x_min, y_min, x_max, y_max)``, both ends included, as
                    :func:`torchvision.ops.masks_to_boxes` returns; zeros
                    where absent.
        scales (Tensor): (N, 2) int64 scale of each object, an index into
                    :data:`SCALE_NAMES`; -1 where absent.
        class_names (tuple[str, ...]): Name of each class.
    """

    images: Tensor
    labels: Tensor
    masks: Tensor
    boxes: Tensor
    scales: Tensor
    class_names: Tuple[str, ...] = CLASS_NAMES

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def two_objects(self) -> Tensor:
        r"""(N,) bool whether each scene holds two objects."""
        return self.labels[:, 1] >= 0

    def subset(self, indices: Union[Sequence[int], Tensor, slice]) -> "SceneSet":
        r"""The scenes at ``indices`` as a new set."""
        if not isinstance(indices, slice):
            indices = torch.as_tensor(indices, dtype=torch.long)
        return SceneSet(
            self.images[indices],
            self.labels[indices],
            self.masks[indices],
            self.boxes[indices],
            self.scales[indices],
            self.class_names,
        )

    def label_distribution(self) -> Tensor:
        r"""
        (N, num_classes) float32 soft labels: 1 on the class of a single
        object, 1/2 on each class of two,

        .. math::
            p_{n,c} = \frac{|\{j : \text{labels}_{n,j} = c\}|}{|\{j : \text{labels}_{n,j} \ge 0\}|}
        """
        present = self.labels >= 0
        one_hot = F.one_hot(self.labels.clamp(min=0), len(self.class_names)).float()
        counts = (one_hot * present[..., None]).sum(1)
        return counts / present.sum(1, keepdim=True)

    def objects(self) -> SceneObjects:
        r"""Every object as a row of a :class:`SceneObjects`, with the mask of
        its scene's other object, in scene order then object order."""
        present = self.labels >= 0
        scene = torch.arange(len(self))[:, None].expand_as(self.labels)[present]
        other = self.masks.flip(1)[present]
        return SceneObjects(
            scene=scene,
            target=self.labels[present],
            mask=self.masks[present],
            box=self.boxes[present],
            other_mask=other,
            scale=self.scales[present],
            two_objects=self.two_objects[scene],
        )


def make_scenes(n: int, seed: int = 0, size: int = 64) -> SceneSet:
    r"""
    Generates ``n`` scenes, the same for the same ``(n, seed, size)``; the
    first ``m`` scenes of a set do not depend on ``n``, so a smaller set is a
    prefix of a larger one with the same seed. Classes, scales and the number
    of objects are balanced per block of :data:`BLOCK` scenes (see the module
    docstring).

    Args:
        n (int): Number of scenes.
        seed (int, optional): Seed of the random generator. Default: 0
        size (int, optional): Height and width of the images, at least 32.
                    Default: 64

    Returns:
        :class:`SceneSet` with images (n, 3, size, size) and per-object
        labels, masks, boxes and scales (n, 2, ...).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}.")
    if not isinstance(size, int) or isinstance(size, bool) or size < 32:
        raise ValueError(f"size must be an int of at least 32, got {size!r}.")
    generator = torch.Generator().manual_seed(seed)
    plans = _plans(n, seed)
    images, masks = zip(*(_draw_scene(plan, size, generator) for plan in plans))
    labels = torch.full((n, 2), -1, dtype=torch.long)
    scales = torch.full((n, 2), -1, dtype=torch.long)
    for i, plan in enumerate(plans):
        for j, (label, scale) in enumerate(plan):
            labels[i, j], scales[i, j] = label, scale
    mask_tensor = torch.stack(masks)
    return SceneSet(
        images=torch.stack(images),
        labels=labels,
        masks=mask_tensor,
        boxes=_boxes(mask_tensor),
        scales=scales,
    )


Plan = List[Tuple[int, int]]  # (class, scale) of each object of a scene


def _plans(n: int, seed: int) -> List[Plan]:
    r"""The objects of the first ``n`` scenes, block by block."""
    plans: List[Plan] = []
    for block in range(math.ceil(n / BLOCK)):
        plans.extend(_block_plans(seed, block))
    return plans[:n]


def _block_plans(seed: int, block: int) -> List[Plan]:
    r"""One balanced block of :data:`BLOCK` scenes, shuffled by a generator
    of its own (``seed`` and ``block``), as the module docstring describes."""
    g = torch.Generator().manual_seed(seed * 1_000_033 + block)
    num_classes, num_scales = len(CLASS_NAMES), len(SCALE_NAMES)
    singles = [[(c, s)] for c in range(num_classes) for s in range(num_scales)]
    pairs = [(a, b) for a in range(num_classes) for b in range(num_classes) if a != b]
    slot_scales = {}  # (pair index, position) -> scale
    for c in range(num_classes):
        slots = [(p, j) for p, pair in enumerate(pairs) for j in range(2) if pair[j] == c]
        cycle = [k % num_scales for k in range(len(slots))]
        for slot, k in zip(slots, torch.randperm(len(slots), generator=g).tolist()):
            slot_scales[slot] = cycle[k]
    doubles = [[(a, slot_scales[p, 0]), (b, slot_scales[p, 1])] for p, (a, b) in enumerate(pairs)]
    scenes = singles + doubles
    return [scenes[k] for k in torch.randperm(len(scenes), generator=g).tolist()]


def _draw_scene(plan: Plan, size: int, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    r"""One image (3, size, size) and its two object masks (2, size, size):
    the clutter, then the objects placed apart, drawn on top of everything."""
    image = clutter(size, generator)
    radii = [size * _uniform(generator, *SCALE_RADII[scale]) for _, scale in plan]
    angles = [_uniform(generator, 0, 2 * math.pi) for _ in plan]
    masks = _place(plan, radii, angles, size, generator)
    for mask in masks:
        image = torch.where(mask, _colour(generator)[:, None, None], image)
    while len(masks) < 2:
        masks.append(torch.zeros(size, size, dtype=torch.bool))
    return image.clamp(0, 1), torch.stack(masks)


def _place(
    plan: Plan, radii: List[float], angles: List[float], size: int, generator: torch.Generator
) -> List[Tensor]:
    r"""The objects' masks at random positions inside the image (the shape
    within ``radius + 1`` of the border at most), all positions redrawn until
    no two masks come within :data:`GAP` pixels of each other."""
    for _ in range(MAX_ATTEMPTS):
        masks = []
        for (label, _), radius, angle in zip(plan, radii, angles):
            margin = radius + 1
            cy = _uniform(generator, margin, size - 1 - margin)
            cx = _uniform(generator, margin, size - 1 - margin)
            masks.append(shape_mask(label, size, cy, cx, radius, angle))
        if len(masks) < 2 or not (_dilate(masks[0], GAP) & masks[1]).any():
            return masks
    raise RuntimeError(f"Could not place {len(plan)} objects apart in {MAX_ATTEMPTS} attempts.")


def _dilate(mask: Tensor, pixels: int) -> Tensor:
    r"""The pixels within ``pixels`` of ``mask`` along rows, columns and
    diagonals (Chebyshev distance), the mask included."""
    kernel = 2 * pixels + 1
    return F.max_pool2d(mask[None, None].float(), kernel, stride=1, padding=pixels)[0, 0] > 0


def _boxes(masks: Tensor) -> Tensor:
    r"""(N, 2, 4) boxes of (N, 2, H, W) masks, zeros for empty masks."""
    flat = masks.flatten(0, 1)
    boxes = torch.zeros(flat.shape[0], 4)
    present = flat.flatten(1).any(1)
    boxes[present] = masks_to_boxes(flat[present]).to(torch.float32)
    return boxes.reshape(*masks.shape[:2], 4)
