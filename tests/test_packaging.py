"""Packaging: one version, the licence, the type marker, and the lowest
versions CI tests being the floors pyproject.toml declares."""
import re
import sys
from pathlib import Path

import pytest

import captum_xcam

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_version_lives_in_one_place():
    project = pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    dynamic = pyproject()["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert dynamic == "captum_xcam._version.__version__"
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+)?", captum_xcam.__version__)


def test_spdx_licence_and_its_file():
    project = pyproject()["project"]
    assert project["license"] == "BSD-3-Clause"
    assert project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("BSD 3-Clause License")


def test_typed_package():
    assert (ROOT / "captum_xcam" / "py.typed").exists()
    assert "py.typed" in pyproject()["tool"]["setuptools"]["package-data"]["captum_xcam"]


def test_ci_tests_the_declared_floors():
    requirements = pyproject()["project"]["dependencies"] + pyproject()["project"][
        "optional-dependencies"]["dev"]
    floors = {}
    for requirement in requirements:
        match = re.match(r"([A-Za-z0-9_-]+)>=([0-9.]+)", requirement)
        if match:
            floors[match.group(1).lower()] = match.group(2)
    script = (ROOT / ".ci" / "lowest_versions.sh").read_text()
    pins = dict(re.findall(r"\b(TORCH|TORCHVISION|CAPTUM|TIMM)=([0-9.]+)", script))
    for name, pin in pins.items():
        floor = floors[name.lower()]
        # The pin is the floor's release line (2.1 -> 2.1.2, its last bug-fix release).
        assert pin == floor or pin.startswith(floor + "."), (name, pin, floor)
