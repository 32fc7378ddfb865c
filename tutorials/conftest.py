"""The tutorials run as tests (pytest with nbmake), each in a fresh Jupyter kernel.

The kernels import this checkout's captum_xcam, as the tests do. A tutorial that needs
pretrained weights runs only when they are already in the torch hub cache: tests never
download. Otherwise it is skipped, and pytest prints why."""
import os
from pathlib import Path

import pytest
from torchvision.models import ResNet50_Weights

from captum_xcam.models import weights_file

ROOT = Path(__file__).resolve().parents[1]
NEEDS_WEIGHTS = {"04_pretrained_imagenet.ipynb": ResNet50_Weights.DEFAULT}

os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def pytest_collection_modifyitems(config, items):
    for item in items:
        weights = NEEDS_WEIGHTS.get(item.path.name)
        if weights is not None and not weights_file(weights).is_file():
            item.add_marker(pytest.mark.skip(reason=(
                f"needs the pretrained weights {weights}, which are not in the torch hub "
                f"cache ({weights_file(weights)}) and tests never download; run the "
                "notebook by hand with network access, or put the file there")))
