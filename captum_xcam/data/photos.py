r"""Real photos that installed packages ship, for explaining an ImageNet model
offline: no download, ever.

Each photo's terms are the ones its package states in its own files:

============  =====================================  =========================================
photo         package and file                       terms, and where they are stated
============  =====================================  =========================================
cat           scikit-image ``data/chelsea.png``      CC0, Stefan van der Walt (docstring of
                                                     ``skimage.data.chelsea``)
coffee        scikit-image ``data/coffee.png``       CC0, Rachel Michetti, courtesy of Pikolo
                                                     Espresso Bar (``skimage.data.coffee``)
rocket        scikit-image ``data/rocket.jpg``       public domain, SpaceX: DSCOVR on Falcon 9
                                                     (``skimage.data.rocket``)
astronaut     scikit-image ``data/astronaut.png``    public domain, NASA: Eileen Collins
                                                     (``skimage.data.astronaut``)
china         scikit-learn ``datasets/images/        CC BY 2.0, danielbuechele on Flickr
              china.jpg``                            (``datasets/images/README.txt``)
flower        scikit-learn ``datasets/images/        CC BY 2.0, vultilion on Flickr (the
              flower.jpg``                           README's link; its attribution line
                                                     repeats danielbuechele)
grace_hopper  matplotlib ``mpl-data/sample_data/     public domain: official U.S. Navy portrait
              grace_hopper.jpg``                     of Commodore Grace M. Hopper, 1984; the
                                                     file's JPEG comment names its source,
                                                     Wikimedia Commons File:Grace_Hopper.jpg
============  =====================================  =========================================

Left out: scikit-image's ``stereo_motorcycle`` (Middlebury 2014 stereo
benchmark), whose terms scikit-image does not state, and the images that
``skimage.data`` fetches from the network. A package that is not installed,
or a file it does not ship, is skipped: :func:`sample_photos` returns what
there is (matplotlib's photo at least, matplotlib being a dependency).
"""
import importlib.util
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Tuple

from torch import Tensor

from captum_xcam.data.images import read_image


class Photo(NamedTuple):
    r"""
    A photo and where it comes from.

    Attributes:
        name (str): Its key in :func:`sample_photos`.
        image (Tensor): uint8 RGB (3, H, W).
        source (str): The package and the file in it.
        credit (str): Author and licence.
    """

    name: str
    image: Tensor
    source: str
    credit: str


# (name, top-level module, the file relative to its folder, package, credit)
_PHOTOS: Tuple[Tuple[str, str, str, str, str], ...] = (
    ("cat", "skimage", "data/chelsea.png", "scikit-image",
     "Chelsea the cat, Stefan van der Walt, CC0"),
    ("coffee", "skimage", "data/coffee.png", "scikit-image",
     "Rachel Michetti, courtesy of Pikolo Espresso Bar, CC0"),
    ("rocket", "skimage", "data/rocket.jpg", "scikit-image",
     "DSCOVR on Falcon 9, SpaceX, public domain"),
    ("astronaut", "skimage", "data/astronaut.png", "scikit-image",
     "Eileen Collins, NASA, public domain"),
    ("china", "sklearn", "datasets/images/china.jpg", "scikit-learn",
     "danielbuechele on Flickr, CC BY 2.0"),
    ("flower", "sklearn", "datasets/images/flower.jpg", "scikit-learn",
     "vultilion on Flickr, CC BY 2.0"),
    ("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "matplotlib",
     "Commodore Grace M. Hopper, official U.S. Navy portrait (1984), public domain"),
)


def _shipped_file(module: str, relative: str) -> Optional[Path]:
    r"""The file ``relative`` in the folder of the top-level ``module``, if
    the module is installed and ships it; found without importing the module
    (scikit-learn's import takes seconds), never downloaded."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / relative
        if path.is_file():
            return path
    return None


def sample_photos() -> Dict[str, Photo]:
    r"""
    The photos of the table above that the installed packages ship, read
    from their files (nothing is downloaded), by name, in the table's order:
    ``cat``, ``coffee``, ``rocket``, ``astronaut`` (scikit-image), ``china``,
    ``flower`` (scikit-learn), ``grace_hopper`` (matplotlib).

        >>> photos = sample_photos()
        >>> photos["coffee"].image.shape
        torch.Size([3, 400, 600])
    """
    photos: Dict[str, Photo] = {}
    for name, module, relative, package, credit in _PHOTOS:
        path = _shipped_file(module, relative)
        if path is not None:
            photos[name] = Photo(name, read_image(path), f"{package}: {path.name}", credit)
    return photos
