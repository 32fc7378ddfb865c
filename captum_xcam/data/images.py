r"""Image files: finding them in folders and reading them as tensors."""
import os
from pathlib import Path
from typing import Iterable, List, Union

from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms.functional import pil_to_tensor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def find_images(paths: Iterable[Union[str, Path]]) -> List[Path]:
    r"""
    The image files named by ``paths``, in a deterministic order: a file as it
    is; a folder as the files with an image suffix (:data:`IMAGE_SUFFIXES`, any
    case) in it and in its subfolders, recursively, sorted by their path
    inside the folder (component by component, so a subfolder's files stay
    together), skipping hidden files and folders (names starting with ".",
    such as macOS's ``._photo.jpg``) and not following links to folders. A
    file named twice is listed once, where it first appears.

    Raises:
        FileNotFoundError: for a path that does not exist.
        ValueError: for a folder without images, or no paths at all.
    """
    found: List[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            images: List[Path] = []
            for parent, folders, names in os.walk(path):
                folders[:] = [name for name in folders if not name.startswith(".")]
                images.extend(Path(parent, name) for name in names if not name.startswith(".")
                              and Path(name).suffix.lower() in IMAGE_SUFFIXES)
            images.sort(key=lambda image: image.relative_to(path).parts)
            if not images:
                raise ValueError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in the folder "
                                 f"{path} or its subfolders.")
            found.extend(images)
        elif path.exists():
            found.append(path)
        else:
            raise FileNotFoundError(f"No such file or folder: {path}")
    if not found:
        raise ValueError("No images given.")
    seen, unique = set(), []
    for path in found:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    return unique


def read_image(path: Union[str, Path]) -> Tensor:
    r"""
    An image file as a uint8 RGB tensor (3, H, W), read with Pillow (any
    format it knows; greyscale, palette and alpha images are converted).

    Raises:
        ValueError: for a file that is not a readable image.
    """
    try:
        with Image.open(path) as image:
            return pil_to_tensor(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"Cannot read {path} as an image: {error}") from None
