"""The registry is the one list of methods: what it declares, what derives
from it, and the base's contract with each method."""
import re
from pathlib import Path

import pytest
import torch
from captum.attr import LayerAttribution

import captum_xcam
from captum_xcam import CamAttribution, GradientCamAttribution, get_method, list_methods
from captum_xcam._core.registry import FAMILIES, method_table, register_method
from conftest import make_images, make_tiny
from registered import METHODS

README = Path(__file__).resolve().parents[1] / "README.md"
KEYS = {"gradcam", "xgradcam", "gradcampp", "ablationcam", "scorecam", "liftcam", "hirescam",
        "layercam", "elementwisegradcam", "eigencam", "sscam", "iscam"}


def test_the_registry_holds_the_whole_family():
    assert KEYS <= set(list_methods()) and len(list_methods()) >= 12
    assert sorted(list_methods()) == sorted(set(list_methods()))
    for family in FAMILIES:
        assert all(get_method(k).method_info.family == family for k in list_methods(family=family))


@pytest.mark.parametrize("cam_class", METHODS, ids=lambda c: c.__name__)
def test_each_method_declares_itself(cam_class):
    info = cam_class.method_info
    assert issubclass(cam_class, LayerAttribution) and get_method(info.key) is cam_class
    assert getattr(captum_xcam, cam_class.__name__) is cam_class  # importable from the top
    assert cam_class.__name__ in captum_xcam.__all__
    assert info.family in FAMILIES and info.name and "http" in info.paper and info.formula
    doc = cam_class.__doc__ or ""
    assert ".. math::" in doc and "http" in doc  # the formula and the paper
    assert {"perturbations_per_eval", "show_progress"} <= set(info.attribute_keywords) or (
        not info.perturbation
    )


def test_unknown_key_names_the_nearest():
    with pytest.raises(ValueError, match="Did you mean .*'gradcampp'"):
        get_method("gradcam+")
    with pytest.raises(ValueError, match="Registered: "):
        get_method("nothing-like-it")
    with pytest.raises(ValueError, match="family must be one of"):
        list_methods(family="magic")


def test_a_key_is_registered_once():
    with pytest.raises(ValueError, match="already registered"):
        register_method("gradcam", name="x", paper="x", family="gradient", formula="x")(
            type("Other", (GradientCamAttribution,), {})
        )


def test_readme_method_table_is_the_registry():
    text = README.read_text()
    match = re.search(r"<!-- methods:start -->\n(.*?)\n<!-- methods:end -->", text, re.S)
    assert match, "README.md lacks the <!-- methods:start/end --> markers"
    assert match.group(1) == method_table(), (
        "README.md's method table differs from the registry; paste this between the markers:\n"
        + method_table()
    )


def test_layer_cam_base_name_is_deprecated():
    with pytest.warns(DeprecationWarning, match="renamed CamAttribution"):
        from captum_xcam import LayerCam
    assert LayerCam is CamAttribution


class WrongShape(GradientCamAttribution):
    def _weights(self, activations, gradients):
        return gradients[..., :-1]  # (N, K, h, w - 1): neither (N, K) nor A's shape


class PerPosition(GradientCamAttribution):
    def _weights(self, activations, gradients):
        return torch.ones_like(activations)


def test_weights_of_another_shape_are_refused():
    model, layer = make_tiny()
    with pytest.raises(ValueError, match=r"WrongShape gave weights of shape \(2, 12, 4, 3\)"):
        WrongShape(model, layer).attribute(make_images(n=2, size=16), target=1)


def test_per_position_weights_multiply_each_activation():
    model, layer = make_tiny()
    x = make_images(n=2, size=16)
    with torch.no_grad():
        A = layer(model.stem(x))
    maps = PerPosition(model, layer).attribute(x, target=1, attr_dim_summation=False)
    torch.testing.assert_close(maps, A, rtol=0, atol=0)
