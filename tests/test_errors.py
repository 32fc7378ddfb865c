"""Bad input gets a clear error that names the problem."""
import pytest
import torch

from captum_xcam import LayerLiftCam, LayerScoreCam
from conftest import make_images, make_model
from registered import METHODS, PERTURBATION, TARGETED, target_for

CAMS = METHODS


@pytest.fixture(scope="module")
def resnet():
    return make_model("resnet18")


@pytest.mark.parametrize("cam_class", CAMS)
def test_layer_not_in_model(cam_class, resnet):
    model, _ = resnet
    other, _ = make_model("resnet18", seed=1)
    with pytest.raises(ValueError, match="not a submodule"):
        cam_class(model, other.layer4)


@pytest.mark.parametrize("cam_class", CAMS)
def test_layer_not_called_by_a_plain_function(cam_class, resnet):
    model, _ = resnet
    other, _ = make_model("resnet18", seed=1)
    with pytest.raises(ValueError, match="not called"):
        cam_class(lambda x: model(x), other.layer4).attribute(
            make_images(n=1), target=target_for(cam_class, 0)
        )


@pytest.mark.parametrize("cam_class", CAMS)
def test_layer_without_spatial_dimensions(cam_class, resnet):
    model, _ = resnet
    with pytest.raises(ValueError, match="no spatial dimensions"):
        cam_class(model, model.fc).attribute(make_images(n=1), target=target_for(cam_class, 0))


@pytest.mark.parametrize("cam_class", TARGETED)
@pytest.mark.parametrize("target", [10, -1, [0, 12], torch.tensor([3, 99]), (1, 2)])
def test_target_out_of_range(cam_class, target, resnet):
    model, layer = resnet
    with pytest.raises(ValueError, match="[Tt]arget"):
        cam_class(model, layer).attribute(make_images(n=2), target=target)


@pytest.mark.parametrize("cam_class", TARGETED)
def test_missing_target_for_multi_output_model(cam_class, resnet):
    model, layer = resnet
    with pytest.raises(ValueError, match="pass a target"):
        cam_class(model, layer).attribute(make_images(n=2))


@pytest.mark.parametrize("cam_class", CAMS)
def test_empty_batch(cam_class, resnet):
    model, layer = resnet
    with pytest.raises(ValueError, match="empty"):
        cam_class(model, layer).attribute(make_images(n=2)[:0], target=target_for(cam_class, 0))


@pytest.mark.parametrize("cam_class", CAMS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs(cam_class, bad, resnet):
    model, layer = resnet
    x = make_images(n=2)
    x[1, 0, 3, 3] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        cam_class(model, layer).attribute(x, target=target_for(cam_class, 0))


@pytest.mark.parametrize("cam_class", PERTURBATION)
def test_bad_perturbations_per_eval(cam_class, resnet):
    model, layer = resnet
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        cam_class(model, layer).attribute(make_images(n=1), target=0, perturbations_per_eval=0)


def test_score_cam_bad_baselines(resnet):
    model, layer = resnet
    with pytest.raises(ValueError, match="baselines"):
        LayerScoreCam(model, layer).attribute(
            make_images(n=2), target=0, baselines=torch.zeros(2, 3, 5, 5)
        )


class Untraceable(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x) if x.sum() > -1e9 else -self.model(x)  # a branch torch.fx refuses


def test_lift_cam_reused_nonlinearity_after_layer_of_an_untraceable_model(resnet):
    # Traceable models get a copy of a shared module per call; a model re-run
    # whole cannot, and the error says why and what to do.
    model, _ = resnet
    wrapped = Untraceable(model)
    with pytest.warns(UserWarning, match="cannot be run on its own"):
        with pytest.raises(ValueError, match="more than once.*torch.fx cannot trace it"):
            LayerLiftCam(wrapped, model.layer3).attribute(make_images(n=1), target=0)
