"""`captum-xcam explain` on vision transformers by name: torchvision's and timm's ViT,
DeiT and Swin get their CAM layer and the reshape transform that lays its tokens (or
channels-last maps) out on the patch grid, and the report says which. Run in-process
(main(argv), one thread), random weights, one small generated image; nothing is
downloaded."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from captum_xcam.models import classification_models, default_cam_layer, timm_cam_layer
from captum_xcam.reshape_transforms import reshape_transform_for

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("transformers") / "a.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def explain(image, tmp_path, capsys, monkeypatch, one_thread):
    r"""``explain(*options)``: runs ``captum-xcam explain image *options`` and
    returns the exit status, stderr, the report's config and every map the
    methods returned, by name."""
    from captum_xcam.cli import explain as explain_command
    from captum_xcam.cli import main

    monkeypatch.syspath_prepend(str(TESTS))  # tests/cli_builders.py
    real = explain_command.attribute
    maps = {}

    def recording(method, *args, guided=False, **kwargs):
        attributions, seconds = real(method, *args, guided=guided, **kwargs)
        maps[("Guided " if guided else "") + method.name] = attributions
        return attributions, seconds

    monkeypatch.setattr(explain_command, "attribute", recording)

    def run(*options):
        out = tmp_path / "out"
        status = main(["explain", str(image), *options, "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        report = out / "explanations.json"
        config = json.loads(report.read_text())["config"] if report.exists() else None
        return status, err, config, dict(maps)

    return run


def warnings_in(err):
    return [line for line in err.splitlines() if line.startswith("captum-xcam: warning: ")]


# --model, its layer, what the transform's repr says, the patch grid's side; and
# options (timm's ViT, DeiT and Swin take 224 only; torchvision's Swin any size).
MODELS = {
    "timm ViT": ("timm/vit_tiny_patch16_224", "blocks.11.norm1",
                 "prefix_tokens=1, grid_size=(14, 14)", 14, ["--guided"]),
    "timm DeiT distilled": ("timm/deit_tiny_distilled_patch16_224", "blocks.11.norm1",
                            "prefix_tokens=2, grid_size=(14, 14)", 14, []),
    "timm Swin": ("timm/swin_tiny_patch4_window7_224", "layers.3", "channels_last=True", 7, []),
    "torchvision Swin": ("swin_t", "features.7", "channels_last=True", 2,
                         ["--image-size", "64"]),
}


@pytest.mark.parametrize("case", list(MODELS))
def test_explain_a_transformer_by_name_at_its_layer_on_the_patch_grid(case, explain):
    model, layer, transform, side, options = MODELS[case]
    if model.startswith("timm/"):
        pytest.importorskip("timm")
    status, err, config, maps = explain("--model", model, "--weights", "none",
                                        "--methods", "gradcam,eigencam", *options)
    assert status == 0, err
    assert warnings_in(err)[0] == (f"captum-xcam: warning: {model} has random weights "
                                   "(--weights none): its explanations are meaningless.")
    assert not any("every weight is zero" in line for line in warnings_in(err))
    assert "UserWarning" not in err  # the library's and Captum's warnings as the command's
    assert config["layer"] == layer
    assert config["reshape_transform"].startswith("TransformerLayout(")
    assert transform in config["reshape_transform"]
    assert maps["Grad-CAM"].shape == maps["EigenCAM"].shape == (1, 1, side, side)
    assert maps["Grad-CAM"].any() and maps["EigenCAM"].any()  # the layer gets a gradient
    if "--guided" in options:  # guided backpropagation times the CAM, at input resolution
        assert maps["Guided Grad-CAM"].shape == maps["Guided EigenCAM"].shape == (1, 3, 224, 224)


def test_torchvision_vit_at_224_and_its_zero_head_warning(explain):
    r"""vit_b_16 takes 224 only (its image size is fixed when built). With
    random weights its head is torchvision's zeros: the library's warning that
    every weight is zero reaches stderr as the command's own, once."""
    status, err, config, maps = explain("--model", "vit_b_16", "--weights", "none",
                                        "--methods", "gradcam")
    assert status == 0, err
    assert config["layer"] == "encoder.layers.encoder_layer_11.ln_1"
    assert "prefix_tokens=1, grid_size=(14, 14)" in config["reshape_transform"]
    assert config["image_size"] == 224 and maps["Grad-CAM"].shape == (1, 1, 14, 14)
    [random, zero] = warnings_in(err)
    assert "random weights" in random
    assert zero.startswith("captum-xcam: warning: Grad-CAM at encoder.layers.encoder_layer_11"
                           ".ln_1: LayerGradCam: every weight is zero")
    assert "a head of zeros" in zero and "Traceback" not in err


def test_a_vits_last_block_works_but_warns_that_its_patch_tokens_get_no_gradient(explain):
    pytest.importorskip("timm")
    status, err, config, maps = explain("--model", "timm/vit_tiny_patch16_224", "--weights",
                                        "none", "--layer", "blocks.11",
                                        "--methods", "gradcam,eigencam")
    assert status == 0, err
    assert config["layer"] == "blocks.11" and "prefix_tokens=1" in config["reshape_transform"]
    [random, zero] = warnings_in(err)  # Grad-CAM's; EigenCAM needs no gradient
    assert zero.startswith("captum-xcam: warning: Grad-CAM at blocks.11: LayerGradCam: every "
                           "weight is zero") and "blocks[-1].norm1" in zero
    assert not maps["Grad-CAM"].any() and maps["EigenCAM"].any()
    assert maps["EigenCAM"].shape == (1, 1, 14, 14)


# Layers that give no map, with the CLI's one-line error.
BAD_LAYERS = {
    "tokens of an unrecognised transformer": (
        ["--model", "cli_builders:token_net", "--layer", "encoder", "--image-size", "32"],
        "The layer 'encoder' of cli_builders:token_net outputs a tensor of shape (1, 16, 16); "
        "CAMs need a layer called once with a (N, C, h, w) feature map, such as the last "
        "convolutional block; a transformer's tokens are laid out on their patch grid only "
        "for torchvision's and timm's ViT, DeiT and Swin"),
    "a ViT's scores": (["--model", "timm/vit_tiny_patch16_224", "--weights", "none",
                        "--layer", "head"],
                       "The layer 'head' of timm/vit_tiny_patch16_224 outputs a tensor of "
                       "shape (1, 1000); CAMs need a layer called once with a (N, C, h, w) "
                       "feature map, such as the last convolutional block."),
    "a ViT at another size": (["--model", "timm/vit_tiny_patch16_224", "--weights", "none",
                               "--image-size", "64"],
                              "fails on an input of shape (1, 3, 64, 64) (AssertionError: "
                              "Input height (64) doesn't match model (224).); another "
                              "--image-size may suit it."),
}


@pytest.mark.parametrize("case", list(BAD_LAYERS))
def test_layers_without_a_map_get_the_clis_error(case, explain):
    pytest.importorskip("timm")
    options, message = BAD_LAYERS[case]
    status, err, config, maps = explain(*options, "--methods", "gradcam")
    assert status == 1 and config is None and not maps
    lines = err.strip().splitlines()
    assert lines[-1].startswith("captum-xcam: error: ") and message in lines[-1], lines
    assert all("warning" in line for line in lines[:-1]), lines  # random weights, at most


def test_every_torchvision_classification_model_has_a_default_layer():
    layers = {name: default_cam_layer(name) for name in classification_models()}
    assert {name: layers[name] for name in ("vit_b_16", "vit_b_32", "vit_l_16", "vit_h_14",
                                            "swin_t", "swin_v2_b")} == {
        "vit_b_16": "encoder.layers.encoder_layer_11.ln_1",
        "vit_b_32": "encoder.layers.encoder_layer_11.ln_1",
        "vit_l_16": "encoder.layers.encoder_layer_23.ln_1",
        "vit_h_14": "encoder.layers.encoder_layer_31.ln_1",
        "swin_t": "features.7", "swin_v2_b": "features.7"}
    with pytest.raises(ValueError, match="No default CAM layer for foonet"):
        default_cam_layer("foonet")


def test_a_torchvision_vits_layer_follows_the_given_models_depth():
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3,
                                               num_heads=2, hidden_dim=16, mlp_dim=32).eval()
    name = default_cam_layer("vit_b_16", vit)
    assert name == "encoder.layers.encoder_layer_2.ln_1"
    layer = vit.get_submodule(name)
    seen = []
    layer.register_forward_hook(lambda module, args, output: seen.append(output))
    with torch.no_grad():
        vit(torch.randn(1, 3, 32, 32))
    assert reshape_transform_for(vit, layer)(seen[0]).shape == (1, 16, 4, 4)


def test_timm_transformers_get_their_layer_and_others_still_none():
    timm = pytest.importorskip("timm")
    vit = timm.create_model("test_vit", pretrained=False).eval()
    assert timm_cam_layer(vit, torch.randn(1, 3, 32, 32)) == f"blocks.{len(vit.blocks) - 1}.norm1"
    mambaout = timm.create_model("test_mambaout", pretrained=False).eval()  # channels-last
    with pytest.raises(ValueError, match="channels-last"):
        timm_cam_layer(mambaout, torch.randn(1, 3, 32, 32))
