r"""A synthetic image data set whose right answers are known.

Each image holds one *object* whose shape decides the class (a disk, a
square, a triangle or a cross, each at a random position, size, rotation and
colour) drawn over clutter: a smooth random background, pixel noise, and
*distractors* (line segments and rings) in the same colours as the objects.
Only the object's shape tells the classes apart, so a faithful explanation of
a model that solved the task should point at the object: the set carries the
object's pixel mask and bounding box as ground truth for localisation metrics.

Everything is drawn with ``torch`` on the CPU from one
:class:`torch.Generator`, so a seed gives the same images on every run.
"""
import math
from dataclasses import dataclass
from typing import Sequence, Tuple, Union

import torch
from torch import Tensor
from torchvision.ops import masks_to_boxes

CLASS_NAMES: Tuple[str, ...] = ("disk", "square", "triangle", "cross")


@dataclass
class SyntheticSet:
    r"""
    A batch of synthetic examples, every field indexed by example.

    Attributes:
        images (Tensor): (N, 3, H, W) float32 images with values in [0, 1].
        labels (Tensor): (N,) int64 class of each image, an index into
                    ``class_names``.
        masks (Tensor): (N, H, W) bool pixel mask of the object that decides
                    the class (the visible part of it: nothing is drawn over it).
        boxes (Tensor): (N, 4) float32 box of each mask as
                    ``(x_min, y_min, x_max, y_max)`` in pixel indices, both
                    ends included, as :func:`torchvision.ops.masks_to_boxes`
                    returns.
        class_names (tuple[str, ...]): Name of each class.
    """

    images: Tensor
    labels: Tensor
    masks: Tensor
    boxes: Tensor
    class_names: Tuple[str, ...] = CLASS_NAMES

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        r"""``(image, label)``, so that the set works with a DataLoader."""
        return self.images[index], self.labels[index]

    def subset(self, indices: Union[Sequence[int], Tensor, slice]) -> "SyntheticSet":
        r"""The examples at ``indices`` as a new set."""
        if not isinstance(indices, slice):
            indices = torch.as_tensor(indices, dtype=torch.long)
        return SyntheticSet(
            self.images[indices],
            self.labels[indices],
            self.masks[indices],
            self.boxes[indices],
            self.class_names,
        )


def make_synthetic(n: int, seed: int = 0, size: int = 64) -> SyntheticSet:
    r"""
    Generates ``n`` examples, the same for the same ``(n, seed, size)``; the
    first ``m`` examples of a set do not depend on ``n``, so a smaller set is
    a prefix of a larger one with the same seed.

    Classes are balanced: example ``i`` has class ``i % 4``, shuffled by the
    seed. Objects span roughly a quarter to a half of the image side.

    Args:
        n (int): Number of examples.
        seed (int, optional): Seed of the random generator. Default: 0
        size (int, optional): Height and width of the images, at least 32.
                    Default: 64

    Returns:
        :class:`SyntheticSet` with images (n, 3, size, size), labels, masks
        and boxes.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}.")
    if not isinstance(size, int) or size < 32:
        raise ValueError(f"size must be an int of at least 32, got {size!r}.")
    generator = torch.Generator().manual_seed(seed)
    images, labels, masks = [], [], []
    for i in range(n):
        label = _class_of(i, seed)
        image, mask = _draw_example(label, size, generator)
        images.append(image)
        labels.append(label)
        masks.append(mask)
    mask_tensor = torch.stack(masks)
    return SyntheticSet(
        images=torch.stack(images),
        labels=torch.tensor(labels, dtype=torch.long),
        masks=mask_tensor,
        boxes=masks_to_boxes(mask_tensor).to(torch.float32),
    )


def _class_of(i: int, seed: int) -> int:
    r"""Balanced classes: each block of 4 examples holds every class once, in
    an order drawn from the seed and the block's index."""
    block = torch.Generator().manual_seed(seed * 1_000_003 + i // len(CLASS_NAMES))
    order = torch.randperm(len(CLASS_NAMES), generator=block)
    return int(order[i % len(CLASS_NAMES)])


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _grid(size: int) -> Tuple[Tensor, Tensor]:
    r"""Pixel-centre coordinates ``(y, x)``, each (size, size)."""
    coords = torch.arange(size, dtype=torch.float32)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    return y, x


def _rotated(y: Tensor, x: Tensor, cy: float, cx: float, angle: float) -> Tuple[Tensor, Tensor]:
    r"""Coordinates relative to ``(cy, cx)`` in a frame rotated by ``angle``."""
    dy, dx = y - cy, x - cx
    c, s = math.cos(angle), math.sin(angle)
    return c * dy - s * dx, s * dy + c * dx


def shape_mask(label: int, size: int, cy: float, cx: float, radius: float, angle: float) -> Tensor:
    r"""
    The (size, size) bool mask of a class's shape, every point of which lies
    within ``radius`` of the centre:

    - 0 disk: distance to the centre at most ``radius``;
    - 1 square: half-side ``0.7 radius`` (half-diagonal ``0.99 radius``);
    - 2 triangle: equilateral, circumradius ``radius``;
    - 3 cross: two bars of half-length ``radius`` and half-width ``radius / 3``.
    """
    y, x = _grid(size)
    u, v = _rotated(y, x, cy, cx, angle)
    if label == 0:
        return u**2 + v**2 <= radius**2
    if label == 1:
        half = 0.7 * radius
        return (u.abs() <= half) & (v.abs() <= half)
    if label == 2:
        return _triangle(u, v, radius)
    if label == 3:
        width = radius / 3
        bar_u = (u.abs() <= radius) & (v.abs() <= width)
        bar_v = (v.abs() <= radius) & (u.abs() <= width)
        return bar_u | bar_v
    raise ValueError(f"Unknown class {label}.")


def _triangle(u: Tensor, v: Tensor, radius: float) -> Tensor:
    r"""Equilateral triangle: inside when the projections on the three edge
    normals are at most the inradius, ``radius / 2``."""
    inside = torch.ones_like(u, dtype=torch.bool)
    for k in range(3):
        normal = 2 * math.pi * k / 3
        inside &= u * math.cos(normal) + v * math.sin(normal) <= radius / 2
    return inside


def _colour(generator: torch.Generator) -> Tensor:
    r"""A bright random colour (3,): every channel in [0.35, 1], one at least 0.8."""
    colour = 0.35 + 0.65 * torch.rand(3, generator=generator)
    brightest = int(torch.randint(3, (), generator=generator))
    colour[brightest] = _uniform(generator, 0.8, 1.0)
    return colour


def _background(size: int, generator: torch.Generator) -> Tensor:
    r"""A dark smooth colour gradient plus pixel noise, (3, size, size) in [0, 0.45]."""
    y, x = _grid(size)
    corners = 0.3 * torch.rand(3, 2, 2, generator=generator)
    ty, tx = y / (size - 1), x / (size - 1)
    smooth = (
        corners[:, 0, 0, None, None] * (1 - ty) * (1 - tx)
        + corners[:, 0, 1, None, None] * (1 - ty) * tx
        + corners[:, 1, 0, None, None] * ty * (1 - tx)
        + corners[:, 1, 1, None, None] * ty * tx
    )
    noise = 0.15 * torch.rand(3, size, size, generator=generator)
    return smooth + noise


def _segment(size: int, generator: torch.Generator) -> Tensor:
    r"""A line segment of length ``size / 6`` to ``size / 2.5``, about 2 px wide."""
    y, x = _grid(size)
    y0, x0 = _uniform(generator, 0, size - 1), _uniform(generator, 0, size - 1)
    length = _uniform(generator, size / 6, size / 2.5)
    angle = _uniform(generator, 0, math.pi)
    u, v = _rotated(y, x, y0, x0, angle)
    return (u.abs() <= 1.0) & (v >= 0) & (v <= length)


def _ring(size: int, generator: torch.Generator) -> Tensor:
    r"""A thin ring of radius ``size / 16`` to ``size / 8``."""
    y, x = _grid(size)
    cy, cx = _uniform(generator, 0, size - 1), _uniform(generator, 0, size - 1)
    radius = _uniform(generator, size / 16, size / 8)
    squared = (y - cy) ** 2 + (x - cx) ** 2
    return (squared >= (radius - 0.9) ** 2) & (squared <= (radius + 0.9) ** 2)


def clutter(size: int, generator: torch.Generator) -> Tensor:
    r"""The clutter every example is drawn over, (3, size, size) in [0, 1]:
    :func:`_background`, then 3 to 6 distractors (line segments or rings,
    even odds) in the objects' colours."""
    image = _background(size, generator)
    for _ in range(int(torch.randint(3, 7, (), generator=generator))):
        draw = _segment if bool(torch.rand((), generator=generator) < 0.5) else _ring
        distractor = draw(size, generator)
        image = torch.where(distractor, _colour(generator)[:, None, None], image)
    return image


def _draw_example(label: int, size: int, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    r"""One image (3, size, size) and its object mask (size, size): the
    :func:`clutter`, then the object on top of everything."""
    image = clutter(size, generator)
    radius = _uniform(generator, size / 8, size / 4.5)
    margin = radius + 1
    cy = _uniform(generator, margin, size - 1 - margin)
    cx = _uniform(generator, margin, size - 1 - margin)
    angle = _uniform(generator, 0, 2 * math.pi)
    mask = shape_mask(label, size, cy, cx, radius, angle)
    image = torch.where(mask, _colour(generator)[:, None, None], image)
    return image.clamp(0, 1), mask
