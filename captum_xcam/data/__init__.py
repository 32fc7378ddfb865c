"""Data sets generated in code, for tests, benchmarks and tutorials, and image files."""
from captum_xcam.data.images import IMAGE_SUFFIXES, find_images, read_image
from captum_xcam.data.photos import Photo, sample_photos
from captum_xcam.data.scenes import SCALE_NAMES, SceneObjects, SceneSet, make_scenes
from captum_xcam.data.synthetic import CLASS_NAMES, SyntheticSet, make_synthetic

__all__ = [
    "CLASS_NAMES",
    "IMAGE_SUFFIXES",
    "Photo",
    "SCALE_NAMES",
    "SceneObjects",
    "SceneSet",
    "SyntheticSet",
    "find_images",
    "make_scenes",
    "make_synthetic",
    "read_image",
    "sample_photos",
]
