"""Torchvision models by name: default CAM layers, checkpoints, preprocessing; and
image files. Nothing is downloaded: models are built with random weights, most on
PyTorch's meta device (shapes only)."""
import os

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms import InterpolationMode

from captum_xcam import reshape_transform_for
from captum_xcam.data import find_images, read_image
from captum_xcam.models import (
    Preprocessing,
    check_model_name,
    classification_models,
    default_cam_layer,
    get_weights,
    load_model,
    load_state_dict_file,
)

# One architecture per family of DEFAULT_CAM_LAYERS (and its input size).
FAMILIES = ["resnet18", "resnext50_32x4d", "wide_resnet50_2", "regnet_x_400mf", "alexnet",
            "vgg11", "squeezenet1_1", "densenet121", "mobilenet_v3_small", "efficientnet_b0",
            "convnext_tiny", "mnasnet0_5", "shufflenet_v2_x0_5", "googlenet", "inception_v3",
            "swin_t", "maxvit_t", "vit_b_16"]


def build(name):
    r"""The model with random weights, on the meta device where torchvision allows."""
    kwargs = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
    if name.startswith("regnet"):  # computes its widths with real tensors
        return torchvision.models.get_model(name).eval()
    with torch.device("meta"):
        return torchvision.models.get_model(name, **kwargs).eval()


@pytest.mark.parametrize("name", FAMILIES)
def test_default_layer_gives_one_feature_map_before_the_classifier(name):
    model = build(name)
    layer = model.get_submodule(default_cam_layer(name))
    device = next(model.parameters()).device
    side = 299 if name == "inception_v3" else 224
    seen = []
    layer.register_forward_hook(lambda module, args, output: seen.append(output))
    with torch.no_grad():
        output = model(torch.empty(2, 3, side, side, device=device))
    assert len(seen) == 1, name
    transform = reshape_transform_for(model, layer)  # Swin's (N, h, w, C); ViT's tokens
    grid = seen[0] if transform is None else transform(seen[0])
    assert grid.dim() == 4 and grid.shape[0] == 2 and grid.shape[2] == grid.shape[3] > 1, name
    assert output.shape == (2, 1000)


def test_every_classification_model_has_a_default_layer():
    names = classification_models()
    assert "resnet50" in names and "fasterrcnn_resnet50_fpn" not in names
    for name in names:
        assert default_cam_layer(name)


def test_unknown_names():
    with pytest.raises(ValueError, match="did you mean resnet50"):
        check_model_name("resnet500")
    with pytest.raises(ValueError, match="choose one of alexnet"):
        check_model_name("zzz")
    with pytest.raises(ValueError, match="DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2"):
        get_weights("resnet50", "IMAGENET9K")
    assert get_weights("resnet50", "DEFAULT") is torchvision.models.ResNet50_Weights.DEFAULT


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).state_dict()


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "data_parallel"])
def test_checkpoints_load_into_the_named_architecture(wrap, resnet18_state, tmp_path):
    content = {
        "plain": resnet18_state,
        "state_dict": {"state_dict": resnet18_state, "epoch": 7},
        "model": {"model": resnet18_state, "optimizer": {"lr": 0.1}},
        "data_parallel": {f"module.{k}": v for k, v in resnet18_state.items()},
    }[wrap]
    torch.save(content, tmp_path / "checkpoint.pt")
    model = load_model("resnet18", checkpoint=tmp_path / "checkpoint.pt", num_classes=10)
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, resnet18_state[key]), key


def test_bad_checkpoints(resnet18_state, tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint file"):
        load_state_dict_file(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="Cannot read"):
        load_state_dict_file(tmp_path / "text.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds no state dict"):
        load_state_dict_file(tmp_path / "list.pt")
    torch.save(resnet18_state, tmp_path / "ten_classes.pt")
    with pytest.raises(ValueError, match="another number of classes.*size mismatch"):
        load_model("resnet18", checkpoint=tmp_path / "ten_classes.pt")
    with pytest.raises(ValueError, match="not a state dict of vgg11"):
        load_model("vgg11", checkpoint=tmp_path / "ten_classes.pt", num_classes=10)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_with_objects_is_refused_unopened(resnet18_state, tmp_path):
    marker = tmp_path / "ran"
    torch.save({"state_dict": resnet18_state, "hook": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_state_dict_file(tmp_path / "evil.pt")
    assert not marker.exists()


def test_weights_give_the_number_of_classes_without_a_download(resnet18_state, tmp_path):
    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, tmp_path / "imagenet.pt")
    weights = get_weights("resnet18", "DEFAULT")
    model = load_model("resnet18", weights, checkpoint=tmp_path / "imagenet.pt")
    assert model.fc.out_features == len(weights.meta["categories"]) == 1000
    assert torch.equal(model.fc.weight, state["fc.weight"])


def test_preprocessing_follows_the_weights():
    standard = Preprocessing.for_weights(None)
    assert (standard.resize_size, standard.crop_size) == (256, 224)
    v2 = Preprocessing.for_weights(get_weights("resnet50", "IMAGENET1K_V2"))
    assert (v2.resize_size, v2.crop_size) == (232, 224)
    inception = Preprocessing.for_weights(get_weights("inception_v3", "DEFAULT"))
    assert (inception.resize_size, inception.crop_size) == (342, 299)
    efficientnet = Preprocessing.for_weights(get_weights("efficientnet_b0", "DEFAULT"))
    assert efficientnet.interpolation == InterpolationMode.BICUBIC
    small = Preprocessing.for_weights(None, crop_size=64)
    assert (small.resize_size, small.crop_size) == (73, 64)


def test_crop_and_normalize_match_torchvision_transforms():
    weights = get_weights("resnet50", "IMAGENET1K_V2")
    preprocessing = Preprocessing.for_weights(weights)
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    crop = preprocessing.crop(image)
    assert crop.dtype == torch.uint8 and crop.shape == (3, 224, 224)
    expected = weights.transforms()(image)
    assert torch.allclose(preprocessing.normalize(crop), expected, atol=1e-5)


def test_find_and_read_images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(folder / "b.PNG")
    Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8)).save(folder / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)).save(tmp_path / "c.png")
    (folder / "readme.txt").write_text("skipped")
    (folder / "sub").mkdir()
    found = find_images([folder, tmp_path / "c.png", folder / "a.jpg"])
    assert found == [folder / "a.jpg", folder / "b.PNG", tmp_path / "c.png"]
    assert read_image(folder / "a.jpg").shape == (3, 20, 30)  # greyscale as RGB
    rgba = read_image(tmp_path / "c.png")
    assert rgba.shape == (3, 8, 8) and rgba.dtype == torch.uint8
    with pytest.raises(FileNotFoundError, match="No such file"):
        find_images([tmp_path / "nothing.png"])
    with pytest.raises(ValueError, match="No images"):
        find_images([folder / "sub"])
    with pytest.raises(ValueError, match="Cannot read"):
        read_image(folder / "readme.txt")
